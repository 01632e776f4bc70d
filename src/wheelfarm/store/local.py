"""The local-directory mirror (the default): serve it with any static web server or use it as file://.

New files are written to a temporary name in the same directory and ``os.link``-ed into place (atomic, fails
if the name exists); pages are replaced with ``os.replace``; the index state is compare-and-swapped under an
``fcntl`` lock on ``.index-state.lock``, waited for at most ``WHEELFARM_LOCK_TIMEOUT_S`` (default 120 s; the
holder's pid is in the file). Nothing is written through a symlink below the mirror's root (a link could point
anywhere), and temporary files left by killed publishers are removed once they are an hour old.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import PublishFailed
from . import STATE_NAME, Source, sha256_of

LOCK_NAME = ".index-state.lock"
_TMP_MARK = ".tmp-"
STALE_TMP_S = 3600
LOCK_TIMEOUT_S = 120.0


class LocalStore:
    absolute_links = False
    flat_names = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)

    def _path(self, name: str) -> Path:
        """``name`` below the root, refusing a path through a symlink (or to one) inside the mirror."""
        parts = name.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise PublishFailed(f"{self.root}: refused the path {name!r} (empty, '.' or '..' component)")
        path = self.root
        for part in parts:
            path = path / part
            if path.is_symlink():
                raise PublishFailed(f"refused to write through the symlink {path} -> {os.readlink(path)} inside the "
                                    f"mirror {self.root}", hint="a mirror is a plain folder tree: replace the link "
                                    "with a folder (or point --to at the link's target)")
        return path

    def list_files(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        out = []
        for path in self.root.rglob("*"):
            rel = path.relative_to(self.root).as_posix()
            if path.is_file() and _TMP_MARK not in path.name and rel.startswith(prefix):
                out.append(rel)
        return sorted(out)

    def get(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def put_new(self, name: str, src: Source, content_type: str) -> bool:
        dest = self._path(name)
        with self._staged(dest, src) as tmp:
            try:
                os.link(tmp, dest)
            except FileExistsError:
                return False
        return True

    def overwrite(self, name: str, src: Source, content_type: str) -> None:
        dest = self._path(name)
        with self._staged(dest, src) as tmp:
            os.replace(tmp, dest)

    def write_page(self, name: str, data: bytes, content_type: str) -> None:
        self.overwrite(name, data, content_type)

    def list_pages(self) -> list[str]:
        return self.list_files("")

    def delete_page(self, name: str) -> None:
        path = self._path(name)
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # its folder, once empty (a vanished project's simple/<project>/)
            path.parent.rmdir()

    def sha256(self, name: str) -> str | None:
        path = self._path(name)
        return sha256_of(path) if path.is_file() else None

    def read_state(self) -> tuple[bytes | None, str | None]:
        path = self._path(STATE_NAME)
        if not path.is_file():
            return None, None
        data = path.read_bytes()
        return data, hashlib.sha256(data).hexdigest()

    def cas_state(self, data: bytes, token: str | None) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if self.read_state()[1] != token:
                return False
            self.overwrite(STATE_NAME, data, "application/json")
            return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The state lock, waited for at most LOCK_TIMEOUT_S; never follows a symlinked lock file."""
        path = self._path(LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            timeout = float(os.environ.get("WHEELFARM_LOCK_TIMEOUT_S", LOCK_TIMEOUT_S))
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                        raise PublishFailed(f"{path}: still locked after {timeout:g} s by pid {holder}",
                                            hint="a publisher is stopped or hung there: end it (or wait), then "
                                                 "rerun; publishing is idempotent") from None
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def url_for(self, name: str) -> str:
        return self._path(name).resolve().as_uri()

    @contextlib.contextmanager
    def _staged(self, dest: Path, src: Source) -> Iterator[Path]:
        """A complete, fsync-ed copy of ``src`` next to ``dest``, removed afterwards if still there."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(dest.parent)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}{_TMP_MARK}", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(src, bytes):
                    out.write(src)
                else:
                    with open(src, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of publishers killed mid-copy: removed when an hour old (a live copy is far younger)."""
    now = time.time()
    for tmp in folder.glob(f".*{_TMP_MARK}*"):
        with contextlib.suppress(OSError):
            if now - tmp.lstat().st_mtime > STALE_TMP_S:
                tmp.unlink()


__all__ = ["LocalStore", "sha256_of"]
