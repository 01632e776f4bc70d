"""GPU names and compute capabilities as people write them: ``sm90``, ``sm_90a``, ``9.0``, ``sm100``, ``sm121``,
``H100``, ``RTX 4090``, ``Tesla T4`` -> ``(major, minor)``. Names come from ``data/gpus.toml``."""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

from .errors import BadInput

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_SM = re.compile(r"^(?:sm|compute)?_?(\d{2,3})[af]?$")  # the last digit is the minor: sm90, sm100, sm121
_DOTTED = re.compile(r"^(\d{1,2})\.(\d)$")
_PREFIXES = ("nvidia", "tesla", "geforce", "quadro")


@functools.cache
def _table() -> dict[str, dict[str, str]]:
    return tomllib.loads(Path(__file__).with_name("data").joinpath("gpus.toml").read_text())


@functools.cache
def known() -> dict[str, tuple[int, int]]:
    return {_key(name): _dotted(value) for name, value in _table()["capability"].items()}


def min_cuda(gpu: tuple[int, int]) -> str | None:
    """The oldest CUDA whose builds run on this compute capability (``[min-cuda]``); None: not in the table."""
    return _table()["min-cuda"].get(f"{gpu[0]}.{gpu[1]}")


def sm(gpu: tuple[int, int]) -> str:
    return f"sm{gpu[0]}{gpu[1]}"


def _key(name: str) -> str:
    key = re.sub(r"[\s_-]+", "", name.lower())
    for prefix in _PREFIXES:
        key = key.removeprefix(prefix)
    return key


def _dotted(value: str) -> tuple[int, int]:
    m = _DOTTED.match(value)
    assert m, value
    return int(m[1]), int(m[2])


def capability(value: str) -> tuple[int, int]:
    """``(major, minor)`` of a GPU given as smXY[Z], X.Y or a card name; BadInput otherwise."""
    text = value.strip().lower()
    if m := _SM.match(text):
        digits = m[1]
        return int(digits[:-1]), int(digits[-1])
    if m := _DOTTED.match(text):
        return int(m[1]), int(m[2])
    if (cap := known().get(_key(text))) is not None:
        return cap
    # As nvidia-smi and torch print them: "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB": the longest known
    # name the card's name starts with (A100 before A10).
    key = _key(text)
    prefixes = [name for name in known() if key.startswith(name)]
    if prefixes:
        return known()[max(prefixes, key=len)]
    raise BadInput(f"--gpu {value!r}: not a compute capability (sm90, sm_120, 8.6) nor a known GPU name",
                   hint=f"known names: {', '.join(sorted(known()))} (src/wheelfarm/data/gpus.toml)")
