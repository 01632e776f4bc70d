"""Publish wheels to a store: gated, immutable, verified, then indexed.

Per wheel, in this order: upload the wheel, ``<wheel>.metadata`` (PEP 658) and its ``.audit.json`` /
``.gpu.json`` (when present), all create-only; verify the stored sha256; only then add its entry to the index
state (compare-and-swap, retried on conflict). After the batch, the pages are rebuilt whole from the state.
A crash at any point leaves files without an index entry at worst, never an entry without its file, and a
rerun completes (identical files are no-ops).

Immutability: same name + same bytes = no-op; same name + different bytes = refused before anything is
written, unless ``replace`` (the old sha256 goes to the state's ``replaced`` log first). Side files
(audit/GPU results) are first-write-wins: a differing local copy of an already-published wheel's side file is
kept out, with a warning.

Gates: a wheel needs ``<wheel>.audit.json`` with ``"passed": true`` (unless ``audit_gate=False``) and, with
``require_gpu_result``, ``<wheel>.gpu.json`` with ``"passed": true``.
"""

from __future__ import annotations

import datetime
import email.parser
import hashlib
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from packaging.utils import parse_wheel_filename
from packaging.version import Version

from . import log
from .errors import PublishFailed
from .gpu_code import GpuCode
from .index import Entry, Replacement, State, build_pages, content_type
from .store import Store, sha256_of
from .wheelcheck import Identity, check_wheel

SIDE_FILES = (".audit.json", ".gpu.json")
CAS_ATTEMPTS = 60
RESULT_SCHEMA = 1  # of <wheel>.audit.json (docs/audit.md) and <wheel>.gpu.json
REINDEX_ROUNDS = 10


@dataclass(frozen=True)
class Options:
    replace: bool = False
    audit_gate: bool = True
    require_gpu_result: bool = False
    gpu_untested: tuple[str, ...] = ()  # architectures with no GPU runner: their wheels need no .gpu.json


@dataclass(frozen=True)
class LocalWheel:
    """A wheel on disk, inspected: what its index entry will say."""

    path: Path
    project: str
    version: Version
    sha256: str
    metadata: bytes
    requires_python: str | None
    identity: Identity

    @property
    def file(self) -> str:
        return self.path.name

    @property
    def store_path(self) -> str:
        return f"wheels/{self.project}/{self.file}"

    def side_file(self, suffix: str) -> Path:
        return self.path.with_name(self.file + suffix)

    def entry(self, url: str | None) -> Entry:
        return Entry(
            file=self.file,
            project=self.project,
            sha256=self.sha256,
            requires_python=self.requires_python,
            variant=local_label(self.file),
            metadata_sha256=hashlib.sha256(self.metadata).hexdigest(),
            size=self.path.stat().st_size,
            url=url,
            gpu_code=self.gpu_code(),
        )

    def gpu_code(self) -> tuple[str, ...] | None:
        """The SASS and PTX archs (``sm_90``, ``compute_90``) the audit beside the wheel listed; None without one."""
        try:
            archs = json.loads(self.side_file(".audit.json").read_text()).get("archs")
        except (OSError, ValueError, AttributeError):
            return None
        code = GpuCode.from_audit(archs)
        return (*code.sass, *code.ptx) if code else None  # GpuCode.from_list reads it back


def inspect_wheel(path: Path) -> LocalWheel:
    """Read name, version, Requires-Python and METADATA; refuse (exit 2) what pip would refuse (wheelcheck.py)."""
    identity, metadata = check_wheel(path)
    headers = email.parser.BytesParser().parsebytes(metadata, headersonly=True)
    name, version = identity.project, identity.version
    return LocalWheel(
        path=path,
        project=name,
        version=version,
        sha256=_sha256(path),
        metadata=metadata,
        requires_python=headers.get("Requires-Python"),
        identity=identity,
    )


def local_label(file: str) -> str:
    """The local version label as spelled in the wheel file name (``cu12torch2.8cxx11abiTRUE``), or ""."""
    version = file.split("-")[1]
    return version.partition("+")[2]


def _sha256(path: Path) -> str:
    return sha256_of(path)


