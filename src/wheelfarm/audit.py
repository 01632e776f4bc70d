"""Audit a wheel: its name must equal its contents, or no user ever sees it.

Each check is a small function returning a ``Check``; ``audit_wheel`` runs them all over one unpacked wheel
and returns a frozen ``AuditReport`` (written as ``<wheel>.audit.json``, schema in docs/audit.md).
Delegated: the glibc floor and manylinux policy to auditwheel, GPU code listing to cuobjdump, versions to
packaging. Added here: the C++ ABI, the symbols the wheel needs from torch, SASS archs, METADATA agreement.
"""

from __future__ import annotations

import base64
import csv
import email.parser
import fnmatch
import hashlib
import io
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from . import abi3, cuda_archs, elf, proc
from .errors import BadInput, BuildFailed
from .hashing import sha256_file

SCHEMA = 1

# Libraries a torch extension may need at run time without vendoring them: torch's own and CUDA's (the user's
# torch and its nvidia-* wheels bring them). Shared with ``repair`` (``auditwheel repair --exclude``).
EXPECTED_EXTERNALS: tuple[str, ...] = (
    "libtorch*.so*",
    "libc10*.so*",
    "libshm*.so*",
    "libcaffe2_*.so*",
    "libcudart.so*",
    "libcuda.so*",
    "libnvidia-ml.so*",
    "libcublas*.so*",
    "libcudnn*.so*",
    "libnvrtc*.so*",
    "libnccl*.so*",
    "libcufft*.so*",
    "libcurand*.so*",
    "libcusolver*.so*",
    "libcusparse*.so*",
    "libnvJitLink*.so*",
    "libnvToolsExt*.so*",
    "libcupti*.so*",
    "libnvshmem*.so*",
    "libcufile*.so*",
)

# A torch symbol: a nested name in c10::, at::, torch:: or caffe2:: (also as a template argument, e.g.
# pybind11's type_caster<at::Tensor>, which libtorch_python defines), or torch's THP* Python glue.
_TORCH_SYMBOL = re.compile(r"N[rVKRO]*(?:3c10|2at|5torch|6caffe2)(?=\d|I|E|[CD]\d)|^_Z\d+THP|^THP")
_NEW_ABI_MARKS = ("__cxx11", "B5cxx11")
_MANGLE_SKIP = re.compile(r"S[0-9A-Z]*_|[TA]\d*_|Dv\d+_|L[a-z]\w*?E")
_SYMBOL_VERSION = re.compile(r"^(GLIBC|GLIBCXX|CXXABI)_(\d+(?:\.\d+)*)$")
_GLIBC_TAG = re.compile(r"^manylinux_(\d+)_(\d+)_(.+)$")
_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_PLATFORM_ARCH = re.compile(r"^(?:(?:manylinux|musllinux)_\d+_\d+|linux)_(.+)$")
_FAILED_GLIBC_HINT = "Ubuntu 22.04 has 2.35, Debian 12 2.36, RHEL 9 2.34, Ubuntu 20.04 2.31"


# ------------------------------------------------------------ results


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    impact: str = ""  # what a user of the wheel meets if this check failed
    skipped: bool = False  # not run (nothing to compare with); counts as passed


@dataclass(frozen=True)
class Declared:
    """What the wheel claims to be: from its file name (naming convention) and/or the build cell / flags."""

    package: str | None = None
    version: str | None = None  # the file name's version, local label included
    torch: str | None = None  # "2.14"
    cuda: str | None = None  # CUDA tag, "cu13"
    cxx11abi: bool | None = None
    archs: tuple[str, ...] | None = None  # ("80", "90")
    python_tag: str | None = None  # "cp311"
    platform: str | None = None  # "linux_x86_64" or "manylinux_2_28_x86_64"
    max_glibc: str | None = None  # the highest glibc the wheel may need ("2.28" for the manylinux_2_28 image)
    abi3: bool | None = None  # a limited-API wheel (…-cp39-abi3-…): one file for every Python from python_tag on

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["archs"] = list(self.archs) if self.archs is not None else None
        return data


@dataclass(frozen=True)
class GlibcFloor:
    max_glibc: str | None
    max_glibcxx: str | None
    max_cxxabi: str | None
    manylinux: str  # best platform tag with torch/CUDA libraries as expected externals; linux_<arch> if none
    unexpected_libs: tuple[str, ...] = ()  # external libraries no policy allows (repair must vendor them)

    def to_json(self) -> dict[str, Any]:
        return {
            "max_glibc": self.max_glibc,
            "max_glibcxx": self.max_glibcxx,
            "max_cxxabi": self.max_cxxabi,
            "manylinux": self.manylinux,
            "unexpected_libs": list(self.unexpected_libs),
        }


