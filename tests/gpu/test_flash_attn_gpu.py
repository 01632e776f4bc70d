"""flash-attn on a real GPU (skipped elsewhere, see conftest.py).

- ``test_installed_flash_attn``: the check script against the flash-attn importable in this Python, if any.
- ``test_gpu_test_on_wheel``: ``wheelfarm gpu-test`` end to end on ``$WHEELFARM_GPU_WHEEL`` (a built wheel),
  reusing this Python's torch, with ``$WHEELFARM_FIND_LINKS`` (os.pathsep-separated dirs with einops/pytest
  wheels) and, if ``$WHEELFARM_UPSTREAM_SDIST`` is set, the upstream test subset of build_matrix.toml.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wheelfarm import cli, gpu_checks


def test_probe_names_the_gpu(gpu):
    assert gpu.name and gpu.capability >= (8, 0)


def _failed(result: dict) -> list[str]:
    return [
        f"{c['name']}: {c.get('error') or c.get('worst')} err={c.get('max_err')} tol={c.get('tol')}"
        for c in result.get("cases", [])
        if not c.get("passed")
    ]


def test_installed_flash_attn(tmp_path):
    if importlib.util.find_spec("flash_attn") is None:
        pytest.skip(
            "flash_attn is not installed in this Python; set WHEELFARM_GPU_WHEEL to test a wheel file"
        )
    out = tmp_path / "checks.json"
    done = subprocess.run(
        [sys.executable, str(gpu_checks.script("flash_attn")), "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["passed"], "\n".join([result.get("error") or "", *_failed(result), done.stdout[-3000:]])


def test_gpu_test_on_wheel(tmp_path):
    wheel = os.environ.get("WHEELFARM_GPU_WHEEL")
    if not wheel:
        pytest.skip("set WHEELFARM_GPU_WHEEL=<path of a built flash-attn wheel> to test it end to end")
    out = tmp_path / "result.gpu.json"
    args = [
        "gpu-test",
        wheel,
        "--require-gpu",
        "--reuse-env",
        "--output",
        str(out),
        "--workdir",
        str(tmp_path),
    ]
    for links in filter(None, os.environ.get("WHEELFARM_FIND_LINKS", "").split(os.pathsep)):
        args += ["--find-links", links]
    if os.environ.get("WHEELFARM_UPSTREAM_SDIST"):
        args += ["--upstream-tests", os.environ["WHEELFARM_UPSTREAM_SDIST"]]
    code = cli.main(args)
    assert out.is_file(), f"gpu-test exited {code} without a result"
    result = json.loads(out.read_text())
    assert code == 0 and result["passed"], "\n".join([json.dumps(result.get("upstream")), *_failed(result)])
    assert Path(result["installed"]["file"]).is_relative_to(tmp_path)
