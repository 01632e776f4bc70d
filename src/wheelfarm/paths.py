"""Where wheelfarm keeps shared caches (venvs, CUDA toolkits, sdists, compile cache, tools)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$WHEELFARM_CACHE``, else ``$XDG_CACHE_HOME/wheelfarm``, else ``~/.cache/wheelfarm``."""
    explicit = os.environ.get("WHEELFARM_CACHE")
    path = Path(explicit) if explicit else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wheelfarm"
    path.mkdir(parents=True, exist_ok=True)
    return path
