"""What a mirror must refuse before it stores a wheel: everything pip would refuse, and every way to shadow one.

A published wheel's identity is PyPI's: (normalized project name, version, build tag, tags). Before anything is
written (exit 2, the cause named, nothing stored), a wheel must have

* a file name in normalized form (binary distribution format): the project as ``canonicalize_name`` with ``_``
  for ``-`` (not ``Flash.Attn``, ``FLASH_ATTN``), the version as PEP 440 prints it (not ``2.00``, ``v2.0``;
  the local label may keep upstream's case, ``cxx11abiTRUE``, since pip compares it case-insensitively), a valid
  project name (not ``..``, ``a.``), and a local label that is not a folder of the mirror (``simple``, ``wheels``);
* a sound zip: not empty or truncated, every member's CRC good (``testzip``), every member's size bounded (a zip
  bomb is refused from its headers, before anything is inflated), METADATA at most ``MAX_METADATA`` bytes;
* exactly one ``<name>-<version>.dist-info`` and it is this project's, its METADATA Name and Version equal to the
  file name's (pip: "inconsistent version"), and a RECORD whose sha256 and size match every member.
"""

from __future__ import annotations

import base64
import csv
import email.parser
import hashlib
import io
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from packaging.tags import Tag
from packaging.utils import BuildTag, InvalidWheelFilename, NormalizedName, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from .errors import BadInput

MAX_MEMBER = 4 * 2**30  # bytes uncompressed: flash-attn's .so is ~0.5 GB for all archs
MAX_TOTAL = 16 * 2**30
MAX_RATIO = 200  # uncompressed / compressed for members over 1 MiB (CUDA fatbins compress ~3-10x)
MAX_METADATA = 1 * 2**20  # PyPI caps a METADATA file far lower; a mirror serves it as <file>.metadata
# names at the mirror's top level (index.py, the stores): a variant folder of that name would replace or break them
RESERVED_LABELS = frozenset({"simple", "wheels", "index.html", "index.json", "index-state.json", "probe.py"})
PROJECT_RE = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)  # PEP 508 names
CHUNK = 1 << 20
RECORD_HASHES = frozenset({"sha256", "sha384", "sha512", "sha3_256", "sha3_384", "sha3_512", "blake2b"})


@dataclass(frozen=True)
class Identity:
    """PyPI's identity of a wheel: two files with equal identities are the same release artefact."""

    project: NormalizedName
    version: Version
    build: BuildTag
    tags: frozenset[Tag]

    @classmethod
    def of(cls, file: str) -> Identity:
        name, version, build, tags = parse_wheel_filename(file)
        return cls(name, version, build, frozenset(tags))


def _bad(path: Path, why: str, hint: str | None = None) -> BadInput:
    return BadInput(f"refused {path.name}: {why}; nothing was published", hint=hint)


def check_name(path: Path) -> Identity:
    """The file name: a wheel name in normalized form (see the module docstring)."""
    try:
        identity = Identity.of(path.name)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise _bad(path, f"not a wheel file name ({exc})") from exc
    raw_name, raw_version = path.name.split("-")[:2]
    if not PROJECT_RE.match(raw_name):
        raise _bad(path, f"{raw_name!r} is not a valid project name")
    normal_name = identity.project.replace("-", "_")
    normal_version = str(identity.version)
    if raw_name != normal_name or raw_version.lower() != normal_version.lower():
        raise _bad(path, f"the file name is not in normalized form (expected "
                   f"{normal_name}-{_keep_label_case(normal_version, raw_version)}-…)",
                   hint="rename it as the binary distribution format normalizes it; pip and uv would see "
                        "another spelling of an existing release")
    label = identity.version.local or ""
    if label.lower() in RESERVED_LABELS:
        raise _bad(path, f"local version label {label!r} is a folder of the mirror's layout")
    return identity


def _keep_label_case(normal: str, raw: str) -> str:
    public, _, local = normal.partition("+")
    raw_local = raw.partition("+")[2]
    return public + (f"+{raw_local if raw_local.lower() == local else local}" if local else "")


