"""The ninja shim, unit-tested on real files: its longest-first reordering of a torch-style build.ninja and the
searched order on recorded logs (the nvcc shim is tested with the compile cache, tests/test_compile_cache.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wheelfarm import ninja_order

REPO = Path(__file__).resolve().parents[1]

TORCH_NINJA = """ninja_required_version = 1.3
cxx = c++
nvcc = /cuda/bin/nvcc

rule compile
  command = $cxx -MMD -MF $out.d $cflags -c $in -o $out $post_cflags
  depfile = $out.d
  deps = gcc

rule cuda_compile
  depfile = $out.d
  deps = gcc
  command = $nvcc --generate-dependencies-with-compile --dependency-output $out.d $cuda_cflags -c $in -o $out

build /b/csrc/flash_api.o: compile /s/csrc/flash_api.cpp
build /b/csrc/src/short.o: cuda_compile /s/csrc/src/short.cu
build /b/csrc/src/long.o: cuda_compile /s/csrc/src/long.cu
build /b/csrc/src/new.o: cuda_compile /s/csrc/src/new.cu



"""


def built_order(text: str) -> list[str]:
    return [line.split(":")[0].split("/")[-1] for line in text.splitlines() if line.startswith("build ")]


def test_reorder_longest_first_unknown_first_rules_kept() -> None:
    out = ninja_order.reorder(TORCH_NINJA, {"flash_api.o": 50, "short.o": 10, "long.o": 469})
    assert built_order(out) == ["new.o", "long.o", "flash_api.o", "short.o"]
    assert out.split("build ")[0] == TORCH_NINJA.split("build ")[0]  # variables and rules untouched
    assert sorted(out.splitlines()) == sorted(TORCH_NINJA.splitlines())  # nothing lost or added


def test_reorder_leaves_unusual_manifests_alone() -> None:
    odd = TORCH_NINJA.replace("build /b/csrc/src/long.o", "rule late\n  command = x\nbuild /b/csrc/src/long.o")
    assert ninja_order.reorder(odd, {"long.o": 469}) == odd


def test_shim_reorders_then_runs_real_ninja(tmp_path: Path) -> None:
    (tmp_path / "build.ninja").write_text(TORCH_NINJA)
    fake = tmp_path / "fake-ninja"
    fake.write_text("#!/bin/sh\necho ran \"$@\"\n")
    fake.chmod(0o755)
    durations = tmp_path / "d.json"
    durations.write_text(json.dumps({"long.o": 400, "short.o": 1, "new.o": 2, "flash_api.o": 3}))
    env = {**os.environ, "WHEELFARM_REAL_NINJA": str(fake), "WHEELFARM_DURATIONS": str(durations)}
    out = subprocess.run([sys.executable, ninja_order.__file__, "-v"], cwd=tmp_path, env=env, text=True,
                         capture_output=True, check=True).stdout
    assert out.strip() == "ran -v"
    assert built_order((tmp_path / "build.ninja").read_text()) == ["long.o", "flash_api.o", "new.o", "short.o"]


# --------------------------------------------------------------------------- the searched order, on real logs

H100_RUNS = {  # two cold flash-attn 2.8.3.post2 sm90 builds on the same kind of 16-core H100 host
    "upstream": REPO / "tests" / "data" / "h100-upstream-method.ninja_log",  # DESIGN.md's, ninja's own order
    "wheelfarm": REPO / "docs" / "gpu-runs" / "2026-11-25-h100-flash-attn-2.8.3.post2-sm90" / "ninja_log",
}


def ninja_seconds(path: Path) -> dict[str, float]:
    out = {}
    for line in path.read_text().splitlines()[1:]:
        start, end, _, name = line.split("\t")[:4]
        out[Path(name).name] = (int(end) - int(start)) / 1000
    return out


@pytest.mark.parametrize(("known", "measured"), [("upstream", "wheelfarm"), ("wheelfarm", "upstream")])
def test_searched_order_beats_longest_first_on_the_other_run(known: str, measured: str) -> None:
    """The order is made from one run's durations and judged on the other's (objects vary ±20 % between runs):
    ninja's list scheduling, simulated, must end sooner than with longest-first, and within 1.05× of the limit."""
    seed, actual = ninja_seconds(H100_RUNS[known]), ninja_seconds(H100_RUNS[measured])
    assert len(seed) == len(actual) == 73
    limit = sum(actual.values()) / 16
    lpt = sorted(seed, key=lambda n: -seed[n])
    searched = ninja_order.search_order(list(seed), seed, 16)
    assert sorted(searched) == sorted(seed)
    assert ninja_order.span(searched, actual, 16) < ninja_order.span(lpt, actual, 16)
    assert ninja_order.span(searched, actual, 16) / limit < 1.05
    assert ninja_order.span(searched, seed, 16) / (sum(seed.values()) / 16) < 1.01  # near-flat on its own data


