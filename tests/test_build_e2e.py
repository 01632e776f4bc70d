"""The fixture cell end to end on the host backend: pinned sdist → patch → toolchain → build (two Pythons, one group)
→ upstream-style name with matching METADATA → audit → pip install into a fresh venv → import. Plus the toolchain's
refusals, which must come before anything compiles.

Real parts throughout: nvcc 13.0 from PyPI wheels, torch 2.14.1, pip, venv. No GPU is needed to import.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_version, parse_wheel_filename

from farmtest import FixtureBuild, run_wheelfarm
from wheelfarm import toolchain
from wheelfarm.config import load
from wheelfarm.errors import BadInput
from wheelfarm.matrix import expand, select

ROOT = Path(__file__).resolve().parents[1]


def test_fixture_group_builds_with_upstream_names(fixture_build: FixtureBuild) -> None:
    names = sorted(Path(r["wheel"]).name for r in fixture_build.results)
    assert names == [
        "fixture_attn-0.1.0+cu13torch2.14cxx11abiTRUE-cp311-cp311-linux_x86_64.whl",
        "fixture_attn-0.1.0+cu13torch2.14cxx11abiTRUE-cp312-cp312-linux_x86_64.whl",
    ]
    assert all(r["ok"] for r in fixture_build.results), fixture_build.results
    for r in fixture_build.results:
        assert r["plan"]["max_jobs"] >= 1 and r["peak_rss_mb"] > 0
        assert Path(r["log"]).read_text().count("[") > 0


def test_second_python_reuses_the_first_pythons_cuda_objects(fixture_build: FixtureBuild) -> None:
    """sccache's statistics in the build report: the five .cu files are compiled once for the group; binding.cpp
    includes Python.h, so each Python compiles its own."""
    first, second = fixture_build.result("3.11")["compile_cache"], fixture_build.result("3.12")["compile_cache"]
    assert (first["kernel_hits"], first["kernel_misses"], first["host_misses"]) == (0, 5, 1)
    assert (second["kernel_hits"], second["kernel_misses"], second["host_misses"]) == (5, 0, 1)
    assert first["writes"] > 0 and first["location"].startswith("Local disk")


def test_metadata_agrees_with_the_file_name_and_pins_torch(fixture_build: FixtureBuild) -> None:
    for r in fixture_build.results:
        wheel = Path(r["wheel"])
        _, version, _, _ = parse_wheel_filename(wheel.name)
        with zipfile.ZipFile(wheel) as zf:
            info = {n.split("/")[0] for n in zf.namelist() if ".dist-info/" in n}
            assert info == {f"fixture_attn-{wheel.name.split('-')[1]}.dist-info"}
            meta = zf.read(f"{info.pop()}/METADATA").decode()
        fields = dict(line.split(": ", 1) for line in meta.split("\n\n")[0].splitlines() if ": " in line)
        assert fields["Version"] == wheel.name.split("-")[1]  # byte-identical, local label included
        assert canonicalize_version(fields["Version"]) == canonicalize_version(version)
        assert "Requires-Dist: torch==2.14.*" in meta


def test_every_built_wheel_was_audited(fixture_build: FixtureBuild) -> None:
    for r in fixture_build.results:
        report = json.loads(Path(r["wheel"] + ".audit.json").read_text())
        assert report["passed"], report
        assert report["archs"]["sass"] == ["sm_80", "sm_90"]


def _fresh_venv_over(torch_python: Path, dest: Path) -> Path:
    """A new venv that sees the build env's torch (and pip) through a .pth file: torch is 5 GB, copying it proves
    nothing. Without a pip of its own, so the build env's (torch-compatible) setuptools is the one it sees."""
    venv.EnvBuilder(with_pip=False).create(dest)
    site = subprocess.run([str(torch_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          text=True, capture_output=True, check=True).stdout.strip()
    own = subprocess.run([str(dest / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         text=True, capture_output=True, check=True).stdout.strip()
    Path(own, "build-env-torch.pth").write_text(site + "\n")
    return dest / "bin" / "python"


def test_wheel_installs_with_pip_into_a_fresh_venv_and_imports(fixture_build: FixtureBuild, tmp_path: Path) -> None:
    wheel = fixture_build.wheel("3.11")
    torch_python = Path(toolchain.cache_dir(), "venvs", "cp311-torch2.14-cu130", "bin", "python")
    py = _fresh_venv_over(torch_python, tmp_path / "venv")
    install = subprocess.run([str(py), "-m", "pip", "install", "--no-index", str(wheel)], text=True,
                             capture_output=True)
    assert install.returncode == 0, install.stdout + install.stderr
    installed = install.stdout.split("Successfully installed")[-1].split()
    assert installed == ["fixture-attn-0.1.0+cu13torch2.14cxx11abitrue"]  # torch and its deps left as they were
    probe = ("import torch, fixture_attn, fixture_attn_cuda; "
             "print(fixture_attn.__version__, torch.__version__, fixture_attn_cuda.__file__)")
    out = subprocess.run([str(py), "-c", probe], text=True, capture_output=True)
    assert out.returncode == 0, out.stderr
    version, torch_version, module = out.stdout.split()
    assert (version, torch_version) == ("0.1.0", "2.14.1+cu130")
    assert str(tmp_path / "venv") in module


# ------------------------------------------------------------------------------ toolchain refusals


def _tc(**changes: object) -> toolchain.Toolchain:
    base = dict(python=Path("/venv/bin/python"), cuda_home=Path("/cuda"), torch_version="2.14.1+cu130",
                torch_cuda="13.0", cxx11abi=True, torch_lib=Path("/t"), nvcc_version="13.0", compiler="g++",
                compiler_version="g++ (Debian 12.2.0-14) 12.2.0", compiler_major=12)
    base.update(changes)
    return toolchain.Toolchain(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fixture_cell():
    config = load(ROOT / "build_matrix.toml")
    return config, select(expand(config), ["package=fixture-attn", "python=3.11"])[0]


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"nvcc_version": "12.8"}, ["CUDA mismatch", "nvcc", "12.8", "13.0"]),
        ({"cxx11abi": False}, ["ABI mismatch", "_GLIBCXX_USE_CXX11_ABI=0", "cxx11abiTRUE"]),
        ({"torch_version": "2.13.0+cu130"}, ["torch 2.13.0+cu130", "needs torch 2.14"]),
        ({"torch_cuda": None}, ["CPU-only"]),
        ({"compiler_version": "g++ (GCC) 16.1.0", "compiler_major": 16}, ["newer than CUDA 13.0 supports", "15"]),
    ],
    ids=["cuda-major", "abi", "torch-version", "cpu-torch", "compiler"],
)
def test_toolchain_mismatches_are_refused(fixture_cell, changes: dict, words: list[str]) -> None:
    config, cell = fixture_cell
    toolchain.check(config, cell, _tc())  # the matching toolchain passes
    with pytest.raises(BadInput) as err:
        toolchain.check(config, cell, _tc(**changes))
    assert err.value.exit_code == 2
    for word in words:
        assert word in str(err.value)


def test_build_refuses_an_interpreter_without_torch(tmp_path: Path) -> None:
    proc = run_wheelfarm("build", "--backend", "host", "--select", "package=fixture-attn", "python=3.11",
                         "--python", sys.executable,
                         "--cuda-home", str(tmp_path), "--work-dir", str(tmp_path / "w"),
                         "--wheelhouse", str(tmp_path / "wh"))
    assert proc.returncode == 2, proc.stderr
    assert "cannot import torch" in proc.stderr
    assert not (tmp_path / "wh").exists()


def test_build_refuses_a_cuda_home_without_nvcc(fixture_build: FixtureBuild, tmp_path: Path) -> None:
    torch_python = Path(toolchain.cache_dir(), "venvs", "cp311-torch2.14-cu130", "bin", "python")
    proc = run_wheelfarm("build", "--backend", "host", "--select", "package=fixture-attn", "python=3.11",
                         "--python", str(torch_python),
                         "--cuda-home", str(tmp_path), "--work-dir", str(tmp_path / "w"),
                         "--wheelhouse", str(tmp_path / "wh"))
    assert proc.returncode == 2, proc.stderr
    assert f"no nvcc at {tmp_path}/bin/nvcc" in " ".join(proc.stderr.split())


def test_a_two_digit_era_cell_refuses_another_minor_of_its_cuda() -> None:
    """flash-attn 2.6.3 names major.minor (cu126): a --cuda-home of 12.9 would build a wheel that lies."""
    config = load(ROOT / "build_matrix.toml")
    cell = select(expand(config), ["version=2.6.3", "platform=linux_x86_64"])[0]
    torch = f"{cell.torch}.0+cu{cell.cuda.replace('.', '')}"
    good = _tc(torch_version=torch, torch_cuda=cell.cuda, cxx11abi=cell.cxx11abi, nvcc_version=cell.cuda,
               compiler_version="g++ (GCC) 12.2.0", compiler_major=12)
    toolchain.check(config, cell, good)
    with pytest.raises(BadInput, match=r"names CUDA 12\.6 \(flash-attn 2\.6\.3's names carry major\.minor\)"):
        toolchain.check(config, cell, dataclasses.replace(good, nvcc_version="12.9"))