def check_zip(path: Path, identity: Identity) -> bytes:
    """The archive: sound, bounded, one dist-info of this project whose METADATA agrees and whose RECORD holds.
    Returns the METADATA bytes."""
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            _check_sizes(path, infos)
            broken = zf.testzip()
            if broken is not None:
                raise _bad(path, f"member {broken} fails its CRC check (a damaged or tampered file)")
            dist_info = _dist_info(path, infos, identity)
            size = zf.getinfo(f"{dist_info}/METADATA").file_size
            if size > MAX_METADATA:
                raise _bad(path, f"METADATA is {size} bytes (the limit is {MAX_METADATA})")
            metadata = zf.read(f"{dist_info}/METADATA")
            _check_metadata(path, metadata, identity)
            _check_record(path, zf, infos, dist_info)
    except zipfile.BadZipFile as exc:
        raise _bad(path, f"not a valid zip file ({exc}): empty, truncated or not a wheel") from exc
    except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError, zlib.error, RuntimeError, ValueError,
            csv.Error) as exc:  # damaged deflate data, encrypted members, a RECORD that is not UTF-8 CSV
        raise _bad(path, f"cannot read it as a wheel's zip ({type(exc).__name__}: {exc})") from exc
    return metadata


def _check_sizes(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    total = 0
    for info in infos:
        total += info.file_size
        ratio = info.file_size / max(1, info.compress_size)
        if info.file_size > MAX_MEMBER or (info.file_size > CHUNK and ratio > MAX_RATIO):
            raise _bad(path, f"member {info.filename} would inflate to {info.file_size} bytes "
                       f"({ratio:.0f}x its {info.compress_size} compressed bytes): a zip bomb, not a wheel")
    if total > MAX_TOTAL:
        raise _bad(path, f"its members inflate to {total} bytes (the limit is {MAX_TOTAL})")


def _dist_info(path: Path, infos: list[zipfile.ZipInfo], identity: Identity) -> str:
    names = {info.filename for info in infos}
    folders = {name.split("/", 1)[0] for name in names if name.split("/", 1)[0].endswith(".dist-info")}
    with_metadata = sorted(f for f in folders if f"{f}/METADATA" in names)
    if len(with_metadata) != 1:
        raise _bad(path, f"expected one *.dist-info/METADATA, found {len(with_metadata)} ({with_metadata})")
    folder = with_metadata[0]
    name, _, version = folder.removesuffix(".dist-info").rpartition("-")
    try:
        same = canonicalize_name(name) == identity.project and Version(version) == identity.version
    except InvalidVersion:
        same = False
    if not same:
        raise _bad(path, f"its {folder} is not {identity.project} {identity.version}'s dist-info")
    return folder


def _check_metadata(path: Path, metadata: bytes, identity: Identity) -> None:
    if len(metadata) > MAX_METADATA:
        raise _bad(path, f"METADATA is {len(metadata)} bytes (the limit is {MAX_METADATA})")
    headers = email.parser.BytesParser().parsebytes(metadata, headersonly=True)
    try:
        meta_version = Version(str(headers.get("Version", "")))
    except InvalidVersion as exc:
        raise _bad(path, f"METADATA has an invalid Version ({exc})") from exc
    if canonicalize_name(str(headers.get("Name", ""))) != identity.project or meta_version != identity.version:
        raise _bad(path, f"METADATA says {headers.get('Name')} {meta_version}, the file name says "
                   f"{identity.project} {identity.version}",
                   hint="pip refuses such a wheel ('inconsistent version'); rebuild with the local label in the "
                        "METADATA version")


def _check_record(path: Path, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], dist_info: str) -> None:
    record_name = f"{dist_info}/RECORD"
    try:
        text = zf.read(record_name).decode()
    except KeyError:
        raise _bad(path, f"no {record_name}") from None
    listed = {row[0]: row[1:] for row in csv.reader(io.StringIO(text)) if row}
    for info in infos:
        if info.is_dir() or info.filename in (record_name, f"{record_name}.jws", f"{record_name}.p7s"):
            continue
        if info.filename not in listed:
            raise _bad(path, f"member {info.filename} is not in RECORD")
        hash_field, size_field = (listed[info.filename] + ["", ""])[:2]
        algo, _, want = hash_field.partition("=")
        if algo not in RECORD_HASHES:  # the spec: sha256 or better; md5/sha1 are refused, as pip refuses them
            raise _bad(path, f"RECORD has no sha256-or-better hash for {info.filename} ({algo or 'none'})")
        digest = hashlib.new(algo)
        with zf.open(info) as member:
            while chunk := member.read(CHUNK):
                digest.update(chunk)
        got = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
        if got != want or (size_field and int(size_field) != info.file_size):
            raise _bad(path, f"member {info.filename} does not match its RECORD entry")


def check_wheel(path: Path) -> tuple[Identity, bytes]:
    """Everything above; returns the identity and the METADATA bytes."""
    identity = check_name(path)
    return identity, check_zip(path, identity)
