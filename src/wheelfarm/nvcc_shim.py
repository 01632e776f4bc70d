#!/usr/bin/env python3
"""torch's nvcc (``PYTORCH_NVCC``) → sccache → nvcc, with torch's headers at one path for every Python of a group.

This is what stays of wheelfarm's own nvcc cache (sccache does the caching): each Python's torch lives in its own
site-packages (``…/python3.11/site-packages/torch/include``), and those paths reach sccache's key through the
preprocessed text (``__FILE__`` in torch's headers, line markers in nvcc's host step; sccache 0.16's
``SCCACHE_BASEDIRS`` does not reach that step). So every ``…/site-packages/torch…`` argument is rewritten to
``$WHEELFARM_TORCH_LINK/torch…``, a symlink to this Python's site-packages: the same path for every Python, the
headers still this Python's own. Nothing is trusted to be equal: sccache hashes the headers' text, so a torch whose
headers differ misses (and should two Pythons of a group ever build at once on one machine — wheelfarm builds them
one after the other — a flipped link could only cost a miss or give the same torch version's headers). Standard
library only: it runs under whatever interpreter the build uses.

Environment: WHEELFARM_SCCACHE (the sccache binary), WHEELFARM_REAL_NVCC (the nvcc to run), WHEELFARM_TORCH_LINK
(the stable path; unset: arguments are passed unchanged).
"""

from __future__ import annotations

import os
import re
import sys

_SITE_TORCH = re.compile(r"^(-I|-isystem)?(/.*?/(?:site|dist)-packages)(/torch(?:/.*)?)$")


def stable_args(args: list[str], link: str) -> tuple[list[str], str | None]:
    """``args`` with each site-packages/torch path under ``link``; the site-packages they named (one per build)."""
    out, site = [], None
    for arg in args:
        match = _SITE_TORCH.match(arg)
        if match:
            site = match.group(2)
            arg = f"{match.group(1) or ''}{link}{match.group(3)}"
        out.append(arg)
    return out, site


def point(link: str, target: str) -> None:
    """Make ``link`` a symlink to ``target``, atomically (parallel compile jobs of one build all call this)."""
    try:
        if os.readlink(link) == target:
            return
    except OSError:
        os.makedirs(os.path.dirname(link) or ".", exist_ok=True)
    tmp = f"{link}.{os.getpid()}.tmp"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def main(argv: list[str]) -> int:
    nvcc = os.environ.get("WHEELFARM_REAL_NVCC", "nvcc")
    sccache = os.environ.get("WHEELFARM_SCCACHE")
    link = os.environ.get("WHEELFARM_TORCH_LINK")
    if link:
        argv, site = stable_args(argv, link)
        if site:
            point(link, site)
    cmd = [sccache, nvcc, *argv] if sccache else [nvcc, *argv]
    os.execv(cmd[0], cmd)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
