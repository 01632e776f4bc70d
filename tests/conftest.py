"""Shared fixtures: one real build of the CI fixture package (tests/fixture/fixture-attn) per test session.

The build is the real thing — `wheelfarm build` on the host backend: the pinned, deterministically packed sdist, the
C++-standard patch, torch 2.14.1 in a managed venv, CUDA 13.0 assembled from PyPI nvidia-* wheels, nvcc compiling
real kernels for sm80 and sm90 — so the tests that use it cost minutes once, then nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_SELECT = ["package=fixture-attn", "torch=2.14", "cuda=13.0", "cxx11abi=TRUE"]


@dataclass(frozen=True)
class FixtureBuild:
    work_dir: Path
    wheelhouse: Path
    results: list[dict]

    def result(self, python: str) -> dict:
        return next(r for r in self.results if r["cell"]["python"] == python)

    def wheel(self, python: str) -> Path:
        return Path(self.result(python)["wheel"])


def run_wheelfarm(*args: str, env: dict[str, str] | None = None, check: bool = False,
                  timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """The CLI as users run it: a real subprocess, from the repository root."""
    return subprocess.run([sys.executable, "-m", "wheelfarm", *args], cwd=ROOT, text=True, capture_output=True,
                          env={**os.environ, **(env or {})}, check=check, timeout=timeout)


def _nvcc_toolchain_available() -> bool:
    return sys.platform == "linux" and os.uname().machine == "x86_64"


@pytest.fixture(scope="session")
def fixture_build(tmp_path_factory: pytest.TempPathFactory) -> FixtureBuild:
    """Both fixture cells of the dev-host group (cp311, then cp312 sharing its .cu objects), built once."""
    if not _nvcc_toolchain_available():
        pytest.skip("the fixture build needs linux x86_64 (CUDA 13 wheels from PyPI)")
    base = tmp_path_factory.mktemp("fixture-build")
    work, wheelhouse, report = base / "work", base / "wheelhouse", base / "build.json"
    proc = run_wheelfarm("build", "--select", *FIXTURE_SELECT, "--work-dir", str(work), "--wheelhouse",
                         str(wheelhouse), "--json", str(report))
    if proc.returncode != 0 or not report.exists():
        pytest.fail(f"fixture build failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return FixtureBuild(work, wheelhouse, json.loads(report.read_text()))


@pytest.fixture(scope="session")
def fixture_wheel(fixture_build: FixtureBuild) -> Path:
    """The cp311 fixture wheel (torch 2.14.1 / CUDA 13.0 / ABI TRUE / sm80+sm90), audited by the build."""
    return fixture_build.wheel("3.11")
