"""Shared test helpers (imported as ``farmtest``; conftest.py holds the fixtures).

One real build of the CI fixture package (tests/fixture/fixture-attn) per test session.

The build is the real thing — `wheelfarm build` on the host backend: the pinned, deterministically packed sdist, the
C++-standard patch, torch 2.14.1 in a managed venv, CUDA 13.0 assembled from PyPI nvidia-* wheels, nvcc compiling
real kernels for sm80 and sm90 — so the tests that use it cost minutes once, then nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI") == "true"
FIXTURE_SELECT = ["package=fixture-attn", "torch=2.14", "cuda=13.0", "cxx11abi=TRUE"]
FA_VERSION = "2.8.3.post2"
FA_SHA256 = "d0f9f0b08a986cdeadbffcf5ec8b3a8f514366c68ad1853d3ab061bc83cc340b"


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


def need(ok: object, reason: str) -> None:
    """A prerequisite: skip without it, except under CI=true, where .ci/run installs it, so its absence is a
    failure of the CI script (a skip would hide that the test never ran). GPU tests don't use this."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"CI=true and a prerequisite .ci/run provides is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def torch_python() -> Path:
    """An interpreter with a CUDA torch: $WHEELFARM_TORCH_PYTHON, this one if it has torch, else the fixture cell's
    managed build env (the venv the fixture build uses; made here if missing, ~2 minutes, cached)."""
    import importlib.util

    if os.environ.get("WHEELFARM_TORCH_PYTHON"):
        return Path(os.environ["WHEELFARM_TORCH_PYTHON"])
    if importlib.util.find_spec("torch"):
        return Path(sys.executable)
    need(_nvcc_toolchain_available(), "torch 2.14's CUDA wheels need linux x86_64")
    from wheelfarm import toolchain
    from wheelfarm.config import load
    from wheelfarm.matrix import expand, select

    config = load(ROOT / "build_matrix.toml")
    (cell,) = select(expand(config), [*FIXTURE_SELECT, "python=3.11"])
    return toolchain.ensure_build_env(config, cell)


def _nvcc_toolchain_available() -> bool:
    return sys.platform == "linux" and os.uname().machine == "x86_64"


def flash_attn_sdist(tmp_path: Path) -> Path:
    """The pinned flash-attn sdist: from the repo's cache, else downloaded from PyPI, else skip (fail in CI)."""
    from wheelfarm import source

    for cache in (ROOT / ".wheelfarm" / "cache" / "sdists", ROOT / ".wheelfarm" / "sdists"):
        candidate = cache / source.sdist_filename("flash-attn", FA_VERSION)
        if candidate.is_file() and source.file_sha256(candidate) == FA_SHA256:
            return candidate
    try:
        return source.fetch_sdist("flash-attn", FA_VERSION, FA_SHA256, tmp_path / "cache")
    except Exception as exc:  # offline: nothing to test against
        need(False, f"flash-attn {FA_VERSION} sdist not cached under .wheelfarm/cache/sdists and not "
                    f"downloadable ({exc})")
        raise
