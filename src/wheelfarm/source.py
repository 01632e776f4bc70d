"""Pinned sources: fetch a package's sdist (PyPI or an in-repo directory), check its sha256, unpack, patch.

Plan (pure: names, picking a file from the index, the deterministic tar stream, the marker) is kept apart from
execute (network, files, ``patch``). ``prepare_source`` is the whole step and is idempotent: a marker beside
the tree records the sdist's sha256 and each patch's sha256; while they are unchanged the tree is reused, so a
killed build resumes in it; when either changes the tree is rebuilt from scratch.

Why not ``pip download --no-binary :all:``: pip prepares the sdist's metadata, which runs flash-attn's
setup.py, which imports torch and fails. PyPI's JSON simple API (PEP 691) plus a plain download needs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import struct
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.utils import InvalidSdistFilename, canonicalize_name, parse_sdist_filename
from packaging.version import InvalidVersion, Version

from . import log, proc
from .errors import BadInput, BuildFailed
from .hashing import sha256_file as file_sha256

PYPI_SIMPLE = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
MARKER = "source.json"
TREE = "source"
# Packed into path sdists with this mtime (2020-01-01): fixed for a stable hash, and >= 1980 because zip
# (the wheel) cannot store earlier timestamps of files built from the tree.
SDIST_MTIME = 1_577_836_800
EXCLUDED_DIRS = frozenset({"build", "dist", "__pycache__", ".git", ".hg", ".nox", ".tox", ".venv",
                           ".pytest_cache", ".mypy_cache", ".ruff_cache", ".eggs"})
EXCLUDED_SUFFIXES = (".egg-info", ".pyc", ".pyo", ".so", ".o")
PATCH_TIMEOUT_S = 120


# ----------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Source:
    """Where an sdist comes from: ``pypi`` or ``path:<dir>``."""

    kind: str  # "pypi" | "path"
    path: Path | None = None

    @classmethod
    def parse(cls, source: str, *, root: Path | None = None) -> Source:
        if source == "pypi":
            return cls("pypi")
        if source.startswith("path:") and source[5:]:
            path = Path(source[5:])
            return cls("path", path if path.is_absolute() else (root or Path.cwd()) / path)
        raise BadInput(f"source {source!r} is neither \"pypi\" nor \"path:<dir>\"",
                       hint="set packages.<name>.source in build_matrix.toml")


def pin_key(package: str, version: str) -> str:
    """The build_matrix.toml key that holds the sha256 pin (named in errors)."""
    return f'packages.{package}.versions."{version}".sha256'


def sdist_filename(package: str, version: str) -> str:
    """The PEP 625 file name: ``flash_attn-2.8.3.post2.tar.gz``."""
    return f"{sdist_stem(package, version)}.tar.gz"


def sdist_stem(package: str, version: str) -> str:
    """The normalised ``<name>-<version>`` that names the sdist and its top directory."""
    try:
        normal = str(Version(version))
    except InvalidVersion as exc:
        raise BadInput(f"{package}: version {version!r} is not a valid version") from exc
    return f"{canonicalize_name(package).replace('-', '_')}-{normal}"


def pick_sdist(files: Sequence[dict[str, Any]], package: str, version: str, sha256: str,
               page_url: str, pin: str | None = None) -> tuple[str, str]:
    """(filename, absolute url) of the .tar.gz sdist of ``package`` ``version`` in a PEP 691 file list.

    Prefers the file whose listed sha256 equals the pin; otherwise the first match (its hash is checked
    after download, which then names both hashes).
    """
    want = (canonicalize_name(package), Version(version))
    matches = []
    for entry in files:
        name = str(entry.get("filename", ""))
        if not name.endswith(".tar.gz"):
            continue
        try:
            if parse_sdist_filename(name)[:2] == want:
                matches.append(entry)
        except (InvalidSdistFilename, InvalidVersion):
            continue
    if not matches:
        raise BadInput(f"{package} {version}: no .tar.gz sdist on {page_url}",
                       hint=f"check the version in build_matrix.toml ({pin or pin_key(package, version)})")
    best = next((e for e in matches if e.get("hashes", {}).get("sha256") == sha256), matches[0])
    return str(best["filename"]), urllib.parse.urljoin(page_url, str(best["url"]))


def patch_targets(patch_text: str) -> set[str]:
    """Paths (relative to the source root, ``-p1``) a unified diff reads or writes."""
    targets: set[str] = set()
    for line in patch_text.splitlines():
        if line.startswith(("--- ", "+++ ")):
            path = line[4:].split("\t")[0].strip()
        elif line.startswith(("rename from ", "copy from ")):
            path = "x/" + line.split(" ", 2)[2].strip()
        else:
            continue
        if path == "/dev/null" or "/" not in path:
            continue
        rel = path.split("/", 1)[1]
        if rel and ".." not in PurePosixPath(rel).parts:
            targets.add(rel)
    return targets


def marker_for(sdist_sha256: str, patches: Sequence[Path], root_name: str) -> dict[str, Any]:
    """What a prepared tree was made from; equal markers mean the tree can be reused."""
    return {
        "sdist_sha256": sdist_sha256,
        "patches": [{"name": p.name, "sha256": file_sha256(p)} for p in patches],
        "root": root_name,
    }


def list_patches(patch_dirs: Path | Sequence[Path]) -> list[Path]:
    """The ``*.patch`` files of each folder, in file-name order, folder after folder (an absent folder has none):
    a package version's own patches, then its variant's."""
    dirs = [patch_dirs] if isinstance(patch_dirs, Path) else list(patch_dirs)
    return [p for d in dirs for p in (sorted(d.glob("*.patch")) if d.is_dir() else [])]


# ------------------------------------------------------------------------------------ deterministic sdist


def _included(rel: PurePosixPath) -> bool:
    return not any(part in EXCLUDED_DIRS or part.endswith(EXCLUDED_SUFFIXES) for part in rel.parts)


def _walk(directory: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix path, file) for every file to pack, sorted; symlinks are refused."""
    found = []
    for path in directory.rglob("*"):
        rel = PurePosixPath(path.relative_to(directory).as_posix())
        if not _included(rel):
            continue
        if path.is_symlink():
            raise BadInput(f"{path}: symlinks cannot go into an sdist made from a directory",
                           hint="replace it by a regular file")
        if path.is_file():
            found.append((str(rel), path))
    return iter(sorted(found))