def gpu_exempt(file: str, architectures: Sequence[str]) -> bool:
    """Whether a wheel (or a cell's platform tag) is for one of ``architectures`` (``aarch64``): farms with no GPU
    runner of that architecture publish its wheels on the audit alone (``--gpu-untested aarch64``)."""
    platform = file.removesuffix(".whl").rsplit("-", 1)[-1]
    return any(platform.endswith(f"_{arch}") for arch in architectures)


def check_gates(wheel: LocalWheel, opts: Options) -> None:
    gpu = opts.require_gpu_result and not gpu_exempt(wheel.file, opts.gpu_untested)
    gates = [
        (".audit.json", "audit", opts.audit_gate, "run the audit, or pass --no-audit-gate"),
        (".gpu.json", "GPU test", gpu, "run the GPU tests, or drop --require-gpu-result"),
    ]
    for suffix, what, required, fix in gates:
        if not required:
            continue
        side = wheel.side_file(suffix)
        if not side.is_file():
            raise PublishFailed(f"refused {wheel.file}: no {what} result ({side.name} is missing)", hint=fix)
        _check_result(wheel, side, what, fix)


def _check_result(wheel: LocalWheel, side: Path, what: str, fix: str) -> None:
    """``passed`` must be true; a recorded ``sha256`` must be this wheel's; a newer ``schema`` is refused."""
    try:
        doc = json.loads(side.read_text())
        passed, sha, schema = doc.get("passed"), doc.get("sha256"), int(doc.get("schema", 1))
    except (ValueError, AttributeError, TypeError) as exc:
        raise PublishFailed(f"refused {wheel.file}: {side.name} is not a result object ({exc})") from exc
    if schema > RESULT_SCHEMA:
        raise PublishFailed(
            f"refused {wheel.file}: {side.name} has schema {schema}, this wheelfarm reads {RESULT_SCHEMA}",
            hint="update wheelfarm",
        )
    if sha is None or doc.get("wheel") not in (None, wheel.file):
        raise PublishFailed(
            f"refused {wheel.file}: {side.name} names no sha256 or another wheel ({doc.get('wheel')}): a result "
            "must be tied to the bytes it judged", hint=fix)
    if sha != wheel.sha256:
        raise PublishFailed(
            f"refused {wheel.file}: {side.name} is for other bytes (sha256 {sha}, the wheel "
            f"has {wheel.sha256})",
            hint=f"the wheel changed after the {what}; rerun it",
        )
    if passed is not True:
        raise PublishFailed(
            f"refused {wheel.file}: the {what} did not pass ({side.name}: passed={passed})", hint=fix
        )


# --------------------------------------------------------------------------------------------- publish


def publish(store: Store, paths: Sequence[Path], opts: Options) -> dict[str, str]:
    """Publish ``paths`` and rebuild the index; ``{file: "published" | "unchanged" | "replaced"}``."""
    wheels = [inspect_wheel(p) for p in paths]
    for w in wheels:  # every refusal happens before anything is written
        check_gates(w, opts)
    entries = State.from_bytes(store.read_state()[0]).entries
    _refuse_shadows(wheels, entries)
    indexed = {e.file: e for e in entries}  # a replaced wheel's bytes live under its entry's key
    stored = {w.file: store.sha256(indexed[w.file].path if w.file in indexed else w.store_path) for w in wheels}
    conflicts = [w for w in wheels if stored[w.file] not in (None, w.sha256)]
    if conflicts and not opts.replace:
        w = conflicts[0]
        raise PublishFailed(
            f"{w.file} is already published with different bytes (stored sha256 {stored[w.file]}, "
            f"local {w.sha256}); nothing was changed",
            hint="published wheels are immutable: bump the version or local label "
            "(--replace overwrites and logs the old sha256)",
        )
    results = {}
    for w in wheels:
        done = indexed.get(w.file)
        if done is not None and done.key and done.sha256 == w.sha256:  # these very bytes, replaced in earlier
            results[w.file] = "unchanged"
            continue
        results[w.file] = publish_one(store, w, old_sha256=stored[w.file])
        log.info(f"{results[w.file]}: {w.file} (sha256 {w.sha256[:16]}…) → {store.description}")
    reindex(store)
    return results


