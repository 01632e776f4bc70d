"""Upstream wheel naming: flash-attn's release-asset convention, era by era.

    flash_attn-{version}+cu{X}torch{T}cxx11abi{TRUE|FALSE}-{cpXY}-{cpXY}-{platform}.whl

The eras are data (``FLASH_ATTN_ERAS``), read from upstream's setup.py ``get_wheel_url()`` and its publish
workflow's rename step at every tag; docs/naming-eras.md quotes the lines. Two rules are kept apart:

* ``cuda_tag``: how a wheel BUILT with a toolkit is named (publish workflow: ``awk`` on ``cuda-version``).
* ``setup_py_cuda_tag``: which CUDA tag that version's setup.py asks for, given ``torch.version.cuda``.

Pure naming: nothing here judges whether a combination can be built or installed (the matrix does that).
Packages other than flash-attn follow the newest era's rule: the CUDA major only.

A limited-API package (``abi3="cp39"``: FlashAttention-3, whose hopper/setup.py sets ``bdist_wheel
py_limited_api="cp39"``) gets what bdist_wheel names it, one wheel per torch/CUDA for every Python:

    flash_attn_3-{version}+cu{X}torch{T}cxx11abi{B}-cp39-abi3-{platform}.whl
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from packaging.specifiers import SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from .errors import BadInput

__all__ = [
    "FLASH_ATTN_ERAS",
    "GENERIC_ERA",
    "Era",
    "NamingError",
    "SetupRule",
    "WheelName",
    "cuda_tag",
    "era",
    "local_label",
    "parse_wheel_name",
    "python_tag",
    "setup_py_cuda_tag",
    "toolkit_for_cuda_tag",
    "torch_tag",
    "wheel_name",
    "wheel_version",
]


class NamingError(BadInput, ValueError):
    """A value that cannot be spelled in the convention (bad input: exit 2; also a ValueError)."""


@dataclass(frozen=True)
class SetupRule:
    """One branch of setup.py's ``get_wheel_url()``: the toolkit it assumes for a user's torch CUDA."""

    pin: str  # the CUDA version the requested name is spelled from, "12.3"
    cuda_major: int | None = None  # applies to torch.version.cuda of this major (None: any)
    torch: str | None = None  # applies to this torch major.minor only (None: any)


@dataclass(frozen=True)
class Era:
    """A range of package versions that share one naming rule."""

    versions: SpecifierSet
    cuda_digits: Literal[1, 2]  # 2: cu{major}{minor} ("cu123"); 1: cu{major} ("cu12")
    setup_rules: tuple[SetupRule, ...]  # first match wins; no match: torch.version.cuda as it is
    source: str  # where upstream states the rule


_PIN_11_8 = SetupRule("11.8", cuda_major=11)

FLASH_ATTN_ERAS: tuple[Era, ...] = (
    Era(SpecifierSet(">=2.0.6,<2.2.3.post2"), 2, (),
        "setup.py CachedWheelsCommand / get_wheel_url: cu{major}{minor} of torch.version.cuda"),
    Era(SpecifierSet(">=2.2.3.post2,<2.3.1.post1"), 2, (SetupRule("12.2", torch="2.1"),),
        "setup.py: torch 2.1 -> CUDA 12.2 (nvcc 12.1 segfaults), whatever torch's CUDA"),
    Era(SpecifierSet(">=2.3.1.post1,<2.3.6"), 2, (SetupRule("12.2", cuda_major=12, torch="2.1"),),
        "setup.py: torch 2.1 with CUDA 12 -> 12.2"),
    Era(SpecifierSet(">=2.3.6,<2.6.1"), 2, (_PIN_11_8, SetupRule("12.2")),
        "setup.py: CUDA 11 -> 11.8, else 12.2; publish.yml builds 11.8.0 and 12.2.x"),
    Era(SpecifierSet(">=2.6.1,<2.7.0"), 2, (_PIN_11_8, SetupRule("12.3")),
        "setup.py: CUDA 11 -> 11.8, else 12.3; publish.yml builds 11.8.0 and 12.3.2"),
    Era(SpecifierSet(">=2.7.0,<2.8.3.post1"), 1, (_PIN_11_8, SetupRule("12.3")),
        "setup.py: cu{major}, CUDA 11 -> 11, else 12; publish.yml WHEEL_CUDA_VERSION = major"),
    Era(SpecifierSet(">=2.8.3.post1"), 1, (_PIN_11_8, SetupRule("12.3", cuda_major=12), SetupRule("13.0")),
        "setup.py: cu{major}, CUDA 11 -> 11, 12 -> 12, else 13"),
)

GENERIC_ERA = Era(SpecifierSet(), 1, (), "packages other than flash-attn: the newest era's rule, CUDA major")

_FLASH_ATTN = "flash-attn"
_VARIANT = re.compile(r"[a-z0-9]+(?:\.[a-z0-9]+)*")
_PLATFORM = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)*")
_CP_TAG = re.compile(r"cp(\d)(\d+)")
ABI3 = "abi3"
_CUDA_TAG = re.compile(r"cu(\d{2})(\d*)")
_LABEL = re.compile(
    r"(?P<cuda>cu\d+)torch(?P<torch>\d+\.\d+)cxx11abi(?P<abi>true|false)(?:\.(?P<variant>.+))?", re.IGNORECASE
)


def _version(value: str, what: str) -> Version:
    try:
        return Version(value)
    except InvalidVersion:
        raise NamingError(f"{what} {value!r} is not a version") from None


def _release(value: str, what: str, parts: int) -> tuple[int, ...]:
    release = _version(value, what).release
    if len(release) < parts:
        spelled = "X.Y" if parts == 2 else "X"
        raise NamingError(f"{what} {value!r} needs at least {spelled}")
    return release


def era(package: str, version: str) -> Era:
    """The naming era of ``package`` ``version`` (flash-attn by table, anything else: ``GENERIC_ERA``)."""
    if canonicalize_name(package) != _FLASH_ATTN:
        return GENERIC_ERA
    parsed = _version(version, f"{package} version")
    for candidate in FLASH_ATTN_ERAS:
        if candidate.versions.contains(parsed, prereleases=True):
            return candidate
    raise NamingError(f"flash-attn {version} predates upstream's prebuilt-wheel convention (starts at 2.0.6)")


def python_tag(python: str) -> str:
    """"3.12", "3.12.1" or "cp312" -> "cp312"."""
    if _CP_TAG.fullmatch(python):
        return python
    major, minor = _release(python, "python", 2)[:2]
    return f"cp{major}{minor}"


def _abi_tag(py_tag: str) -> str:
    """CPython < 3.8 has the pymalloc ABI suffix: upstream's cp37 wheels are ``cp37-cp37m``."""
    match = _CP_TAG.fullmatch(py_tag)
    assert match is not None
    return f"{py_tag}m" if (int(match[1]), int(match[2])) < (3, 8) else py_tag