@dataclass(frozen=True)
class AuditReport:
    wheel: Path
    sha256: str
    declared: Declared
    abi: str  # "TRUE" | "FALSE" | "mixed" | "unknown"
    sass: tuple[str, ...]
    ptx: tuple[str, ...]
    glibc: GlibcFloor | None
    checks: tuple[Check, ...]
    tools: Mapping[str, str] = field(default_factory=dict)
    torch: str | None = None  # version of the torch the symbols were checked against

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    @property
    def json_path(self) -> Path:
        return audit_json_path(self.wheel)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "wheel": self.wheel.name,
            "sha256": self.sha256,
            "passed": self.passed,
            "declared": self.declared.to_json(),
            "abi": self.abi,
            "archs": {"sass": list(self.sass), "ptx": list(self.ptx)},
            "glibc": self.glibc.to_json() if self.glibc else None,
            "torch": self.torch,
            "checks": [
                {
                    "name": c.name,
                    "passed": c.passed,
                    "skipped": c.skipped,
                    "detail": c.detail,
                    "impact": c.impact,
                }
                for c in self.checks
            ],
            "tools": dict(self.tools),
        }

    def write(self) -> Path:
        path = self.json_path
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def audit_json_path(wheel: Path) -> Path:
    return wheel.with_name(wheel.name + ".audit.json")


# ------------------------------------------------------------ declared


def declared_from_name(filename: str) -> Declared:
    """All the file name says: package, version, python, platform; torch/CUDA/ABI when in the convention."""
    try:
        name, _version, _build, tags = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise BadInput(f"{filename}: not a wheel file name ({exc})") from None
    # Several platform tags (manylinux2014_x86_64.manylinux_2_17_x86_64): the oldest glibc is the promise.
    tag = min(tags, key=lambda t: (_tag_glibc(t.platform) or (99, 99), str(t)))
    spelled = filename.split("-")[1]  # as the file name spells it (packaging lower-cases the local label)
    base = Declared(package=str(name), version=spelled, python_tag=tag.interpreter, platform=tag.platform,
                    abi3=tag.abi == "abi3")
    try:
        from . import naming

        parsed = naming.parse_wheel_name(filename)
    except (ImportError, ValueError):
        return base
    return replace(base, torch=parsed.torch, cuda=parsed.cuda_tag, cxx11abi=parsed.cxx11abi)


def resolve_declared(filename: str, given: Declared | None) -> Declared:
    """The file name's claims completed by ``given``; a value contradicting the name is bad input."""
    merged: dict[str, Any] = asdict(declared_from_name(filename))
    for key, value in asdict(given or Declared()).items():
        if value is None:
            continue
        value = tuple(value) if key == "archs" else value
        have = merged[key]
        if have is not None and not _same(key, have, value):
            raise BadInput(
                f"{filename}: {key} {value!r} contradicts the file name's {have!r}",
                hint="drop the flag, or audit a wheel whose name says what was built",
            )
        merged[key] = value
    return Declared(**merged)


def _same(key: str, have: object, value: object) -> bool:
    if key == "version":
        return Version(str(have)) == Version(str(value))
    if key == "package":
        return canonicalize_name(str(have)) == canonicalize_name(str(value))
    return have == value


# ------------------------------------------------------------ ABI


def _mangled_tokens(mangled: str) -> Iterator[str]:
    """Identifiers and std abbreviations (``St``, ``Ss``, ...) of an Itanium-mangled name, read roughly."""
    i, n = 0, len(mangled)
    while i < n:
        if skip := _MANGLE_SKIP.match(mangled, i):
            i = skip.end()
        elif mangled[i].isdigit():
            j = i
            while j < n and mangled[j].isdigit():
                j += 1
            yield mangled[j : j + int(mangled[i:j])]
            i = j + int(mangled[i:j])
        elif mangled[i] == "S" and i + 1 < n and mangled[i + 1].islower():
            yield mangled[i : i + 2]
            i += 2
        else:
            i += 1


def uses_old_abi(mangled: str) -> bool:
    """std::string/std::basic_string (``Ss``/``Sb``) or std::list (``St4list``) of the pre-C++11 ABI."""
    previous = ""
    for token in _mangled_tokens(mangled):
        if token in ("Ss", "Sb") or (previous == "St" and token == "list"):
            return True
        previous = token
    return False