def _refuse_shadows(wheels: Sequence[LocalWheel], entries: Sequence[Entry]) -> None:
    """A used identity takes no other file name: ``flash_attn-2.0.0-…`` beside ``flash_attn-2.0-…`` (or a
    differently cased local label) would list two files for one release, and pip would install either."""
    seen = {Identity.of(e.file): e.file for e in entries}
    for w in wheels:
        other = seen.setdefault(w.identity, w.file)
        if other != w.file:
            raise PublishFailed(f"refused {w.file}: {other} is the same release (project {w.identity.project}, "
                                f"version {w.identity.version}, same build tag and tags); nothing was changed",
                                hint="a published release is immutable under any spelling: bump the version or "
                                     "local label (--replace replaces a file under its own name only)")


def publish_one(store: Store, w: LocalWheel, *, old_sha256: str | None) -> str:
    replacing = old_sha256 not in (None, w.sha256)
    if replacing and not store.flat_names:
        return _replace_keyed(store, w, str(old_sha256))
    if replacing:
        at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        rep = Replacement(w.file, str(old_sha256), w.sha256, at)
        update_state(store, lambda s: s.with_replacement(rep))
        store.overwrite(w.store_path, w.path, "application/octet-stream")
        store.overwrite(w.store_path + ".metadata", w.metadata, "text/plain")
    else:
        _put_strict(store, w.store_path, w.path, w.sha256)
        _put_strict(store, w.store_path + ".metadata", w.metadata, hashlib.sha256(w.metadata).hexdigest())
    for suffix in SIDE_FILES:
        _put_side_file(store, w, suffix, replacing=replacing)
    _verify(store, w, w.store_path)
    entry = w.entry(store.url_for(w.store_path) if store.absolute_links else None)
    new_entry = False

    def add(state: State) -> State | None:
        nonlocal new_entry
        new_entry = state.get(w.file) != entry
        return state.with_entry(entry) if new_entry else None

    update_state(store, add)
    if replacing:
        return "replaced"
    return "published" if new_entry or old_sha256 is None else "unchanged"


def replaced_key(w: LocalWheel) -> str:
    """Where ``--replace`` puts new bytes: a folder of their own (sha256-named), the file name kept for pip."""
    return f"wheels/{w.project}/replaced/{w.sha256[:16]}/{w.file}"


def _replace_keyed(store: Store, w: LocalWheel, old_sha256: str) -> str:
    """``--replace``, invisible until complete: the new wheel, its .metadata and side files go under their own key
    (create-only, verified), then ONE compare-and-swap points the entry at them and logs the replacement; pages
    follow. Until that swap every page links the old bytes, which stay where they were (a kill changes nothing a
    consumer sees; a rerun completes)."""
    key = replaced_key(w)
    _put_strict(store, key, w.path, w.sha256)
    _put_strict(store, key + ".metadata", w.metadata, hashlib.sha256(w.metadata).hexdigest())
    for suffix in SIDE_FILES:
        if w.side_file(suffix).is_file():
            store.put_new(key + suffix, w.side_file(suffix), "application/json")
    _verify(store, w, key)
    entry = replace(w.entry(store.url_for(key) if store.absolute_links else None), key=key)
    at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rep = Replacement(w.file, old_sha256, w.sha256, at)
    update_state(store, lambda s: s.with_replacement(rep).with_entry(entry) if s.get(w.file) != entry else None)
    return "replaced"


def _put_side_file(store: Store, w: LocalWheel, suffix: str, *, replacing: bool) -> None:
    """Upload ``<wheel><suffix>`` if present; first write wins unless the wheel itself is being replaced."""
    side, name = w.side_file(suffix), w.store_path + suffix
    if not side.is_file():
        return
    if replacing:
        store.overwrite(name, side, "application/json")
    elif not store.put_new(name, side, "application/json") and store.sha256(name) != _sha256(side):
        log.warn(f"{side.name}: kept the published copy (the local one differs)")


def _put_strict(store: Store, name: str, src: Path | bytes, sha256: str) -> None:
    if not store.put_new(name, src, "application/octet-stream") and store.sha256(name) != sha256:
        raise PublishFailed(f"{name}: published concurrently with different bytes; this copy was not stored")


