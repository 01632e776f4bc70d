"""The local-directory mirror (the default): serve it with any static web server or use it as file://.

New files are written to a temporary name in the same directory and ``os.link``-ed into place (atomic, fails
if the name exists); pages are replaced with ``os.replace``; the index state is compare-and-swapped under an
``fcntl`` lock on ``.index-state.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from . import STATE_NAME, Source, sha256_of

LOCK_NAME = ".index-state.lock"
_TMP_MARK = ".tmp-"


class LocalStore:
    absolute_links = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)

    def _path(self, name: str) -> Path:
        return self.root.joinpath(*name.split("/"))

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
        with open(self.root / LOCK_NAME, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if self.read_state()[1] != token:
                    return False
                self.overwrite(STATE_NAME, data, "application/json")
                return True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def url_for(self, name: str) -> str:
        return self._path(name).resolve().as_uri()

    @contextlib.contextmanager
    def _staged(self, dest: Path, src: Source) -> Iterator[Path]:
        """A complete, fsync-ed copy of ``src`` next to ``dest``, removed afterwards if still there."""
        dest.parent.mkdir(parents=True, exist_ok=True)
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


__all__ = ["LocalStore", "sha256_of"]