def uses_new_abi(mangled: str) -> bool:
    return any(mark in mangled for mark in _NEW_ABI_MARKS)


@dataclass(frozen=True)
class AbiEvidence:
    verdict: str  # "TRUE" | "FALSE" | "mixed" | "unknown"
    new: tuple[str, ...]  # examples
    old: tuple[str, ...]


def abi_of(names: Iterable[str]) -> AbiEvidence:
    """Decide ``_GLIBCXX_USE_CXX11_ABI`` from mangled symbol names (defined or undefined)."""
    new, old = [], []
    for name in names:
        if not name.startswith("_Z"):
            continue
        if uses_new_abi(name):
            new.append(name)
        elif uses_old_abi(name):
            old.append(name)
    verdict = {(True, False): "TRUE", (False, True): "FALSE", (True, True): "mixed"}.get(
        (bool(new), bool(old))
    )
    return AbiEvidence(verdict or "unknown", tuple(sorted(set(new))[:3]), tuple(sorted(set(old))[:3]))


def _witnesses(symbols: Sequence[elf.Symbol], verdict: str) -> tuple[str, ...]:
    """Symbols that show ``verdict``: undefined ones needed from torch first (what breaks at import)."""
    shows = uses_new_abi if verdict == "TRUE" else uses_old_abi
    ranked = sorted(
        {s.name: s for s in symbols if s.name.startswith("_Z") and shows(s.name)}.values(),
        key=lambda s: (s.defined, not _TORCH_SYMBOL.search(s.name), len(s.name), s.name),
    )
    return tuple(s.name for s in ranked[:3])


def check_abi(declared: Declared, symbols: Sequence[elf.Symbol]) -> tuple[Check, str]:
    evidence = abi_of(s.name for s in symbols)
    note, considered = "", symbols
    if evidence.verdict == "mixed":
        boundary = [s for s in symbols if _TORCH_SYMBOL.search(s.name)]
        if abi_of(s.name for s in boundary).verdict in ("TRUE", "FALSE"):
            note, considered = (
                " (both ABIs' std::string appear; the symbols shared with torch decide)",
                boundary,
            )
            evidence = abi_of(s.name for s in boundary)
    found = evidence.verdict
    if found == "unknown":
        return Check("abi", True, "no std::string/std::list symbols: the binary works with either ABI"), found
    if found == "mixed":
        return Check(
            "abi",
            False,
            f"both ABIs' std::string symbols: {', '.join(evidence.new + evidence.old)}",
            "some of its C++ calls will not link against any one torch build",
        ), found
    example = _witnesses(considered, found)[0]
    seen = f"binary is cxx11abi{found}{note}, e.g. {demangle(example)}"
    if declared.cxx11abi is None:
        return Check("abi", True, f"{seen} (no ABI declared)", skipped=True), found
    label = "TRUE" if declared.cxx11abi else "FALSE"
    if label == found:
        return Check("abi", True, seen), found
    return Check(
        "abi",
        False,
        f"labelled cxx11abi{label} but {seen}",
        f'users who pick this wheel for a cxx11abi{label} torch get "undefined symbol: {example}" on import',
    ), found


# ------------------------------------------------------------ torch symbols


def torch_lib_dir_for(python: str | Path) -> Path:
    """``<site-packages>/torch/lib`` of the torch that ``python`` would import (found, not imported)."""
    code = (
        "import importlib.util, os; s = importlib.util.find_spec('torch'); print(os.path.dirname(s.origin))"
    )
    try:
        result = proc.run([str(python), "-c", code], capture=True, check=False, quiet=True)
        why = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
    except OSError as exc:
        result, why = None, str(exc)
    if result is None or result.returncode != 0:
        raise BadInput(
            f"--python {python}: no importable torch there ({why})",
            hint="install the cell's torch into that interpreter, or pass --torch-lib-dir",
        )
    return Path(result.stdout.strip()) / "lib"


def _default_torch_lib_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("torch")
    return Path(spec.origin).parent / "lib" if spec and spec.origin else None


def torch_version_at(lib_dir: Path) -> str | None:
    """torch's ``__version__`` from ``<torch>/version.py`` beside ``lib/``."""
    version_py = lib_dir.parent / "version.py"
    if not version_py.is_file():
        return None
    match = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", version_py.read_text(), re.MULTILINE)
    return match.group(1) if match else None


def torch_libraries(lib_dir: Path) -> list[Path]:
    return sorted(p for p in lib_dir.iterdir() if p.is_file() and ".so" in p.name and elf.is_elf(p))


