"""Where the mirror lives: one ``Store`` protocol over a local directory, S3 and GitHub releases.

Store names are mirror-relative paths with ``/`` separators (``wheels/flash-attn/<file>.whl``,
``cu12torch2.8cxx11abiTRUE/simple/flash-attn/index.html``). Files are immutable (``put_new`` never
overwrites); only index pages and the small index-state object change, the latter by compare-and-swap.

``open_store(target)`` parses a target: a path, ``s3://bucket/prefix`` or ``github://owner/repo@tag``.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

from ..errors import BadInput, PublishFailed

Source = bytes | Path
STATE_NAME = "index-state.json"

T = TypeVar("T")


@runtime_checkable
class Store(Protocol):
    """What publishing and indexing need from a mirror backend."""

    description: str  # printable, never holds a secret
    absolute_links: bool  # True: index links come from url_for(); False: relative links inside the mirror
    flat_names: bool  # True: one namespace of file names (GitHub assets), so --replace overwrites in place

    def list_files(self, prefix: str = "") -> list[str]: ...

    def get(self, name: str) -> bytes: ...

    def put_new(self, name: str, src: Source, content_type: str) -> bool:
        """Store ``src`` as ``name`` if no such name exists; False (nothing written) when it does."""
        ...

    def overwrite(self, name: str, src: Source, content_type: str) -> None:
        """Replace an existing file (``publish --replace`` only)."""
        ...

    def list_pages(self) -> list[str]:
        """Every stored name that could be an index page (where write_page writes: GitHub keeps them apart)."""
        ...

    def delete_page(self, name: str) -> None:
        """Remove an index page no longer produced (``reindex``: a vanished project or variant); never a wheel."""
        ...

    def sha256(self, name: str) -> str | None:
        """Hex sha256 of the stored bytes (as the store reports or recomputes them), None if absent."""
        ...

    def read_state(self) -> tuple[bytes | None, str | None]:
        """The index-state object and an opaque token for ``cas_state`` (None, None when there is none)."""
        ...

    def cas_state(self, data: bytes, token: str | None) -> bool:
        """Write the index state only if it is still at ``token``; False when someone else won."""
        ...

    def write_page(self, name: str, data: bytes, content_type: str) -> None:
        """Write one index page whole, in one step (readers see the old or the new file, never a mix)."""
        ...

    def url_for(self, name: str) -> str: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Retries with exponential backoff and jitter for transient network errors."""

    attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 8.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """``$WHEELFARM_RETRY_ATTEMPTS`` / ``$WHEELFARM_RETRY_BASE_S`` override the defaults."""
        try:
            attempts = int(os.environ.get("WHEELFARM_RETRY_ATTEMPTS", cls.attempts))
            base = float(os.environ.get("WHEELFARM_RETRY_BASE_S", cls.base_s))
        except ValueError as exc:
            raise BadInput(f"WHEELFARM_RETRY_ATTEMPTS/WHEELFARM_RETRY_BASE_S: not a number ({exc})") from exc
        return cls(attempts=max(1, attempts), base_s=max(0.0, base))

    def delay(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * 2**attempt) * (0.5 + random.random() / 2)


def with_retries(
    what: str, fn: Callable[[], T], policy: RetryPolicy, transient: Callable[[BaseException], bool]
) -> T:
    """Call ``fn``; on a transient error retry with backoff; then fail with a clear ``PublishFailed``."""
    from .. import log

    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:
            if not transient(exc):
                raise
            if attempt + 1 == policy.attempts:
                raise PublishFailed(
                    f"{what}: still failing after {policy.attempts} attempts: {type(exc).__name__}: {exc}",
                    hint="check the network and the endpoint; rerunning is safe (files are immutable)",
                ) from exc
            wait = policy.delay(attempt)
            log.warn(
                f"{what}: {type(exc).__name__}: {exc}; retry {attempt + 1}/{policy.attempts - 1} "
                f"in {wait:.1f}s"
            )
            time.sleep(wait)
    raise AssertionError("unreachable")


def sha256_of(src: Source) -> str:
    if isinstance(src, bytes):
        return hashlib.sha256(src).hexdigest()
    h = hashlib.sha256()
    with open(src, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def open_store(
    target: str,
    *,
    endpoint_url: str | None = None,
    pages_dir: str | None = None,
    retry: RetryPolicy | None = None,
) -> Store:
    """A store for ``target``: a path (local directory), ``s3://bucket/prefix`` or
    ``github://owner/repo@tag``.

    S3: endpoint from ``endpoint_url`` or ``$AWS_ENDPOINT_URL``; credentials from the standard boto3 chain.
    GitHub: API base from ``$GITHUB_API_URL`` (default https://api.github.com), token from ``$GITHUB_TOKEN``;
    index pages go to ``pages_dir`` (default ``./pages``), served by GitHub Pages, linking to release assets.
    """
    retry = retry or RetryPolicy.from_env()
    scheme, sep, rest = target.partition("://")
    if not sep:
        from .local import LocalStore

        return LocalStore(Path(target))
    if scheme == "file":
        from .local import LocalStore

        return LocalStore(Path(rest))
    if scheme == "s3":
        from .s3 import S3Store

        return S3Store.from_target(
            rest, endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL"), retry=retry
        )
    if scheme == "github":
        from .github import GitHubStore

        return GitHubStore.from_target(rest, pages_dir=Path(pages_dir or "pages"), retry=retry)
    raise BadInput(
        f"--to {target!r}: unknown target scheme {scheme!r}",
        hint="use a directory path, s3://bucket/prefix or github://owner/repo@tag",
    )
