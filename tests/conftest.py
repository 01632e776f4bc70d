"""Shared fixtures: one real build of the CI fixture package per test session (helpers live in farmtest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farmtest import FIXTURE_SELECT, FixtureBuild, _nvcc_toolchain_available, need, run_wheelfarm

# tests/fixture holds the fixture package, whose own GPU test file gpu-test runs on GPU runners: not this suite's.
collect_ignore = ["fixture"]


@pytest.fixture(scope="session")
def fixture_build(tmp_path_factory: pytest.TempPathFactory) -> FixtureBuild:
    """Both fixture cells of the dev-host group (cp311, then cp312 sharing its .cu objects), built once on the
    host backend (said explicitly: the default, auto, would take the container where podman and the test image are;
    tests/test_container_build.py builds the same group there)."""
    need(_nvcc_toolchain_available(), "the fixture build needs linux x86_64 (CUDA 13 wheels from PyPI)")
    base = tmp_path_factory.mktemp("fixture-build")
    work, wheelhouse, report = base / "work", base / "wheelhouse", base / "build.json"
    proc = run_wheelfarm("build", "--backend", "host", "--select", *FIXTURE_SELECT, "--work-dir", str(work),
                         "--wheelhouse", str(wheelhouse), "--json", str(report))
    if proc.returncode != 0 or not report.exists():
        pytest.fail(f"fixture build failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return FixtureBuild(work, wheelhouse, json.loads(report.read_text()))


@pytest.fixture(scope="session")
def fixture_wheel(fixture_build: FixtureBuild) -> Path:
    """The cp311 fixture wheel (torch 2.14.1 / CUDA 13.0 / ABI TRUE / sm80+sm90), audited by the build."""
    return fixture_build.wheel("3.11")