def needed_from_torch(symbols: Iterable[elf.Symbol]) -> set[str]:
    return {s.name for s in symbols if not s.defined and not s.weak and _TORCH_SYMBOL.search(s.name)}


def missing_in(lib_dir: Path, wanted: set[str]) -> set[str]:
    remaining = set(wanted)
    for lib in torch_libraries(lib_dir):
        if not remaining:
            break
        remaining -= elf.defined_among(lib, remaining)
    return remaining


def check_torch_symbols(
    declared: Declared, dynamic: Sequence[elf.Symbol], lib_dir: Path | None, *, explicit: bool
) -> tuple[Check, str | None]:
    wanted = needed_from_torch(dynamic)
    if lib_dir is None or not lib_dir.is_dir():
        return Check(
            "torch-symbols",
            True,
            f"{len(wanted)} symbols needed from torch; no torch to check them "
            "against (pass --torch-lib-dir or --python)",
            skipped=True,
        ), None
    version = torch_version_at(lib_dir) or "?"
    if declared.torch and not version.startswith(f"{declared.torch}."):
        detail = f"torch at {lib_dir} is {version}, but the wheel is for torch {declared.torch}"
        if explicit:
            return Check(
                "torch-symbols", False, detail, "the audit used the wrong torch; pass the cell's"
            ), version
        return Check("torch-symbols", True, f"{detail}: not checked", skipped=True), version
    missing = sorted(missing_in(lib_dir, wanted))
    if not missing:
        return Check(
            "torch-symbols",
            True,
            f"all {len(wanted)} symbols needed from torch are defined in torch {version}",
        ), version
    shown = "; ".join(demangle(m) for m in missing[:3]) + (
        f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    )
    return Check(
        "torch-symbols",
        False,
        f"{len(missing)} of {len(wanted)} symbols needed from torch are not in torch {version}: {shown}",
        f'this wheel will fail with "undefined symbol: {missing[0]}" on import with torch '
        f"{declared.torch or version}",
    ), version


# ------------------------------------------------------------ glibc


def auditwheel_show(wheel: Path) -> dict[str, Any]:
    """``auditwheel show --json`` (auditwheel >= 6.8) of the wheel's own ELF files, else the same via its API.

    ``show`` has no ``--exclude``: it runs with an empty library search path, so libraries from outside the
    wheel (torch's and CUDA's, which the user's torch brings) are reported but never resolved nor counted.
    """
    with tempfile.TemporaryDirectory(prefix="wheelfarm-ldpaths-") as empty:
        result = proc.run(
            [sys.executable, "-m", "auditwheel", "show", "--json", "--ldpaths", empty, wheel],
            env={"AUDITWHEEL_LD_LIBRARY_PATH": ""},
            capture=True,
            check=False,
            quiet=True,
        )
    if result.returncode == 0 and result.stdout.strip().startswith("{"):
        data: dict[str, Any] = json.loads(result.stdout)
        if "error" in data:
            raise BuildFailed(f"auditwheel show {wheel.name}: {data['error']}")
        return data
    if "unrecognized arguments" in result.stderr:
        return show_via_api(wheel)
    raise BuildFailed(
        f"auditwheel show {wheel.name} failed (exit {result.returncode}): {result.stderr.strip()}"
    )


def show_via_api(wheel: Path) -> dict[str, Any]:
    """The fields of ``auditwheel show --json`` from auditwheel's Python API (6.4 – 6.7 have no ``--json``).

    Torch's and CUDA's libraries are excluded here as ``repair --exclude`` would.
    """
    from auditwheel.wheel_abi import analyze_wheel_abi
    from auditwheel.wheeltools import get_wheel_architecture, get_wheel_libc

    def tolerant(get: Any) -> Any:
        try:
            return get(wheel.name)
        except Exception:
            return None

    info = analyze_wheel_abi(
        tolerant(get_wheel_libc),
        tolerant(get_wheel_architecture),
        wheel,
        frozenset(EXPECTED_EXTERNALS),
        disable_isa_ext_check=False,
        allow_graft=False,
    )
    policies = info.policies
    upgrades = {}
    for policy in policies:
        ref = info.external_refs[policy.name]
        entry = {
            k: v
            for k, v in (
                ("libs_to_eliminate", sorted(ref.libs)),
                ("blacklisted_symbols", {k: sorted(v) for k, v in ref.blacklist.items()}),
            )
            if v
        }
        if policy > info.overall_policy and entry:
            upgrades[policy.name] = entry
    return {
        "overall_tag": info.overall_policy.name,
        "sym_tag": info.sym_policy.name,
        "pyfpe": info.pyfpe_policy == policies.linux,
        "ucs2": info.ucs_policy == policies.linux,
        "unsupported_isa": info.machine_policy == policies.linux,
        "versioned_symbols": {k: sorted(v) for k, v in info.versioned_symbols.items()},
        "policy_upgrades": upgrades,
    }