def sdist_tar_bytes(directory: Path, package: str, version: str) -> bytes:
    """The uncompressed tar: sorted files under ``<name>-<version>/``, fixed mtime, owner and modes."""
    if not directory.is_dir():
        raise BadInput(f"sdist source directory {directory} does not exist",
                       hint="fix packages.<name>.source = \"path:<dir>\" (relative to the repository root)")
    top = sdist_stem(package, version)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, path in _walk(directory):
            data = path.read_bytes()
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size = len(data)
            info.mtime = SDIST_MTIME
            info.mode = 0o755 if path.stat().st_mode & 0o100 else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzip_stored(data: bytes) -> bytes:
    """A gzip member holding ``data`` in stored (uncompressed) deflate blocks, header mtime 0.

    Written by hand on purpose: compressed bytes depend on the zlib build (zlib, zlib-ng, versions), which
    would make a pinned sha256 differ between hosts; stored blocks are the same everywhere.
    """
    out = bytearray(b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x00\xff")
    step = 0xFFFF
    for start in range(0, max(len(data), 1), step):
        chunk = data[start:start + step]
        final = 1 if start + step >= len(data) else 0
        out += struct.pack("<BHH", final, len(chunk), len(chunk) ^ 0xFFFF) + chunk
    out += struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return bytes(out)


def sdist_bytes_of_path(directory: Path, package: str, version: str) -> bytes:
    return gzip_stored(sdist_tar_bytes(directory, package, version))


def sdist_sha256_of_path(directory: Path, package: str, version: str) -> str:
    """The sha256 to pin in build_matrix.toml for a ``path:<dir>`` source (what ``fetch_sdist`` checks)."""
    return hashlib.sha256(sdist_bytes_of_path(directory, package, version)).hexdigest()


# ------------------------------------------------------------------------------------------------ execute




def _mismatch(package: str, version: str, filename: str, expected: str, actual: str, origin: str,
              pin: str | None = None) -> BadInput:
    hint = ("if the directory changed on purpose, pin the new sha256 (source.sdist_sha256_of_path)"
            if origin.startswith("path") else
            "the pin or the download is wrong: compare with the hashes PyPI lists for this file")
    return BadInput(f"sha256 mismatch for {filename} ({package} {version}, from {origin}): "
                    f"build_matrix.toml {pin or pin_key(package, version)} = {expected}, the file has {actual}; "
                    "the file was deleted", hint=hint)


def _atomic_write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _index_files(package: str, index_url: str) -> tuple[list[dict[str, Any]], str]:
    page = f"{index_url.rstrip('/')}/{canonicalize_name(package)}/"
    request = urllib.request.Request(page, headers={"Accept": SIMPLE_JSON})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            data = json.load(resp)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise BadInput(f"{package}: not found on {page} (HTTP 404)",
                           hint="check the package name in build_matrix.toml") from exc
        raise BuildFailed(f"{page}: HTTP {exc.code}", hint="retry later") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise BuildFailed(f"cannot read the package index {page}: {exc}",
                          hint="check the network, or put the sdist into the cache folder by hand") from exc
    return list(data.get("files", [])), page


def _download(url: str, dest_dir: Path) -> Path:
    """Stream ``url`` into a temporary file in ``dest_dir`` (same filesystem, for an atomic rename)."""
    fd, tmp = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as fh, urllib.request.urlopen(url, timeout=120) as resp:
            shutil.copyfileobj(resp, fh, 1 << 20)
    except (urllib.error.URLError, OSError) as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise BuildFailed(f"download of {url} failed: {exc}",
                          hint="retry; the cache keeps nothing partial") from exc
    return Path(tmp)


def fetch_sdist(package: str, version: str, sha256: str, cache_dir: Path, *, source: str = "pypi",
                root: Path | None = None, index_url: str = PYPI_SIMPLE, pin: str | None = None) -> Path:
    """The verified sdist of ``package`` ``version`` in ``cache_dir`` (downloaded or packed if needed).

    ``source``: ``pypi`` (PEP 691 JSON index at ``index_url``) or ``path:<dir>`` (``dir`` relative to
    ``root``, default the working directory), packed deterministically. A cached file is re-hashed on every
    call; one with the wrong hash is deleted. A mismatch with the pin raises BadInput (exit 2) naming both
    hashes and the toml key (``pin``; default: the package's own, ``pin_key``), and leaves no file behind.
    """
    src = Source.parse(source, root=root)
    sha256 = sha256.lower()
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / sdist_filename(package, version)
    if src.kind == "path":
        assert src.path is not None
        data = sdist_bytes_of_path(src.path, package, version)
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise _mismatch(package, version, dest.name, sha256, actual, f"path:{src.path}", pin)
        if not dest.is_file() or file_sha256(dest) != sha256:
            _atomic_write(dest, data)
        return dest
    if dest.is_file():
        actual = file_sha256(dest)
        if actual == sha256:
            log.info(f"sdist {dest.name}: cached, sha256 ok")
            return dest
        log.warn(f"cached {dest} has sha256 {actual}, not the pinned {sha256}: deleting it, fetching again")
        dest.unlink()
    files, page = _index_files(package, index_url)
    filename, url = pick_sdist(files, package, version, sha256, page, pin)
    with log.step(f"download {filename}"):
        tmp = _download(url, cache_dir)
    actual = file_sha256(tmp)
    if actual != sha256:
        tmp.unlink()
        raise _mismatch(package, version, filename, sha256, actual, url, pin)
    os.replace(tmp, dest)
    return dest


def _check_members(sdist: Path, members: Sequence[tarfile.TarInfo]) -> None:
    for m in members:
        parts = PurePosixPath(m.name).parts
        if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()):
            raise BadInput(f"{sdist}: unsafe member {m.name!r} (absolute, '..', link or device)")


