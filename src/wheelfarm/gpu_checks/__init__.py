"""Standalone GPU check scripts, run by the *test* environment's Python (not by wheelfarm's).

Each ``<name>_checks.py`` needs only torch and the installed wheel: ``wheelfarm gpu-test`` runs it as
``<venv>/bin/python <file> --out result.json`` and reads the JSON it writes. ``upstream_conftest.py`` is
copied next to a package's own test file as ``conftest.py`` when a subset of upstream's tests runs.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def script(checks: str) -> Path:
    """The check script for ``checks`` (e.g. ``"flash_attn"`` → ``flash_attn_checks.py``)."""
    return HERE / f"{checks}_checks.py"


def available() -> list[str]:
    return sorted(p.name[: -len("_checks.py")] for p in HERE.glob("*_checks.py"))


UPSTREAM_CONFTEST = HERE / "upstream_conftest.py"