def is_expected_external(soname: str) -> bool:
    return any(fnmatch.fnmatch(soname, pattern) for pattern in EXPECTED_EXTERNALS)


def _max_version(versions: Iterable[str], prefix: str) -> str | None:
    found = [
        tuple(int(x) for x in m.group(2).split("."))
        for v in versions
        if (m := _SYMBOL_VERSION.match(v)) and m.group(1) == prefix
    ]
    return ".".join(map(str, max(found))) if found else None


def glibc_floor(show: Mapping[str, Any]) -> GlibcFloor:
    """The highest symbol versions, and the best platform tag with torch's and CUDA's libraries excluded."""
    versions = [v for vs in show.get("versioned_symbols", {}).values() for v in vs]
    arch_match = _PLATFORM_ARCH.match(show["overall_tag"])
    fallback = f"linux_{arch_match.group(1) if arch_match else 'x86_64'}"
    sym_tag = show["sym_tag"]
    entry = show.get("policy_upgrades", {}).get(sym_tag, {}) if sym_tag != show["overall_tag"] else {}
    unexpected = tuple(lib for lib in entry.get("libs_to_eliminate", []) if not is_expected_external(lib))
    tag = sym_tag
    if (
        show.get("pyfpe")
        or show.get("ucs2")
        or show.get("unsupported_isa")
        or unexpected
        or entry.get("blacklisted_symbols")
    ):
        tag = fallback
    return GlibcFloor(
        _max_version(versions, "GLIBC"),
        _max_version(versions, "GLIBCXX"),
        _max_version(versions, "CXXABI"),
        tag,
        unexpected,
    )


def _tag_glibc(tag: str) -> tuple[int, int] | None:
    """``manylinux_2_28_x86_64`` -> (2, 28); legacy aliases too; None for other platforms."""
    if match := _GLIBC_TAG.match(tag):
        return int(match.group(1)), int(match.group(2))
    return next((v for alias, v in _LEGACY_MANYLINUX.items() if tag.startswith(f"{alias}_")), None)


def check_glibc(declared: Declared, floor: GlibcFloor) -> Check:
    needs = f"needs GLIBC {floor.max_glibc}, GLIBCXX {floor.max_glibcxx}, CXXABI {floor.max_cxxabi}"
    if floor.unexpected_libs:
        libs = ", ".join(floor.unexpected_libs)
        return Check(
            "glibc",
            False,
            f"{needs}; links {libs}, which no manylinux policy allows and which is neither "
            "torch's nor CUDA's (repair would vendor it)",
            f'users without {floor.unexpected_libs[0]} get "{floor.unexpected_libs[0]}: cannot open '
            'shared object file" on import',
        )
    have = _tag_glibc(floor.manylinux)
    if have is None:
        return Check(
            "glibc",
            False,
            f"{needs}: no manylinux policy allows it ({floor.manylinux})",
            "it runs only on a distro at least as new as the build machine",
        )
    limits = [(_tag_glibc(declared.platform or ""), f"platform tag {declared.platform}")]
    if declared.max_glibc:
        major, minor = (int(x) for x in declared.max_glibc.split(".")[:2])
        limits.append(((major, minor), f"declared glibc {declared.max_glibc}"))
    for limit, what in limits:
        if limit is not None and have > limit:
            floor_s = f"{have[0]}.{have[1]}"
            return Check(
                "glibc",
                False,
                f"{needs} → {floor.manylinux}, newer than the {what}",
                f"users with glibc < {floor_s} ({_FAILED_GLIBC_HINT}) get \"version `GLIBC_{floor_s}' not "
                'found" or similar on import',
            )
    return Check(
        "glibc",
        True,
        f"{needs} → {floor.manylinux} (torch and CUDA libraries expected from the user's torch)",
    )


# ------------------------------------------------------------ GPU code