def torch_tag(torch: str) -> str:
    """"2.4.1", "2.4", "2.6.0.dev20241001" or "2.4.0+cu121" -> "2.4"."""
    major, minor = _release(torch, "torch", 2)[:2]
    return f"{major}.{minor}"


def _spell_cuda(release: tuple[int, ...], digits: Literal[1, 2]) -> str:
    return f"cu{release[0]}" if digits == 1 else f"cu{release[0]}{release[1]}"


def cuda_tag(package: str, version: str, cuda: str) -> str:
    """The CUDA tag of a wheel built with toolkit ``cuda``: "12.3" -> "cu123" (2.6.3), "cu12" (2.7 on)."""
    digits = era(package, version).cuda_digits
    if cuda.lower().startswith("cu"):
        raise NamingError(f"cuda {cuda!r}: give the toolkit version (12.4 or 12.4.1), not a tag")
    return _spell_cuda(_release(cuda, "cuda", digits), digits)


def _applies(rule: SetupRule, cuda_major: int, torch: str | None) -> bool:
    if rule.cuda_major is not None and rule.cuda_major != cuda_major:
        return False
    return rule.torch is None or (torch is not None and torch_tag(torch) == rule.torch)


def setup_py_cuda_tag(package: str, version: str, torch_cuda: str, torch: str | None = None) -> str:
    """The CUDA tag that version's setup.py requests when the user's ``torch.version.cuda`` is ``torch_cuda``.

    ``torch`` is needed only in the eras whose setup.py special-cases torch 2.1 (2.2.3.post2 up to 2.3.5).
    """
    rules = era(package, version)
    cuda = _release(torch_cuda, "torch CUDA", 1)
    if torch is None and any(rule.torch for rule in rules.setup_rules):
        raise NamingError(f"{package} {version}'s setup.py depends on the torch version: pass torch")
    pin = next((rule.pin for rule in rules.setup_rules if _applies(rule, cuda[0], torch)), None)
    release = _release(pin, "pin", 2) if pin else _release(torch_cuda, "torch CUDA", rules.cuda_digits)
    return _spell_cuda(release, rules.cuda_digits)


def toolkit_for_cuda_tag(tag: str) -> str:
    """A toolkit version that the tag names: "cu118" -> "11.8", "cu12" -> "12"."""
    match = _CUDA_TAG.fullmatch(tag)
    if not match:
        raise NamingError(f"{tag!r} is not a CUDA tag like cu12 or cu118")
    return f"{match[1]}.{match[2]}" if match[2] else match[1]


