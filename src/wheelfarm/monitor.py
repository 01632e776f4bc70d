"""Sample the memory of a process tree while it runs: peak total RSS, largest single process, compile jobs."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

COMPILERS = {"cicc", "ptxas", "cc1plus", "nvcc", "cudafe++", "fatbinary", "nvlink"}
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Peaks:
    total_mb: int = 0
    largest_mb: int = 0
    max_compilers: int = 0
    samples: int = 0


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree(root: int) -> list[int]:
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _rss_and_name(pid: int) -> tuple[int, str]:
    try:
        statm = Path(f"/proc/{pid}/statm").read_text().split()
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return 0, ""
    return int(statm[1]) * _PAGE // 2**20, name


class TreeMonitor(threading.Thread):
    """``with TreeMonitor(pid) as m: ...`` then read ``m.peaks``."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peaks = pid, interval, Peaks()
        self._stop_event = threading.Event()

    def sample(self) -> None:
        total = largest = compilers = 0
        for pid in _tree(self.pid):
            rss, name = _rss_and_name(pid)
            total += rss
            largest = max(largest, rss)
            compilers += name in COMPILERS and name != "nvcc"
        p = self.peaks
        p.total_mb, p.largest_mb = max(p.total_mb, total), max(p.largest_mb, largest)
        p.max_compilers, p.samples = max(p.max_compilers, compilers), p.samples + 1

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_event.set()
        self.join()
