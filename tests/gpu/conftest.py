"""tests/gpu runs on GPU runners only: every test here is marked ``gpu`` and, without a usable NVIDIA GPU
(nvidia-smi, else torch.cuda in this Python), skipped with the reason."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest

from wheelfarm import gputest

HERE = Path(__file__).resolve().parent


@functools.cache
def _gpu() -> gputest.Gpu | None:
    return gputest.probe_gpu(sys.executable)


def _skip_reason() -> str | None:
    gpu = _gpu()
    if gpu is None:
        return "no CUDA GPU found (nvidia-smi, torch.cuda): tests/gpu runs on GPU runners"
    rules = gputest.BUILTIN_RULES["flash-attn"]
    if rules.min_capability and gpu.capability < rules.min_capability:
        return f"unsupported GPU: {rules.needs}; found {gpu.name} ({gpu.sm})"
    return None


def pytest_collection_modifyitems(config, items):
    mine = [item for item in items if HERE in Path(item.path).resolve().parents]
    if not mine:
        return
    reason = _skip_reason()
    for item in mine:
        item.add_marker(pytest.mark.gpu)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def gpu() -> gputest.Gpu:
    found = _gpu()
    assert found is not None
    return found