def check_archs(declared: Declared, code: Mapping[str, cuda_archs.GpuCode]) -> Check:
    with_code = {name: c for name, c in code.items() if not c.empty}
    if not with_code:
        return Check(
            "archs",
            False,
            "no GPU code (SASS or PTX) in any ELF of the wheel",
            'every CUDA kernel launch fails with "no kernel image is available for execution"',
        )
    found = ", ".join(
        f"{n}: {_fmt(c.sass)}" + (f" + PTX {_fmt(c.ptx)}" if c.ptx else "") for n, c in with_code.items()
    )
    if declared.archs is None:
        return Check("archs", True, f"{found} (no archs declared)", skipped=True)
    try:
        wanted = [cuda_archs.normalize_arch(a) for a in declared.archs]
    except ValueError as exc:
        raise BadInput(f"declared archs: {exc}") from None
    sass = {a for a, _ in wanted}
    ptx = {a.replace("sm_", "compute_", 1) for a, wants_ptx in wanted if wants_ptx}
    wrong = {n: c for n, c in with_code.items() if c.sass != sass or not ptx <= c.ptx}
    if not wrong:
        return Check("archs", True, f"SASS as declared: {found}")
    name, c = next(iter(wrong.items()))
    lacking = sorted(sass - c.sass, key=cuda_archs.arch_sort_key)
    extra = sorted(c.sass - sass, key=cuda_archs.arch_sort_key)
    detail = f"declared {_fmt(sass)}{' + PTX ' + _fmt(ptx) if ptx else ''}, {name} has {_fmt(c.sass)}"
    detail += (f"; missing {', '.join(lacking)}" if lacking else "") + (
        f"; undeclared {', '.join(extra)}" if extra else ""
    )
    impact = (
        f'on {lacking[0]} GPUs every kernel fails with "no kernel image is available for execution"'
        if lacking
        else "the wheel ships code for GPUs its name and index don't promise (size, wrong variant)"
    )
    return Check("archs", False, detail, impact)


def _fmt(archs: Iterable[str]) -> str:
    return ",".join(sorted(archs, key=cuda_archs.arch_sort_key)) or "none"


# ------------------------------------------------------------ abi3


def check_abi3(declared: Declared, wheel: Path, members: Sequence[str]) -> Check:
    """A ``cpXY-abi3`` wheel: every shared object within the stable ABI of Python X.Y, no per-Python module names
    (abi3audit plus a name check; see abi3.py). Other wheels: skipped."""
    if not declared.abi3:
        return Check("abi3", True, f"not a limited-API wheel (ABI tag of {declared.python_tag})", skipped=True)
    match = re.fullmatch(r"cp(\d)(\d+)", declared.python_tag or "")
    baseline = f"{match[1]}.{match[2]}" if match else str(declared.python_tag)
    found = abi3.findings(abi3.run_abi3audit(wheel), members, baseline, abi3.tool_version())
    problems = found.problems
    if not problems:
        return Check("abi3", True, f"{found.tool}: {', '.join(found.scanned)} within the stable ABI of Python "
                     f"{baseline}; no per-Python module names")
    return Check("abi3", False, "; ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3
                                                            else ""),
                 f"the file name promises every CPython >= {baseline}; on another Python than the one that built "
                 "it the import fails (undefined symbol, or the module is not found)")


# ------------------------------------------------------------ metadata


@dataclass(frozen=True)
class DistInfo:
    folder: str
    metadata: email.message.Message
    record: bytes | None


def read_dist_info(zf: zipfile.ZipFile) -> DistInfo:
    folders = sorted({n.split("/")[0] for n in zf.namelist() if n.split("/")[0].endswith(".dist-info")})
    if len(folders) != 1:
        raise BuildFailed(f"expected one .dist-info folder in the wheel, found {folders or 'none'}")
    folder = folders[0]
    try:
        raw = zf.read(f"{folder}/METADATA")
    except KeyError:
        raise BuildFailed(f"{folder}/METADATA is missing from the wheel") from None
    names = set(zf.namelist())
    record = zf.read(f"{folder}/RECORD") if f"{folder}/RECORD" in names else None
    return DistInfo(folder, email.parser.BytesParser().parsebytes(raw, headersonly=True), record)


def check_version(declared: Declared, meta: email.message.Message) -> Check:
    name, version = meta.get("Name", ""), meta.get("Version", "")
    if canonicalize_name(name) != canonicalize_name(declared.package or ""):
        return Check(
            "version",
            False,
            f"METADATA Name {name!r} but the file name says {declared.package!r}",
            "pip refuses it: the name it asked for is not the name inside",
        )
    try:
        same = Version(version) == Version(declared.version or "")
    except InvalidVersion:
        same = False
    if same:
        return Check("version", True, f"METADATA Version {version} equals the file name's")
    return Check(
        "version",
        False,
        f"METADATA Version {version!r} but the file name says {declared.version!r}",
        f'pip refuses it from an index or --find-links ("inconsistent version: expected '
        f"'{declared.version}', but metadata has '{version}'\")",
    )


