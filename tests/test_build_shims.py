"""The two build shims, unit-tested on real files: the nvcc compile cache's key and Python check, and the
ninja shim's longest-first reordering of a torch-style build.ninja."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wheelfarm import ninja_order, nvcc_cache

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


def test_cache_key_ignores_per_python_paths_only(tmp_path: Path) -> None:
    src = tmp_path / "k.cu"
    src.write_text("__global__ void k() {}\n")
    for py in ("3.11", "3.12"):
        (tmp_path / f"venv{py}" / "include" / f"python{py}").mkdir(parents=True)

    def cmd(py: str, out: str) -> list[str]:
        return ["--generate-dependencies-with-compile", "--dependency-output", f"{out}.d",
                f"-I/venvs/{py}/lib/python{py}/site-packages/torch/include", f"-I/usr/include/python{py}",
                f"-I{tmp_path}/venv{py}/include",  # a venv's include/: per Python, empty
                "-O3", "-gencode", "arch=compute_90,code=sm_90", "-c", str(src), "-o", out]

    k311 = nvcc_cache.cache_key(cmd("3.11", "/b/temp-311/k.o"), src, "13.0", "salt")
    k312 = nvcc_cache.cache_key(cmd("3.12", "/b/temp-312/k.o"), src, "13.0", "salt")
    assert k311 == k312
    assert nvcc_cache.cache_key(cmd("3.11", "/x.o"), src, "13.0", "other torch") != k311
    other_arch = [a.replace("sm_90", "sm_80") for a in cmd("3.11", "/x.o")]
    assert nvcc_cache.cache_key(other_arch, src, "13.0", "salt") != k311
    src.write_text("__global__ void k2() {}\n")
    assert nvcc_cache.cache_key(cmd("3.11", "/x.o"), src, "13.0", "salt") != k311


def test_python_dependent_objects_are_detected(tmp_path: Path) -> None:
    dep = tmp_path / "a.o.d"
    dep.write_text("a.o: /s/a.cu /venv/include/torch/ATen/ATen.h\n")
    assert not nvcc_cache.python_dependent(dep)
    dep.write_text("a.o: /s/a.cpp /usr/include/python3.11/Python.h\n")
    assert nvcc_cache.python_dependent(dep)
    assert nvcc_cache.python_dependent(tmp_path / "missing.d")


@pytest.mark.parametrize("dep_flags", [["--generate-dependencies-with-compile", "--dependency-output"],
                                       ["-MD", "-MF"]], ids=["torch<=2.13", "torch-2.14"])
def test_wrapper_stores_then_hits(tmp_path: Path, dep_flags: list[str]) -> None:
    """A fake nvcc that writes the object and its depfile: the second call (another Python) is a cache hit."""
    fake = tmp_path / "nvcc"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'release 13.0'; exit; fi\n"
                    "while [ $# -gt 0 ]; do case $1 in -o) out=$2; shift;; --dependency-output|-MF) d=$2; shift;; esac;"
                    " shift; done\necho obj > $out; echo \"$out: k.cu\" > $d; echo compiled >> "
                    f"{tmp_path}/calls\n")
    fake.chmod(0o755)
    src = tmp_path / "k.cu"
    src.write_text("__global__ void k() {}\n")
    env = {**os.environ, "WHEELFARM_REAL_NVCC": str(fake), "WHEELFARM_COMPILE_CACHE": str(tmp_path / "cache"),
           "WHEELFARM_CACHE_STATS": str(tmp_path / "stats")}
    # torch 2.14 passes "-c" twice and writes its depfile with -MD -MF
    for py in ("3.11", "3.12"):
        out = tmp_path / py / "k.o"
        out.parent.mkdir()
        subprocess.run([sys.executable, nvcc_cache.__file__, *dep_flags, f"{out}.d", f"-I/usr/include/python{py}",
                        "-c", "-c", str(src), "-o", str(out)], env=env, check=True)
        assert out.read_text() == "obj\n"
    assert (tmp_path / "calls").read_text().count("compiled") == 1
    assert [ln.split()[0] for ln in (tmp_path / "stats").read_text().splitlines()] == ["miss", "hit"]