def _check_variant(variant: str) -> None:
    if variant and not _VARIANT.fullmatch(variant):
        raise NamingError(f"variant {variant!r}: use lower-case letters and digits, dot-separated (sm90)")


def local_label(package: str, version: str, torch: str, cuda: str, cxx11abi: bool, variant: str = "") -> str:
    """"cu12torch2.8cxx11abiTRUE", with ".<variant>" appended for a variant: a PEP 440 local label."""
    if not isinstance(cxx11abi, bool):
        raise TypeError(f"cxx11abi must be a bool, not {cxx11abi!r}")
    _check_variant(variant)
    label = f"{cuda_tag(package, version, cuda)}torch{torch_tag(torch)}cxx11abi{str(cxx11abi).upper()}"
    label = f"{label}.{variant}" if variant else label
    _version(f"0+{label}", "local label")
    return label


def _public(version: str) -> str:
    parsed = _version(version, "version")
    if parsed.local is not None:
        raise NamingError(f"version {version!r} already has a local label; give the public version")
    return str(parsed)


def wheel_version(
    package: str, version: str, torch: str, cuda: str, cxx11abi: bool, variant: str = ""
) -> str:
    """The version the wheel's METADATA must carry: "2.8.3.post2+cu12torch2.8cxx11abiTRUE"."""
    return f"{_public(version)}+{local_label(package, version, torch, cuda, cxx11abi, variant)}"


def wheel_name(
    package: str,
    version: str,
    torch: str,
    cuda: str,
    python: str,
    cxx11abi: bool,
    platform: str = "linux_x86_64",
    variant: str = "",
    abi3: str = "",
) -> str:
    """The upstream file name, e.g. flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl.

    ``abi3``: the limited API's Python tag ("cp39"); the name is then ``…-cp39-abi3-…`` whatever ``python``
    built it, as bdist_wheel's ``py_limited_api`` names it.
    """
    if not _PLATFORM.fullmatch(platform):
        raise NamingError(f"platform {platform!r} is not a wheel platform tag like linux_x86_64")
    if abi3 and not _CP_TAG.fullmatch(abi3):
        raise NamingError(f"abi3 {abi3!r}: give the limited API's Python tag, like cp39")
    dist = canonicalize_name(package).replace("-", "_")
    full = wheel_version(package, version, torch, cuda, cxx11abi, variant)
    if abi3:
        return f"{dist}-{full}-{abi3}-{ABI3}-{platform}.whl"
    py = python_tag(python)
    return f"{dist}-{full}-{py}-{_abi_tag(py)}-{platform}.whl"


@dataclass(frozen=True)
class WheelName:
    """The fields of a file name in the convention."""

    package: str  # canonical project name, "flash-attn"
    version: str  # public version, "2.8.3.post2"
    torch: str  # "2.8"
    cuda_tag: str  # "cu12"
    cxx11abi: bool
    variant: str  # "" for a standard wheel
    python_tag: str  # "cp312"; for an abi3 wheel the oldest Python it serves, "cp39"
    platform: str  # "linux_x86_64"
    abi3: bool = False  # a limited-API wheel: every CPython from python_tag on

    @property
    def toolkit(self) -> str:
        """A CUDA toolkit version that ``wheel_name`` spells as this ``cuda_tag``."""
        return toolkit_for_cuda_tag(self.cuda_tag)


def parse_wheel_name(filename: str) -> WheelName:
    """Split a file name of the convention into its fields; ValueError (NamingError) if it is not one."""
    try:
        name, version, build, _tags = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise NamingError(f"{filename!r} is not a wheel file name: {exc}") from None
    parts = filename[: -len(".whl")].split("-")
    label = _LABEL.fullmatch(version.local or "")
    if build or len(parts) != 5 or label is None:
        shape = "<dist>-<version>+cu<X>torch<T>cxx11abi<B>-<py>-<abi>-<platform>.whl"
        raise NamingError(f"{filename!r} is not {shape}")
    py, abi, platform = parts[2:]
    if not _CP_TAG.fullmatch(py) or abi not in (_abi_tag(py), ABI3):
        raise NamingError(f"{filename!r}: expected a CPython tag pair like cp312-cp312 or cp39-abi3, "
                          f"got {py}-{abi}")
    variant = (label["variant"] or "").lower()
    _check_variant(variant)
    return WheelName(
        package=name,
        version=version.public,
        torch=label["torch"],
        cuda_tag=label["cuda"].lower(),
        cxx11abi=label["abi"].lower() == "true",
        variant=variant,
        python_tag=py,
        platform=platform,
        abi3=abi == ABI3,
    )