def unpack(sdist: Path, dest: Path) -> Path:
    """Extract ``sdist`` into ``dest`` (tarfile's "data" filter: no absolute paths, links out, devices).

    Returns the source root: the sdist's single top-level directory.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(sdist, "r:*") as tar:
            tops = {PurePosixPath(m.name).parts[0] for m in tar.getmembers() if PurePosixPath(m.name).parts}
            if len(tops) != 1:
                raise BadInput(f"{sdist}: expected one top-level directory, found {sorted(tops)[:5]}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # Python < 3.10.12: refuse what the "data" filter would refuse, then extract
                _check_members(sdist, tar.getmembers())
                tar.extractall(dest)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BadInput(f"{sdist}: cannot unpack: {exc}",
                       hint="delete the file so it is fetched again") from exc
    root = dest / tops.pop()
    if not root.is_dir():
        raise BadInput(f"{sdist}: its top-level entry {root.name} is not a directory")
    return root


_FAILURE_LINE = re.compile(
    r"(Hunk #\d+ FAILED at \d+|can't find file|No file to patch|No such file"
    r"|Reversed \(or previously applied\) patch detected|Only garbage was found|malformed patch"
    r"|patch unexpectedly ends)",
    re.IGNORECASE,
)


def _patch_cmd(patch: Path) -> list[str]:
    # --fuzz=0: a hunk whose context moved only by lines (offset) applies, one whose context changed does not.
    # --forward: an already-applied patch is an error, not a silent reverse. -r -: no .rej files.
    return ["patch", "-p1", "--batch", "--forward", "--fuzz=0", "--no-backup-if-mismatch", "-r", "-",
            "-i", str(patch)]


def _run_patch(patch: Path, cwd: Path, *, quiet: bool) -> tuple[bool, str]:
    if shutil.which("patch") is None:
        raise BadInput("GNU patch is not installed",
                       hint="install it (apt-get install patch / dnf install patch)")
    result = proc.run(_patch_cmd(patch), cwd=cwd, capture=True, check=False, quiet=quiet)
    return result.returncode == 0, (result.stdout or "") + (result.stderr or "")


def _scratch_copy(src_root: Path, patches: Sequence[Path], scratch: Path) -> None:
    """Copy only the files the patches touch, so they can be tried in order without touching ``src_root``."""
    for patch in patches:
        for rel in patch_targets(patch.read_text(encoding="utf-8", errors="replace")):
            source = src_root / rel
            if source.is_file() and not (scratch / rel).exists():
                (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, scratch / rel)


def apply_patches(src_root: Path, patch_dirs: Path | Sequence[Path]) -> list[Path]:
    """Apply ``*.patch`` of each folder in file-name order with ``patch -p1``; returns the patches applied.

    All patches are first applied, in order, to a scratch copy of the files they touch; only when every one
    applies is the real tree patched. A patch that does not apply raises BadInput naming the patch file and
    the failing hunk, and the tree is left untouched.
    """
    patches = list_patches(patch_dirs)
    if not patches:
        return []
    with tempfile.TemporaryDirectory(prefix="wheelfarm-patch-check-") as tmp:
        scratch = Path(tmp)
        _scratch_copy(src_root, patches, scratch)
        for patch in patches:
            ok, output = _run_patch(patch, scratch, quiet=True)
            if not ok:
                reasons = [m.group(0) for m in _FAILURE_LINE.finditer(output)] or [output.strip()[-300:]]
                raise BadInput(f"patch {patch} does not apply to {src_root.name}: {'; '.join(reasons)}",
                               hint="refresh the patch against the unpacked sdist (`patch -p1 --dry-run "
                                    f"< {patch}` in it shows the details); the tree was not changed")
    folders = ", ".join(dict.fromkeys(str(p.parent) for p in patches))
    with log.step(f"apply {len(patches)} patch(es) from {folders}"):
        for patch in patches:
            ok, output = _run_patch(patch, src_root, quiet=False)
            if not ok:  # passed on the scratch copy: the tree changed under us
                raise BuildFailed(f"patch {patch} applied to a scratch copy but not to {src_root}: "
                                  f"{output.strip()}", hint=f"delete {src_root.parent} and run again")
    return patches


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def prepare_source(package: str, version: str, sha256: str, source: str, patch_dirs: Sequence[Path], cache_dir: Path,
                   work_dir: Path, *, root: Path | None = None, pin: str | None = None) -> Path:
    """The patched source tree of ``package`` ``version`` under ``work_dir/source/``; returns its root.

    Idempotent: ``work_dir/source.json`` records the sdist's sha256 and each patch's sha256. Unchanged, the
    existing tree (with any partial build in it) is reused; changed, a fresh tree is unpacked and patched
    in a temporary folder and then swapped in, so no half-prepared tree is ever left under that name.
    """
    sdist = fetch_sdist(package, version, sha256, cache_dir, source=source, root=root, pin=pin)
    patches = list_patches(patch_dirs)
    tree, marker = work_dir / TREE, work_dir / MARKER
    want = marker_for(sha256.lower(), patches, sdist_stem(package, version))
    have = _read_marker(marker)
    if have is not None and have.get("sdist_sha256") == want["sdist_sha256"] \
            and have.get("patches") == want["patches"] and (tree / str(have.get("root"))).is_dir():
        reused = tree / str(have["root"])
        log.info(f"source {package} {version}: reusing {reused} (sdist and patches unchanged)")
        return reused
    work_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".source-", dir=work_dir))
    try:
        with log.step(f"unpack {sdist.name}"):
            src_root = unpack(sdist, staging)
        apply_patches(src_root, patch_dirs)
        marker.unlink(missing_ok=True)
        if tree.exists():
            shutil.rmtree(tree)
        os.replace(staging, tree)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    want["root"] = src_root.name
    _atomic_write(marker, (json.dumps(want, indent=2) + "\n").encode())
    return tree / src_root.name
