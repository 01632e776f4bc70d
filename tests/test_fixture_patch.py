"""The fixture's cxx-std patch against the torch of this interpreter: one translation unit, syntax only.

Unpatched, fixture-attn's setup.py passes -std=c++17 (as flash-attn 2.8.3.post2 does), and torch >= 2.14's
headers stop with "#error C++20 or later compatible compiler is required"; patched, binding.cpp (the one
file that includes ATen/ATen.h and Python.h) compiles. The -std flag is read from the real setup.py (run with
setuptools.setup stubbed and a stand-in nvcc), so the test follows the patch rather than restating it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from packaging.version import Version

from farmtest import need, torch_python
from wheelfarm import source

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixture" / "fixture-attn"
PATCHES = REPO / "patches" / "fixture-attn" / "0.1.0"
CXX20_ERROR = "C++20 or later compatible compiler is required"

TORCH_FACTS = textwrap.dedent("""
    import json, pathlib, torch
    from torch.utils import cpp_extension
    print("FACTS=" + json.dumps({"version": torch.__version__, "include": cpp_extension.include_paths(),
                                  "site": str(pathlib.Path(torch.__file__).resolve().parent.parent)}))
""")

FLAGS_PROBE = textwrap.dedent("""
    import json, runpy, sys
    import setuptools
    captured = {}
    setuptools.setup = lambda **kw: captured.update(kw)
    sys.argv = ["setup.py", "--name"]
    runpy.run_path("setup.py", run_name="__main__")
    ext = captured["ext_modules"][0]
    print("FLAGS=" + json.dumps(ext.extra_compile_args))
""")


@pytest.fixture(scope="module")
def torch_py() -> Path:
    return torch_python()


@pytest.fixture(scope="module")
def torch_facts(torch_py: Path) -> dict:
    out = subprocess.run([str(torch_py), "-c", TORCH_FACTS], capture_output=True, text=True, timeout=300)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("FACTS=")), None)
    assert line, f"{torch_py} cannot report its torch:\n{out.stderr[-2000:]}"
    facts: dict = json.loads(line[len("FACTS="):])
    return facts


def aten_requires_cxx20(facts: dict) -> bool:
    header = Path(facts["include"][0]) / "ATen" / "ATen.h"
    guard = re.search(r"__cplusplus\s*<\s*(\d+)L", header.read_text())
    return guard is not None and int(guard.group(1)) >= 202002


def cuda_include(facts: dict) -> Path | None:
    """A folder with cuda_runtime_api.h: CUDA_HOME, /usr/local/cuda, or torch's nvidia-* wheels."""
    candidates = [Path(os.environ["CUDA_HOME"]) / "include"] if os.environ.get("CUDA_HOME") else []
    candidates.append(Path("/usr/local/cuda/include"))
    site = Path(facts["site"])
    candidates += sorted(site.glob("nvidia/cu*/include")) + sorted(site.glob("nvidia/cuda_runtime/include"))
    return next((c for c in candidates if (c / "cuda_runtime_api.h").is_file()), None)


@pytest.fixture(scope="module")
def compiler() -> str:
    cxx = os.environ.get("CXX", "c++")
    need(shutil.which(cxx), f"no C++ compiler ({cxx})")
    return cxx


@pytest.fixture(scope="module")
def includes(torch_facts: dict, torch_py: Path) -> list[str]:
    cuda = cuda_include(torch_facts)
    need(cuda, "no cuda_runtime_api.h (set CUDA_HOME)")
    python_include = subprocess.run([str(torch_py), "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"],
                                    capture_output=True, text=True, check=True).stdout.strip()
    dirs = [*torch_facts["include"], str(cuda), python_include]
    return [f"-I{d}" for d in dirs]


def fixture_copy(tmp_path: Path, *, patched: bool) -> Path:
    tree = tmp_path / ("patched" if patched else "pristine")
    junk = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")
    shutil.copytree(FIXTURE, tree, ignore=junk)
    if patched:
        assert [p.name for p in source.apply_patches(tree, PATCHES)] == ["0001-cxx-std-from-torch.patch"]
    return tree


def setup_flags(tree: Path, tmp_path: Path, torch_py: Path) -> dict[str, list[str]]:
    """extra_compile_args of the fixture's CUDAExtension, as its setup.py computes them here."""
    fake_cuda = tmp_path / "fake-cuda"
    (fake_cuda / "bin").mkdir(parents=True, exist_ok=True)
    nvcc = fake_cuda / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    nvcc.chmod(0o755)
    env = {**os.environ, "CUDA_HOME": str(fake_cuda), "FIXTURE_ATTN_CUDA_ARCHS": "90"}
    env.pop("FIXTURE_ATTN_SKIP_CUDA_BUILD", None)
    result = subprocess.run([str(torch_py), "-c", FLAGS_PROBE], cwd=tree, env=env, capture_output=True,
                            text=True, timeout=300)
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("FLAGS=")), None)
    assert line, f"setup.py probe failed:\n{result.stdout}\n{result.stderr}"
    flags: dict[str, list[str]] = json.loads(line[len("FLAGS="):])
    return flags


def compile_binding(compiler: str, includes: list[str], tree: Path, cxx_flags: list[str],
                    *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [compiler, "-fsyntax-only", *extra, *includes, f"-I{tree / 'csrc'}",
           "-DTORCH_EXTENSION_NAME=fixture_attn_cuda", "-DTORCH_API_INCLUDE_EXTENSION_H",
           *cxx_flags, str(tree / "csrc" / "binding.cpp")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_unpatched_fixture_fails_with_the_cxx20_error(tmp_path: Path, compiler: str, includes: list[str],
                                                       torch_facts: dict, torch_py: Path) -> None:
    if not aten_requires_cxx20(torch_facts):  # not a missing prerequisite: a property of the torch at hand
        pytest.skip(f"torch {torch_facts['version']} headers still accept C++17 (the #error arrives in 2.14)")
    tree = fixture_copy(tmp_path, patched=False)
    flags = setup_flags(tree, tmp_path, torch_py)
    assert "-std=c++17" in flags["cxx"] and "-std=c++17" in flags["nvcc"]
    result = compile_binding(compiler, includes, tree, flags["cxx"], "-Wfatal-errors")  # stop at the #error
    assert result.returncode != 0
    assert CXX20_ERROR in result.stderr, result.stderr[-2000:]


def test_patched_fixture_compiles(tmp_path: Path, compiler: str, includes: list[str], torch_facts: dict,
                                  torch_py: Path) -> None:
    tree = fixture_copy(tmp_path, patched=True)
    flags = setup_flags(tree, tmp_path, torch_py)
    cxx20 = Version(torch_facts["version"]).release >= (2, 13) or aten_requires_cxx20(torch_facts)
    want = "-std=c++20" if cxx20 else "-std=c++17"
    assert want in flags["cxx"] and want in flags["nvcc"]
    result = compile_binding(compiler, includes, tree, flags["cxx"])
    assert result.returncode == 0, result.stderr[-4000:]
    assert CXX20_ERROR not in result.stderr