def _requirements(meta: email.message.Message, project: str) -> list[Requirement]:
    found = []
    for line in meta.get_all("Requires-Dist") or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(req.name) == project and not (req.marker and "extra" in str(req.marker)):
            found.append(req)
    return found


def check_torch_pin(declared: Declared, meta: email.message.Message) -> Check:
    reqs = _requirements(meta, "torch")
    if declared.torch is None:
        return Check(
            "torch-pin",
            True,
            f"Requires-Dist torch: {', '.join(map(str, reqs)) or 'none'} (no torch declared)",
            skipped=True,
        )
    major, minor = (int(x) for x in declared.torch.split(".")[:2])
    impact = (
        f"pip may install or upgrade torch to {major}.{minor + 1} beside it, and import then fails with "
        '"undefined symbol" (upstream flash-attn #1724)'
    )
    if not reqs:
        return Check(
            "torch-pin", False, f"no Requires-Dist on torch; expected torch=={declared.torch}.*", impact
        )
    spec = SpecifierSet()
    for req in reqs:
        spec &= req.specifier
    inside = [f"{major}.{minor}.0", f"{major}.{minor}.99"]
    outside = [f"{major}.{minor + 1}.0a0", f"{major}.{minor + 1}.0", f"{major + 1}.0.0"]
    outside += [f"{major}.{minor - 1}.99"] if minor else []
    admitted = [v for v in outside if spec.contains(v, prereleases=True)]
    refused = [v for v in inside if not spec.contains(v, prereleases=True)]
    if not admitted and not refused:
        return Check("torch-pin", True, f"Requires-Dist torch{spec} pins torch {declared.torch}.*")
    wrong = "; ".join(
        f"{what} {', '.join(versions)}"
        for what, versions in (("admits", admitted), ("refuses", refused))
        if versions
    )
    return Check(
        "torch-pin",
        False,
        f"Requires-Dist torch{spec or ' (unpinned)'} does not pin torch to {declared.torch}.*: {wrong}",
        impact,
    )


def check_requires_python(declared: Declared, meta: email.message.Message) -> Check:
    raw = meta.get("Requires-Python")
    if not raw:
        return Check(
            "requires-python",
            False,
            "METADATA has no Requires-Python",
            "resolvers cannot tell which Pythons it supports before downloading it",
        )
    try:
        spec = SpecifierSet(raw)
    except InvalidSpecifier:
        return Check(
            "requires-python",
            False,
            f"Requires-Python {raw!r} is not a specifier",
            "pip rejects the wheel's metadata",
        )
    match = re.fullmatch(r"cp(\d)(\d+)", declared.python_tag or "")
    if not match:
        return Check(
            "requires-python",
            True,
            f"Requires-Python {raw} (python tag {declared.python_tag}: not a CPython version)",
            skipped=True,
        )
    python = f"{match.group(1)}.{match.group(2)}"
    if spec.contains(f"{python}.0", prereleases=True):
        return Check(
            "requires-python", True, f"Requires-Python {raw} admits Python {python} ({declared.python_tag})"
        )
    return Check(
        "requires-python",
        False,
        f"Requires-Python {raw} excludes Python {python}, the wheel's tag {declared.python_tag}",
        f"pip on Python {python} refuses to install it",
    )


def _record_problems(zf: zipfile.ZipFile, folder: str, record: bytes) -> Iterator[str]:
    rows = {row[0]: row for row in csv.reader(io.StringIO(record.decode("utf-8"))) if row}
    members = [i for i in zf.infolist() if not i.is_dir()]
    for info in members:
        if info.filename.startswith(f"{folder}/RECORD"):
            continue
        row = rows.get(info.filename)
        if row is None or len(row) < 3 or "=" not in row[1]:
            yield f"{info.filename}: not in RECORD (or no hash)"
            continue
        algo, _, expected = row[1].partition("=")
        if algo not in ("sha256", "sha384", "sha512"):
            yield f"{info.filename}: hash {algo} is not sha256 or stronger"
            continue
        data = zf.read(info)
        actual = base64.urlsafe_b64encode(hashlib.new(algo, data).digest()).rstrip(b"=").decode()
        if actual != expected:
            yield f"{info.filename}: {algo} in RECORD does not match the file"
        elif row[2] != str(len(data)):
            yield f"{info.filename}: size {row[2]} in RECORD, {len(data)} in the wheel"
    names = {i.filename for i in members}
    yield from (f"{path}: in RECORD but not in the wheel" for path in rows if path not in names)