def test_search_is_deterministic_and_reorder_uses_it() -> None:
    seed = ninja_seconds(H100_RUNS["upstream"])
    assert ninja_order.search_order(list(seed), seed, 16) == ninja_order.search_order(list(seed)[::-1], seed, 16)
    manifest = "".join(f"build /b/{n}: cuda_compile /s/{n[:-2]}.cu\n" for n in seed) + "build /b/new.o: x /s/n.cu\n"
    out = built_order(ninja_order.reorder(manifest, seed, jobs=16))
    assert out == ["new.o", *ninja_order.search_order(list(seed), seed, 16)]
    assert built_order(ninja_order.reorder(manifest, seed)) == ["new.o", *sorted(seed, key=lambda n: -seed[n])]


@pytest.mark.parametrize(("argv", "jobs"), [(["-v", "-j", "16"], 16), (["-j7", "-v"], 7), (["-v"], None)])
def test_parallel_jobs_from_ninja_arguments(argv: list[str], jobs: int | None) -> None:
    cores = os.cpu_count() or 1
    assert ninja_order.parallel_jobs(argv) == (jobs or (cores + 2 if cores > 2 else cores + 1))


def test_durations_seed_fallback_and_averaging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A patched variant starts from the plain build's seeded durations (the same objects) in a file of its own;
    a finished build's compile seconds are averaged in, a cache hit (<2 s) never replaces a compile."""
    from wheelfarm import build
    from wheelfarm.matrix import Cell

    monkeypatch.setenv("WHEELFARM_CACHE", str(tmp_path / "cache"))
    seeds = REPO / "src/wheelfarm/data/durations"
    lite = Cell("flash-attn", "2.8.3.post2", "2.11", "13.0", "3.12", True, ("90",), "sm90lite", patches="p/lite")
    assert json.loads(build.durations_file(lite).read_text()) == json.loads(
        (seeds / "flash-attn-2.8.3.post2-sm90-sm90lite.json").read_text())  # a seed of its own
    lite = Cell("flash-attn", "2.8.3.post2", "2.11", "13.0", "3.12", True, ("90",), "sm90new", patches="p/new")
    path = build.durations_file(lite)
    assert path.name == "flash-attn-2.8.3.post2-sm90-sm90new.json"
    seeded = json.loads(path.read_text())
    assert len(seeded) == 73 and seeded == json.loads(
        (REPO / "src/wheelfarm/data/durations/flash-attn-2.8.3.post2-sm90.json").read_text())
    log = tmp_path / "tree" / "build" / "temp.linux-x86_64-cpython-312" / ".ninja_log"
    log.parent.mkdir(parents=True)
    longest = next(iter(seeded))
    log.write_text(f"# ninja log v7\n0\t100000\t0\tx/{longest}\th\n0\t500\t0\tx/flash_api.o\th\n"
                   "0\t3000\t0\tx/brand_new.o\th\n")
    build.record_durations(tmp_path / "tree", lite)
    after = json.loads(path.read_text())
    assert after[longest] == round((seeded[longest] + 100.0) / 2, 1)
    assert after["flash_api.o"] == seeded["flash_api.o"]  # 0.5 s: a cache hit, not a compile
    assert after["brand_new.o"] == 3.0
