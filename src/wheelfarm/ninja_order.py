#!/usr/bin/env python3
"""A ``ninja`` shim that orders the compiles from their recorded durations, then runs the real ninja.

torch writes build.ninja with its objects in setup.py's source order and runs ``ninja`` from PATH in the build
folder. Ninja starts ready edges of equal priority in manifest order, so the longest objects (flash-attn's split
forward kernels, ~470 s each) may start last and leave the machine idle at the end: 12 → 7 → 4 → 1 jobs over the
last ~300 s of the measured H100 build (DESIGN.md). wheelfarm knows each object's duration from earlier builds,
so this shim reorders the ``build`` statements before ninja reads them: longest first (LPT), then improved by a
deterministic local search that simulates ninja's list scheduling on ``-j`` slots and keeps a swap of two objects
when the simulated slots finish earlier (the span first). On the two recorded H100 flash-attn logs, an order made
from one run's durations leaves the other run's span at 1.04-1.09x the physical limit (job-seconds / cores) with
LPT and at 1.03x with the search (``tests/test_build_shims.py``). Standard library only.

Environment: WHEELFARM_REAL_NINJA (the ninja to run), WHEELFARM_DURATIONS (JSON {object file name: seconds}).
"""

from __future__ import annotations

import heapq
import json
import os
import random
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

SEARCH_WORK = 2_000_000  # simulated job starts the search may spend (~1 s): iterations = this / objects
SEARCH_SEED = 0  # fixed: the same durations and -j always give the same order


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


def finish_times(order: Sequence[str], durations: dict[str, float], jobs: int) -> list[float]:
    """When each of ninja's ``jobs`` slots goes idle, latest first, if each object starts (in ``order``) as soon as
    a slot frees; the first is the span."""
    slots = [0.0] * max(1, jobs)
    for name in order:
        heapq.heappush(slots, heapq.heappop(slots) + durations[name])
    return sorted(slots, reverse=True)


def span(order: Sequence[str], durations: dict[str, float], jobs: int) -> float:
    return finish_times(order, durations, jobs)[0]


def search_order(names: Sequence[str], durations: dict[str, float], jobs: int) -> list[str]:
    """Longest first, then random pairwise swaps (seeded), each kept only when it makes the slots' finish times,
    latest first, strictly better (so: a shorter span, or the same span with a lower next-latest slot...)."""
    order = sorted(names, key=lambda n: -durations[n])
    if len(order) <= jobs or jobs <= 1:
        return order
    rnd, best = random.Random(SEARCH_SEED), finish_times(order, durations, jobs)
    for _ in range(SEARCH_WORK // len(order)):
        i, j = rnd.randrange(len(order)), rnd.randrange(len(order))
        order[i], order[j] = order[j], order[i]
        candidate = finish_times(order, durations, jobs)
        if candidate < best:
            best = candidate
        else:
            order[i], order[j] = order[j], order[i]
    return order


def reorder(text: str, durations: dict[str, float], jobs: int | None = None) -> str:
    """Objects with no history first, in their original order; then the known ones longest first, or, given the
    number of parallel ``jobs``, in the searched order (``search_order``)."""
    parts = split_blocks(text)
    if parts is None or not parts[1]:
        return text
    head, blocks, tail = parts
    ranked = sorted(enumerate(blocks), key=lambda ib: (-durations.get(output_name(ib[1]), float("inf")), ib[0]))
    unknown = [b for _, b in ranked if output_name(b) not in durations]
    known = {output_name(b): b for _, b in ranked if output_name(b) in durations}
    if jobs and len(known) == len(ranked) - len(unknown):  # one block per object name: safe to search
        ordered = unknown + [known[n] for n in search_order(list(known), durations, jobs)]
    else:
        ordered = [b for _, b in ranked]
    return "".join(head) + "".join("".join(b) for b in ordered) + "".join(tail)


def parallel_jobs(argv: Sequence[str]) -> int:
    """ninja's ``-j N`` / ``-jN``; without it, ninja's own default (cores + 2 above 2 cores)."""
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "-j" and i + 1 < len(argv) else arg[2:] if arg.startswith("-j") else ""
        if value.isdigit() and int(value) > 0:
            return int(value)
    cores = os.cpu_count() or 1
    return cores + 2 if cores > 2 else cores + 1


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
        manifest.write_text(reorder(manifest.read_text(), durations, parallel_jobs(argv)))
    ninja = real_ninja()
    os.execv(ninja, [ninja, *argv])
    return 1  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
