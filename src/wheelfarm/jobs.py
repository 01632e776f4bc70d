"""Plan MAX_JOBS and NVCC_THREADS from memory (cgroup-aware), cores and the measured peak RSS per compile job.

nvcc jobs of flash-attn peak at ~4 GB each (DESIGN.md); too many at once get OOM-killed. The plan never lets
jobs × per-job peak exceed the memory that is really available: a container's limit counts, not the host's.
Measured peaks of each build are recorded and preferred over the toml's estimate the next time.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .paths import cache_dir

if TYPE_CHECKING:
    from .matrix import Cell

HEADROOM = 0.85  # leave 15% of the available memory to the linker, ninja, the page cache


@dataclass(frozen=True)
class Memory:
    available_mb: int
    source: str  # "meminfo" or "cgroup v2 memory.max" …


@dataclass(frozen=True)
class JobPlan:
    max_jobs: int
    nvcc_threads: int
    cores: int
    memory: Memory
    per_job_mb: int
    per_job_source: str
    limited_by: str

    def describe(self) -> str:
        return (f"MAX_JOBS={self.max_jobs} NVCC_THREADS={self.nvcc_threads} "
                f"({self.cores} cores, {self.memory.available_mb} MB available from {self.memory.source}, "
                f"{self.per_job_mb} MB per job from {self.per_job_source}; limited by {self.limited_by})")

    def env(self) -> dict[str, str]:
        return {"MAX_JOBS": str(self.max_jobs), "NVCC_THREADS": str(self.nvcc_threads)}

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_limit_mb(root: Path = Path("/")) -> tuple[int, str] | None:
    """Memory left under this process's cgroup limit (v2, else v1), or None when unlimited."""
    v2 = root / "sys/fs/cgroup"
    limit = _read(v2 / "memory.max")
    if limit is not None:
        if limit == "max":
            return None
        used = int(_read(v2 / "memory.current") or 0)
        return (int(limit) - used) // 2**20, "cgroup v2 memory.max"
    v1 = _read(v2 / "memory" / "memory.limit_in_bytes")
    if v1 is not None and int(v1) < 2**60:
        used = int(_read(v2 / "memory" / "memory.usage_in_bytes") or 0)
        return (int(v1) - used) // 2**20, "cgroup v1 memory.limit_in_bytes"
    return None


def meminfo_available_mb(root: Path = Path("/")) -> int:
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"no MemAvailable in {root / 'proc/meminfo'}")


def available_memory(root: Path = Path("/")) -> Memory:
    host = meminfo_available_mb(root)
    cgroup = cgroup_limit_mb(root)
    if cgroup is not None and cgroup[0] < host:
        return Memory(cgroup[0], cgroup[1])
    return Memory(host, "/proc/meminfo MemAvailable")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def plan(
    *, cores: int, memory: Memory, per_job_mb: int, per_job_source: str, archs: int, nvcc_threads: int,
    max_jobs: int | None = None,
) -> JobPlan:
    """Jobs bounded by cores and by memory; NVCC_THREADS only helps with several archs (one thread per arch)."""
    threads = max(1, min(nvcc_threads, archs))
    by_cores = max(1, cores // threads) if threads > 1 and cores >= 2 * threads else max(1, cores)
    by_memory = max(1, int(memory.available_mb * HEADROOM) // max(1, per_job_mb * threads))
    jobs, limited_by = (by_memory, "memory") if by_memory < by_cores else (by_cores, "cores")
    if max_jobs is not None and max_jobs < jobs:
        jobs, limited_by = max_jobs, "--max-jobs"
    return JobPlan(jobs, threads, cores, memory, per_job_mb, per_job_source, limited_by)


# ------------------------------------------------------------------------------ recorded peaks


def _peaks_file() -> Path:
    return cache_dir() / "peaks.json"


def peak_key(cell: Cell) -> str:
    changes_code = cell.patches or cell.disable
    return f"{cell.package}=={cell.version}:sm{'_'.join(cell.archs)}" + (f":{cell.variant}" if changes_code else "")


def recorded_peak_mb(key: str, path: Path | None = None) -> int | None:
    data = json.loads(_read(path or _peaks_file()) or "{}")
    value = data.get(key, {}).get("per_job_mb")
    return int(value) if value else None


def record_peak(key: str, per_job_mb: int, largest_mb: int, path: Path | None = None) -> None:
    """Remember the measured per-job peak (the highest ever seen for this key: planning must stay safe)."""
    path = path or _peaks_file()
    data = json.loads(_read(path) or "{}")
    old = data.get(key, {})
    data[key] = {"per_job_mb": max(per_job_mb, int(old.get("per_job_mb", 0))),
                 "largest_process_mb": max(largest_mb, int(old.get("largest_process_mb", 0)))}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)
