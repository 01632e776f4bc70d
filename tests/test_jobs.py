"""The MAX_JOBS planner: memory-bounded (cgroup-aware), core-bounded, never over memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from wheelfarm import jobs
from wheelfarm.matrix import Cell


def fake_root(tmp_path: Path, meminfo_mb: int, cgroup: dict[str, str] | None = None) -> Path:
    (tmp_path / "proc").mkdir(parents=True)
    (tmp_path / "proc/meminfo").write_text(f"MemTotal: {meminfo_mb * 2048} kB\nMemAvailable: {meminfo_mb * 1024} kB\n")
    cg = tmp_path / "sys/fs/cgroup"
    cg.mkdir(parents=True)
    for name, value in (cgroup or {}).items():
        (cg / name).parent.mkdir(parents=True, exist_ok=True)
        (cg / name).write_text(value)
    return tmp_path


def test_cgroup_v2_limit_wins_over_host_memory(tmp_path: Path) -> None:
    root = fake_root(tmp_path, 120_000, {"memory.max": str(16 * 2**30), "memory.current": str(2 * 2**30)})
    memory = jobs.available_memory(root)
    assert memory.available_mb == 14 * 1024
    assert "cgroup v2" in memory.source


def test_cgroup_v2_unlimited_and_v1(tmp_path: Path) -> None:
    assert jobs.available_memory(fake_root(tmp_path / "a", 8000, {"memory.max": "max"})).available_mb == 8000
    v1 = fake_root(tmp_path / "b", 64_000, {"memory/memory.limit_in_bytes": str(8 * 2**30),
                                            "memory/memory.usage_in_bytes": "0"})
    memory = jobs.available_memory(v1)
    assert (memory.available_mb, memory.source) == (8192, "cgroup v1 memory.limit_in_bytes")


@pytest.mark.parametrize(
    ("cores", "mem_mb", "per_job", "expected", "limit"),
    [
        (16, 125_000, 4000, 16, "cores"),  # the H100 host: cores bound it
        (16, 32_000, 4000, 6, "memory"),  # a 32 GB container: 0.85*32000/4000 = 6
        (2, 24_000, 7000, 2, "cores"),
        (64, 8_000, 4000, 1, "memory"),  # never below one job
    ],
)
def test_plan_bounds(cores: int, mem_mb: int, per_job: int, expected: int, limit: str) -> None:
    plan = jobs.plan(cores=cores, memory=jobs.Memory(mem_mb, "test"), per_job_mb=per_job,
                     per_job_source="test", archs=1, nvcc_threads=2)
    assert (plan.max_jobs, plan.limited_by) == (expected, limit)
    assert plan.nvcc_threads == 1  # one arch: nvcc threads have nothing to parallelise
    if plan.max_jobs > 1:
        assert plan.max_jobs * plan.per_job_mb <= mem_mb


def test_plan_threads_scale_memory_and_max_jobs_caps() -> None:
    plan = jobs.plan(cores=16, memory=jobs.Memory(40_000, "t"), per_job_mb=4000, per_job_source="t", archs=4,
                     nvcc_threads=2)
    assert plan.nvcc_threads == 2
    assert plan.max_jobs == 4  # 0.85*40000 // (4000*2)
    capped = jobs.plan(cores=16, memory=jobs.Memory(125_000, "t"), per_job_mb=4000, per_job_source="t", archs=1,
                       nvcc_threads=2, max_jobs=3)
    assert (capped.max_jobs, capped.limited_by) == (3, "--max-jobs")
    assert capped.env() == {"MAX_JOBS": "3", "NVCC_THREADS": "1"}


def test_recorded_peaks_keep_the_highest(tmp_path: Path) -> None:
    path = tmp_path / "peaks.json"
    key = jobs.peak_key(Cell("flash-attn", "2.8.3.post2", "2.11", "13.0", "3.12", True, ("90",), "sm90"))
    assert key == "flash-attn==2.8.3.post2:sm90"  # the key recorded peaks carry in existing caches
    patched = Cell("flash-attn", "2.8.3.post2", "2.11", "13.0", "3.12", True, ("90",), "lite", patches="p/lite")
    assert jobs.peak_key(patched) == "flash-attn==2.8.3.post2:sm90:lite"  # its code differs: its own peaks
    assert jobs.recorded_peak_mb(key, path) is None
    jobs.record_peak(key, 4100, 6900, path)
    jobs.record_peak(key, 3000, 5000, path)
    assert jobs.recorded_peak_mb(key, path) == 4100
