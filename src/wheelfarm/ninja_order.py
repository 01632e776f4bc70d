#!/usr/bin/env python3
"""A ``ninja`` shim that starts the longest compiles first (LPT order), then runs the real ninja.

torch writes build.ninja with its objects in setup.py's source order and runs ``ninja`` from PATH in the build
folder. Ninja starts ready edges of equal priority in manifest order, so the longest objects (flash-attn's split
forward kernels, ~470 s each) may start last and leave the machine idle at the end: 12 → 7 → 4 → 1 jobs over the
last ~300 s of the measured H100 build (DESIGN.md). wheelfarm knows each object's duration from earlier builds,
so this shim reorders the ``build`` statements longest-first before ninja reads them. Standard library only.

Environment: WHEELFARM_REAL_NINJA (the ninja to run), WHEELFARM_DURATIONS (JSON {object file name: seconds}).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path


def split_blocks(text: str) -> tuple[list[str], list[list[str]], list[str]] | None:
    """(lines before the first build statement, build blocks, lines after the last one), or None when
    anything but blank lines or comments stands between two build statements (then order is left alone)."""
    head: list[str] = []
    blocks: list[list[str]] = []
    between: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("build "):
            if any(ln.strip() and not ln.lstrip().startswith("#") for ln in between):
                return None
            blocks.append([line])
            between = []
        elif blocks and line.startswith((" ", "\t")) and not between:
            blocks[-1].append(line)
        elif blocks:
            between.append(line)
        else:
            head.append(line)
    return head, blocks, between


def output_name(block: list[str]) -> str:
    outputs = block[0][len("build "):].split(":", 1)[0]
    return Path(outputs.replace("$ ", " ").split()[0]).name if outputs.strip() else ""


def reorder(text: str, durations: dict[str, float]) -> str:
    """Longest known objects first; unknown ones (no history) before them all, in their original order."""
    parts = split_blocks(text)
    if parts is None or not parts[1]:
        return text
    head, blocks, tail = parts
    ranked = sorted(enumerate(blocks), key=lambda ib: (-durations.get(output_name(ib[1]), float("inf")), ib[0]))
    return "".join(head) + "".join("".join(b) for _, b in ranked) + "".join(tail)


def real_ninja() -> str:
    explicit = os.environ.get("WHEELFARM_REAL_NINJA")
    if explicit:
        return explicit
    me = Path(__file__).resolve().parent
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which("ninja", path=folder)
        if candidate and Path(candidate).resolve().parent != me:
            return candidate
    raise SystemExit("wheelfarm ninja shim: no real ninja on PATH")


def main(argv: list[str]) -> int:
    manifest = Path("build.ninja")
    durations_file = os.environ.get("WHEELFARM_DURATIONS")
    if manifest.exists() and durations_file and Path(durations_file).exists() and "--version" not in argv:
        durations = json.loads(Path(durations_file).read_text())
        manifest.write_text(reorder(manifest.read_text(), durations))
    ninja = real_ninja()
    os.execv(ninja, [ninja, *argv])
    return 1  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
