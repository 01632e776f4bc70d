"""The one subprocess wrapper: echoes the command, never the secrets in its environment."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import log


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    capture: bool = False,
    check: bool = True,
    quiet: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (echoed unless ``quiet``); ``env`` is merged over os.environ."""
    argv = [str(c) for c in cmd]
    if not quiet:
        where = f" (in {cwd})" if cwd else ""
        log.info(f"$ {shlex.join(argv)}{where}")
    full_env = {**os.environ, **env} if env is not None else None
    return subprocess.run(
        argv,
        env=full_env,
        cwd=Path(cwd) if cwd else None,
        text=True,
        capture_output=capture,
        check=check,
    )