def check_record(zf: zipfile.ZipFile, dist: DistInfo) -> Check:
    if dist.record is None:
        return Check("record", False, f"{dist.folder}/RECORD is missing", "pip refuses to install it")
    problems = list(_record_problems(zf, dist.folder, dist.record))
    if not problems:
        return Check("record", True, f"{len(zf.namelist())} files match the hashes and sizes in RECORD")
    more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
    return Check(
        "record",
        False,
        "; ".join(problems[:3]) + more,
        "its contents changed after it was built (corruption or tampering); installers that verify "
        "RECORD reject it",
    )


# ------------------------------------------------------------ helpers


def demangle(symbol: str) -> str:
    """``c++filt`` output for display, or the mangled name where c++filt is missing."""
    try:
        out = subprocess.run(["c++filt", symbol], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return symbol
    return out if out and out != symbol else symbol




def _extract_elfs(zf: zipfile.ZipFile, dest: Path) -> dict[str, Path]:
    elfs: dict[str, Path] = {}
    for info in zf.infolist():
        if info.is_dir():
            continue
        with zf.open(info) as f:
            if f.read(4) != elf.ELF_MAGIC:
                continue
        target = dest / f"{len(elfs)}-{Path(info.filename).name}"
        with zf.open(info) as src, target.open("wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        elfs[info.filename] = target
    return elfs


def _tool_versions(cuobjdump: Path) -> dict[str, str]:
    try:
        auditwheel = importlib_metadata.version("auditwheel")
    except importlib_metadata.PackageNotFoundError:
        auditwheel = "missing"
    return {"auditwheel": auditwheel, "cuobjdump": cuda_archs.cuobjdump_version(cuobjdump)}


# ------------------------------------------------------------ audit


def audit_wheel(
    wheel: Path,
    *,
    declared: Declared | None = None,
    torch_lib_dir: Path | None = None,
    cuobjdump: Path | None = None,
    write_json: bool = True,
) -> AuditReport:
    """Check that ``wheel``'s name (and ``declared``, e.g. the build cell) equals its contents.

    ``torch_lib_dir``: ``torch/lib`` of the cell's torch (see ``torch_lib_dir_for``); without it, the torch
    this interpreter can import is used if its version matches, else that check is skipped.
    """
    wheel = Path(wheel)
    if not wheel.is_file():
        raise BadInput(f"{wheel}: no such wheel")
    decl = resolve_declared(wheel.name, declared)
    tool = cuda_archs.find_cuobjdump(cuobjdump)
    lib_dir = torch_lib_dir if torch_lib_dir is not None else _default_torch_lib_dir()
    with tempfile.TemporaryDirectory(prefix="wheelfarm-audit-") as tmp, zipfile.ZipFile(wheel) as zf:
        elfs = _extract_elfs(zf, Path(tmp))
        dist = read_dist_info(zf)
        all_symbols = [s for path in elfs.values() for s in elf.symbols(path)]
        dynamic = [s for s in all_symbols if s.dynamic]
        code = {name: cuda_archs.gpu_code(tool, path) for name, path in elfs.items()}
        abi_check, abi = check_abi(decl, all_symbols)
        torch_check, torch_version = check_torch_symbols(
            decl, dynamic, lib_dir, explicit=torch_lib_dir is not None
        )
        floor = glibc_floor(auditwheel_show(wheel)) if elfs else None
        checks = (
            abi_check,
            torch_check,
            check_glibc(decl, floor) if floor else Check("glibc", True, "no ELF files", skipped=True),
            check_archs(decl, code),
            check_version(decl, dist.metadata),
            check_torch_pin(decl, dist.metadata),
            check_requires_python(decl, dist.metadata),
            check_record(zf, dist),
            *([check_abi3(decl, wheel, zf.namelist())] if decl.abi3 else []),  # limited-API wheels only
        )
    report = AuditReport(
        wheel=wheel,
        sha256=sha256_file(wheel),
        declared=decl,
        abi=abi,
        sass=tuple(sorted({a for c in code.values() for a in c.sass}, key=cuda_archs.arch_sort_key)),
        ptx=tuple(sorted({a for c in code.values() for a in c.ptx}, key=cuda_archs.arch_sort_key)),
        glibc=floor,
        checks=checks,
        tools=_tool_versions(tool),
        torch=torch_version,
    )
    if write_json:
        report.write()
    return report