def _verify(store: Store, w: LocalWheel, path: str) -> None:
    for name, expected in (
        (path, w.sha256),
        (path + ".metadata", hashlib.sha256(w.metadata).hexdigest()),
    ):
        got = store.sha256(name)
        if got != expected:
            raise PublishFailed(
                f"{name}: stored sha256 {got} != local {expected} after upload; not indexed",
                hint="the store corrupted or lost the upload; rerun publish",
            )


# ------------------------------------------------------------------------------------------ index state


def update_state(store: Store, change: Callable[[State], State | None]) -> State:
    """Apply ``change`` to the index state with compare-and-swap; retried while others win the race."""
    for attempt in range(CAS_ATTEMPTS):
        data, token = store.read_state()
        state = State.from_bytes(data)
        new = change(state)
        if new is None or new == state:
            return state
        if store.cas_state(new.to_bytes(), token):
            return new
        time.sleep(random.uniform(0, min(1.0, 0.02 * (attempt + 1))))
    raise PublishFailed(
        f"{store.description}: the index state kept changing under {CAS_ATTEMPTS} attempts",
        hint="too many concurrent publishers; rerun (it is idempotent)",
    )


def reindex(store: Store) -> int:
    """Rebuild every index page from the state; repeat while the state changed meanwhile. Returns #pages."""
    for _ in range(REINDEX_ROUNDS):
        data, token = store.read_state()
        pages = build_pages(State.from_bytes(data).entries)
        for path in sorted(pages, key=lambda p: (-p.count("/"), p)):  # project pages before the lists
            store.write_page(path, pages[path], content_type(path))
        if store.read_state()[1] != token:
            continue
        for stale in stale_pages(store.list_pages(), pages):  # the lists no longer link them: now they can go
            try:
                store.delete_page(stale)
            except PublishFailed as exc:  # e.g. no s3:DeleteObject: an unlinked page is harmless, say so
                log.warn(f"could not delete the stale page {stale}: {exc.message}")
        if store.read_state()[1] == token:  # another publisher may have written pages meanwhile: redo them
            return len(pages)
    raise PublishFailed(
        f"{store.description}: the index state kept changing while the pages were written",
        hint="rerun `wheelfarm index --to …` when the publishers are done",
    )


def stale_pages(existing: Sequence[str], pages: Mapping[str, bytes]) -> list[str]:
    """Index pages in the store that the state no longer produces (a project or variant whose wheels vanished).
    Only page names (``…/simple/…/index.html|json`` and the root ``index.html``) are candidates, never wheels."""
    def is_page(name: str) -> bool:  # simple/[<project>/]index.*, <variant>/simple/[<project>/]index.*, index.html
        parts = name.split("/")
        if name == "index.html":
            return True
        return (parts[-1] in ("index.html", "index.json") and "simple" in parts[:2]
                and len(parts) - parts.index("simple") in (2, 3))

    return sorted(n for n in existing if is_page(n) and not n.startswith("wheels/") and n not in pages)


def rescan(store: Store) -> State:
    """Reconcile the state with the stored files: add complete wheels missing from it, drop vanished ones."""
    files = set(store.list_files("wheels/"))
    wheels = [f for f in files if f.endswith(".whl") and f + ".metadata" in files and "/replaced/" not in f]

    def change(state: State) -> State:
        known = {e.path for e in state.entries}
        known_files = {e.file for e in state.entries}  # a replaced wheel's original bytes are not a new wheel
        new = state.without(e.file for e in state.entries if e.path not in files)
        for path in sorted(p for p in set(wheels) - known if p.rsplit("/", 1)[-1] not in known_files):
            new = new.with_entry(_entry_from_store(store, path))
        return new

    return update_state(store, change)


def _entry_from_store(store: Store, path: str) -> Entry:
    metadata = store.get(path + ".metadata")
    headers = email.parser.BytesParser().parsebytes(metadata, headersonly=True)
    file = path.rsplit("/", 1)[-1]
    name = parse_wheel_filename(file)[0]
    sha = store.sha256(path)
    if sha is None:
        raise PublishFailed(f"{path}: vanished during the rescan")
    return Entry(
        file=file,
        project=name,
        sha256=sha,
        requires_python=headers.get("Requires-Python"),
        variant=local_label(file),
        metadata_sha256=hashlib.sha256(metadata).hexdigest(),
        url=store.url_for(path) if store.absolute_links else None,
    )
