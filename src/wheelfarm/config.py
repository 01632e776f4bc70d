"""Parse ``build_matrix.toml`` once into frozen, typed dataclasses; every error names file, line, key and value.

The schema is small and strict: unknown keys fail with a "did you mean", wrong types name the expected type.
The matrix expansion and the compatibility rules live in ``matrix.py`` and ``compat.py``.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from .errors import ConfigError
from .tomlpos import Locator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")
KeyPath = tuple[str | int, ...]

SHA256 = re.compile(r"^[0-9a-f]{64}$")
MINOR = re.compile(r"^\d+\.\d+$")
ARCH = re.compile(r"^\d{2,3}[af]?$")
VARIANT = re.compile(r"^[a-z0-9]+$")
PLATFORM = re.compile(r"^linux_[a-z0-9_]+$")


@dataclass(frozen=True)
class Knobs:
    """Environment variables through which the package's own setup.py is steered."""

    force_build: str | None = None
    skip_cuda_build: str | None = None
    archs: str | None = None
    local_version: str | None = None
    force_cxx11_abi: str | None = None


@dataclass(frozen=True)
class GpuTest:
    checks: str | None = None
    upstream_tests: str | None = None
    upstream_select: str | None = None
    upstream_timeout: int = 300
    upstream_support: tuple[str, ...] = ()  # sdist files the test file imports, copied beside it (FA3's test_util)


@dataclass(frozen=True)
class PackageVersion:
    version: str
    sha256: str
    archs: tuple[str, ...]
    # What this version's own setup.py and sources can build, as far as the matrix needs to know: the CUDA
    # toolkits (its nvcc check and the CUTLASS it bundles) and the C++ standard it hard-codes (None: it
    # follows torch, e.g. through a patch). A cell outside them is impossible, with the reason.
    cuda: SpecifierSet = field(default_factory=SpecifierSet)
    cxx_std: int | None = None
    sdist_version: str = ""  # the version of the sdist that holds it, when that differs (FA3 in flash-attn's)

    @property
    def sdist(self) -> str:
        return self.sdist_version or self.version


@dataclass(frozen=True)
class Package:
    name: str
    naming: str
    source: str
    import_name: str
    module: str
    min_arch: int
    job_peak_mb: int
    nvcc_threads: int
    knobs: Knobs
    requires: tuple[str, ...]
    gpu_test: GpuTest
    versions: Mapping[str, PackageVersion]
    sdist: str = ""  # the PyPI project whose sdist holds the package ("" = the package itself)
    subdir: str = ""  # the folder of the sdist with the package's setup.py ("hopper" for FA3)
    abi3: str = ""  # the limited-API Python tag of its wheels ("cp39": one cp39-abi3 wheel serves every Python)
    disable_knobs: Mapping[str, str] = field(default_factory=dict)  # feature -> env var that compiles it out

    @property
    def sdist_project(self) -> str:
        return self.sdist or self.name


@dataclass(frozen=True)
class Builds:
    """The CUDA builds a torch release publishes for one wheel platform, and their C++ ABIs."""

    cuda: tuple[str, ...]
    cxx11abi: tuple[bool, ...]
    cuda_abi: Mapping[str, tuple[bool, ...]] = field(default_factory=dict)  # a build whose ABIs differ

    def abis(self, cuda: str) -> tuple[bool, ...]:
        return self.cuda_abi.get(cuda, self.cxx11abi)


DEFAULT_PLATFORM = "linux_x86_64"


@dataclass(frozen=True)
class TorchRelease:
    version: str
    cuda: tuple[str, ...]
    pypi_cuda: str | None
    python: SpecifierSet
    cxx11abi: tuple[bool, ...]
    cxx_std: int
    cuda_abi: Mapping[str, tuple[bool, ...]] = field(default_factory=dict)
    other_platforms: Mapping[str, Builds] = field(default_factory=dict)  # linux_aarch64 = {...}

    def builds(self, platform: str) -> Builds | None:
        """What this torch publishes for ``platform`` (the top-level keys describe linux_x86_64), or None."""
        if platform == DEFAULT_PLATFORM:
            return Builds(self.cuda, self.cxx11abi, self.cuda_abi)
        return self.other_platforms.get(platform)


@dataclass(frozen=True)
class CudaRelease:
    version: str
    index_url: str
    toolkit: tuple[str, ...]
    nvcc_in_wheels: bool
    max_gcc: int | None
    max_clang: int | None


@dataclass(frozen=True)
class Variant:
    name: str
    archs: tuple[str, ...] | None
    description: str
    patches: str | None = None  # a folder of *.patch (repo-relative), applied after the package version's own
    disable: tuple[str, ...] = ()  # features compiled out through the package's disable-knobs


@dataclass(frozen=True)
class Platform:
    """A wheel platform tag the farm builds for, and the CI runner label its build jobs go to."""

    name: str
    runner: str


DEFAULT_PLATFORMS = {DEFAULT_PLATFORM: Platform(DEFAULT_PLATFORM, "ubuntu-24.04")}


@dataclass(frozen=True)
class Block:
    """One ``[[matrix]]`` table: the product of its axes, minus its excludes."""

    index: int
    name: str
    package: str
    versions: tuple[str, ...]
    torch: tuple[str, ...]
    cuda: tuple[str, ...]
    python: tuple[str, ...]
    cxx11abi: tuple[bool, ...]
    archs: tuple[str, ...] | None
    variant: str
    platform: tuple[str, ...]
    exclude: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Target:
    name: str
    url: str


@dataclass(frozen=True)
class Farm:
    wheelhouse: str = "wheelhouse"
    mirror: str = "mirror"
    work_dir: str = ".wheelfarm"
    default_select: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    path: Path
    farm: Farm
    packages: Mapping[str, Package]
    torch: Mapping[str, TorchRelease]
    cuda: Mapping[str, CudaRelease]
    variants: Mapping[str, Variant]
    blocks: tuple[Block, ...]
    targets: Mapping[str, Target]
    locator: Locator = field(repr=False, compare=False)
    platforms: Mapping[str, Platform] = field(default_factory=lambda: dict(DEFAULT_PLATFORMS))

    @property
    def root(self) -> Path:
        return self.path.parent

    def error(self, key: KeyPath, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(self.path.name, self.locator.line(key), message, hint=hint)


# --------------------------------------------------------------------------- reading helpers


class _Reader:
    """Typed access to the raw TOML with errors located by key path."""

    def __init__(self, path: Path, locator: Locator) -> None:
        self.path = path
        self.locator = locator

    def error(self, key: KeyPath, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(self.path.name, self.locator.line(key), message, hint=hint)

    def keys(self, table: Mapping[str, Any], allowed: set[str], key: KeyPath) -> None:
        for name in table:
            if name not in allowed:
                close = difflib.get_close_matches(name, sorted(allowed), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(sorted(allowed))}"
                raise self.error((*key, name), f"unknown key '{_dotted((*key, name))}'", hint)

    def get(self, table: Mapping[str, Any], name: str, kind: type[T], key: KeyPath, default: Any = ...) -> T:
        if name not in table:
            if default is ...:
                raise self.error(key, f"missing required key '{_dotted((*key, name))}'")
            result: T = default
            return result
        value = table[name]
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            raise self.error(
                (*key, name),
                f"'{_dotted((*key, name))}' must be {_kind(kind)}, got {type(value).__name__} {value!r}",
            )
        return value

    def strings(self, table: Mapping[str, Any], name: str, key: KeyPath, *, pattern: re.Pattern[str] | None = None,
                default: Any = ...) -> tuple[str, ...]:
        if name not in table and default is not ...:
            fallback: tuple[str, ...] = default
            return fallback
        value = self.get(table, name, list, key)
        out = []
        for item in value:
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                raise self.error((*key, name), f"'{_dotted((*key, name))}' holds the number {item!r}; "
                                 f"write it as a string: \"{item}\"")
            if not isinstance(item, str):
                raise self.error((*key, name), f"'{_dotted((*key, name))}' must be a list of strings, "
                                 f"got {type(item).__name__} {item!r}")
            if pattern and not pattern.match(item):
                raise self.error((*key, name), f"'{_dotted((*key, name))}' has an invalid value {item!r}")
            out.append(item)
        return tuple(out)

    def specifier(self, table: Mapping[str, Any], name: str, key: KeyPath, *, required: bool = False) -> SpecifierSet:
        spec = self.get(table, name, str, key, ... if required else "")
        try:
            return SpecifierSet(spec)
        except InvalidSpecifier:
            raise self.error((*key, name), f"{_dotted((*key, name))} is not a version specifier: {spec!r}",
                             hint='e.g. ">=3.10,<3.15" or ">=11.7,<13"') from None

    def bools(self, table: Mapping[str, Any], name: str, key: KeyPath) -> tuple[bool, ...]:
        value = self.get(table, name, list, key)
        for item in value:
            if not isinstance(item, bool):
                raise self.error((*key, name), f"'{_dotted((*key, name))}' must be a list of true/false, "
                                 f"got {item!r}")
        return tuple(value)


def _dotted(key: KeyPath) -> str:
    return ".".join(f"[{k}]" if isinstance(k, int) else (f'"{k}"' if "." in k else k) for k in key).replace(
        ".[", "["
    )


def _kind(kind: type) -> str:
    return {str: "a string", int: "an integer", list: "a list", dict: "a table", bool: "true or false"}.get(
        kind, kind.__name__
    )


# --------------------------------------------------------------------------- sections


def _farm(r: _Reader, raw: Mapping[str, Any]) -> Farm:
    table = r.get(raw, "farm", dict, (), {})
    r.keys(table, {"wheelhouse", "mirror", "work-dir", "default-select"}, ("farm",))
    key: KeyPath = ("farm",)
    return Farm(
        wheelhouse=r.get(table, "wheelhouse", str, key, "wheelhouse"),
        mirror=r.get(table, "mirror", str, key, "mirror"),
        work_dir=r.get(table, "work-dir", str, key, ".wheelfarm"),
        default_select=r.strings(table, "default-select", key, default=()),
    )


_KNOBS = {"force-build", "skip-cuda-build", "archs", "local-version", "force-cxx11-abi"}
_PACKAGE_KEYS = {"naming", "source", "import-name", "module", "min-arch", "job-peak-mb", "nvcc-threads",
                 "knobs", "requires", "gpu-test", "versions", "sdist", "subdir", "abi3", "disable-knobs"}
ABI3_TAG = re.compile(r"^cp3\d+$")
FEATURE = re.compile(r"^[a-z][a-z0-9-]*$")
ENV_VAR = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def _package(r: _Reader, name: str, table: Mapping[str, Any]) -> Package:
    key: KeyPath = ("packages", name)
    r.keys(table, _PACKAGE_KEYS, key)
    knobs_raw = r.get(table, "knobs", dict, key, {})
    r.keys(knobs_raw, _KNOBS, (*key, "knobs"))
    knobs = Knobs(**{k.replace("-", "_"): r.get(knobs_raw, k, str, (*key, "knobs"), None) for k in _KNOBS})
    gpu_raw = r.get(table, "gpu-test", dict, key, {})
    gkey = (*key, "gpu-test")
    r.keys(gpu_raw, {"checks", "upstream-tests", "upstream-select", "upstream-timeout", "upstream-support"}, gkey)
    gpu = GpuTest(
        checks=r.get(gpu_raw, "checks", str, gkey, None),
        upstream_tests=r.get(gpu_raw, "upstream-tests", str, gkey, None),
        upstream_select=r.get(gpu_raw, "upstream-select", str, gkey, None),
        upstream_timeout=r.get(gpu_raw, "upstream-timeout", int, gkey, 300),
        upstream_support=r.strings(gpu_raw, "upstream-support", gkey, default=()),
    )
    versions_raw = r.get(table, "versions", dict, key)
    versions = {v: _package_version(r, name, v, t) for v, t in versions_raw.items()}
    source = r.get(table, "source", str, key, "pypi")
    if source != "pypi" and not source.startswith("path:"):
        raise r.error((*key, "source"), f"'packages.{name}.source' must be \"pypi\" or \"path:<dir>\", "
                      f"got {source!r}")
    import_name = r.get(table, "import-name", str, key, name.replace("-", "_"))
    abi3 = r.get(table, "abi3", str, key, "")
    if abi3 and not ABI3_TAG.match(abi3):
        raise r.error((*key, "abi3"), f"packages.{name}.abi3 = {abi3!r}: give the limited API's Python tag, "
                      "as setup.py's bdist_wheel py_limited_api says (\"cp39\")")
    subdir = r.get(table, "subdir", str, key, "")
    if subdir and (Path(subdir).is_absolute() or ".." in Path(subdir).parts):
        raise r.error((*key, "subdir"), f"packages.{name}.subdir = {subdir!r}: give a folder inside the sdist")
    disable_raw = r.get(table, "disable-knobs", dict, key, {})
    for feature, var in disable_raw.items():
        if not FEATURE.match(feature) or not isinstance(var, str) or not ENV_VAR.match(var):
            raise r.error((*key, "disable-knobs", feature), f"packages.{name}.disable-knobs: {feature!r} = "
                          f"{var!r}: map a lower-case feature name to the environment variable that compiles it "
                          "out (backward = \"FLASH_ATTENTION_DISABLE_BACKWARD\")")
    return Package(
        name=name,
        naming=r.get(table, "naming", str, key, "flash-attn"),
        source=source,
        import_name=import_name,
        module=r.get(table, "module", str, key, import_name),
        min_arch=r.get(table, "min-arch", int, key, 0),
        job_peak_mb=r.get(table, "job-peak-mb", int, key, 4000),
        nvcc_threads=r.get(table, "nvcc-threads", int, key, 2),
        knobs=knobs,
        requires=r.strings(table, "requires", key, default=()),
        gpu_test=gpu,
        versions=versions,
        sdist=r.get(table, "sdist", str, key, ""),
        subdir=subdir,
        abi3=abi3,
        disable_knobs=dict(disable_raw),
    )


def _package_version(r: _Reader, package: str, version: str, table: Any) -> PackageVersion:
    key: KeyPath = ("packages", package, "versions", version)
    if not isinstance(table, dict):
        raise r.error(key, f"'packages.{package}.versions.\"{version}\"' must be a table with sha256 and archs")
    r.keys(table, {"sha256", "archs", "cuda", "cxx-std", "sdist-version"}, key)
    sha = r.get(table, "sha256", str, key)
    if not SHA256.match(sha):
        raise r.error((*key, "sha256"), f"sha256 of {package} {version} must be 64 lowercase hex digits, "
                      f"got {sha!r}")
    return PackageVersion(version, sha, r.strings(table, "archs", key, pattern=ARCH),
                          cuda=r.specifier(table, "cuda", key), cxx_std=r.get(table, "cxx-std", int, key, None),
                          sdist_version=r.get(table, "sdist-version", str, key, ""))


def _torch(r: _Reader, version: str, table: Any, known_platforms: Mapping[str, Platform]) -> TorchRelease:
    key: KeyPath = ("torch", version)
    if not MINOR.match(version) or not isinstance(table, dict):
        raise r.error(key, f"[torch.\"{version}\"] must be keyed by torch major.minor and be a table")
    platforms = set(known_platforms) - {DEFAULT_PLATFORM}
    r.keys(table, {"cuda", "pypi-cuda", "python", "cxx11abi", "cxx-std", "cuda-abi", *platforms}, key)
    cuda = r.strings(table, "cuda", key, pattern=MINOR)
    return TorchRelease(
        version=version,
        cuda=cuda,
        pypi_cuda=r.get(table, "pypi-cuda", str, key, None),
        python=r.specifier(table, "python", key, required=True),
        cxx11abi=r.bools(table, "cxx11abi", key),
        cxx_std=r.get(table, "cxx-std", int, key, 17),
        cuda_abi=_cuda_abi(r, table, key, cuda),
        other_platforms={name: _builds(r, table[name], (*key, name)) for name in sorted(platforms & set(table))},
    )


def _cuda_abi(r: _Reader, table: Mapping[str, Any], key: KeyPath, cuda: tuple[str, ...]) -> dict[str, tuple[bool, ...]]:
    """``cuda-abi = { "12.6" = [true] }``: the builds whose C++ ABIs are not the release's ``cxx11abi``."""
    raw = r.get(table, "cuda-abi", dict, key, {})
    for build in raw:
        if build not in cuda:
            raise r.error((*key, "cuda-abi"), f"{_dotted((*key, 'cuda-abi'))} names CUDA {build!r}, which is not "
                          f"one of this table's builds ({', '.join(cuda)})")
    return {build: r.bools(raw, build, (*key, "cuda-abi")) for build in raw}


def _builds(r: _Reader, table: Any, key: KeyPath) -> Builds:
    """``[torch."X.Y".linux_aarch64]``: the CUDA builds (and ABIs) published for another platform."""
    if not isinstance(table, dict):
        raise r.error(key, f"[{_dotted(key)}] must be a table with cuda (and cxx11abi)")
    r.keys(table, {"cuda", "cxx11abi", "cuda-abi"}, key)
    cuda = r.strings(table, "cuda", key, pattern=MINOR)
    abis = r.bools(table, "cxx11abi", key) if "cxx11abi" in table else (True,)
    return Builds(cuda, abis, _cuda_abi(r, table, key, cuda))


def _cuda(r: _Reader, version: str, table: Any) -> CudaRelease:
    key: KeyPath = ("cuda", version)
    if not MINOR.match(version) or not isinstance(table, dict):
        raise r.error(key, f"[cuda.\"{version}\"] must be keyed by CUDA major.minor and be a table")
    r.keys(table, {"index-url", "toolkit", "nvcc-in-wheels", "max-gcc", "max-clang"}, key)
    return CudaRelease(
        version=version,
        index_url=r.get(table, "index-url", str, key),
        toolkit=r.strings(table, "toolkit", key),
        nvcc_in_wheels=r.get(table, "nvcc-in-wheels", bool, key, True),
        max_gcc=r.get(table, "max-gcc", int, key, None),
        max_clang=r.get(table, "max-clang", int, key, None),
    )


def _variant(r: _Reader, name: str, table: Any) -> Variant:
    key: KeyPath = ("variants", name)
    if not VARIANT.match(name):
        raise r.error(key, f"variant name {name!r} must be lowercase letters and digits (it becomes part of a "
                      "PEP 440 local version label)")
    if not isinstance(table, dict):
        raise r.error(key, f"[variants.{name}] must be a table")
    r.keys(table, {"archs", "description", "patches", "disable"}, key)
    archs = r.strings(table, "archs", key, pattern=ARCH, default=None)
    patches = r.get(table, "patches", str, key, None)
    if patches is not None and (Path(patches).is_absolute() or ".." in Path(patches).parts):
        raise r.error((*key, "patches"), f"variants.{name}.patches = {patches!r}: give a folder inside the "
                      "repository, relative to build_matrix.toml")
    disable = r.strings(table, "disable", key, pattern=FEATURE, default=())
    return Variant(name, archs, r.get(table, "description", str, key, ""), patches, disable)


_BLOCK_KEYS = {"name", "package", "version", "torch", "cuda", "python", "cxx11abi", "archs", "variant",
               "platform", "exclude"}
_AXES = {"version", "torch", "cuda", "python", "cxx11abi", "archs", "variant", "platform"}


def _block(r: _Reader, index: int, table: Any, platforms: Mapping[str, Platform]) -> Block:
    key: KeyPath = ("matrix", index)
    if not isinstance(table, dict):
        raise r.error(key, "each [[matrix]] entry must be a table")
    r.keys(table, _BLOCK_KEYS, key)
    excludes = r.get(table, "exclude", list, key, [])
    for item in excludes:
        if not isinstance(item, dict):
            raise r.error((*key, "exclude"), f"matrix[{index}].exclude entries must be inline tables, got {item!r}")
        r.keys(item, _AXES, (*key, "exclude"))
    return Block(
        index=index,
        name=r.get(table, "name", str, key, f"matrix[{index}]"),
        package=r.get(table, "package", str, key),
        versions=r.strings(table, "version", key),
        torch=r.strings(table, "torch", key),
        cuda=r.strings(table, "cuda", key, pattern=MINOR),
        python=r.strings(table, "python", key, pattern=MINOR),
        cxx11abi=r.bools(table, "cxx11abi", key),
        archs=r.strings(table, "archs", key, pattern=ARCH, default=None),
        variant=r.get(table, "variant", str, key, ""),
        platform=_block_platforms(r, table, key, platforms),
        exclude=tuple(excludes),
    )


def _block_platforms(r: _Reader, table: Mapping[str, Any], key: KeyPath,
                     platforms: Mapping[str, Platform]) -> tuple[str, ...]:
    """``platform``: one wheel platform tag or a list of them (an axis), each a ``[platforms]`` entry."""
    value = table.get("platform", DEFAULT_PLATFORM)
    names = (value,) if isinstance(value, str) else r.strings(table, "platform", key)
    for name in names:
        if name not in platforms:
            close = difflib.get_close_matches(name, sorted(platforms), n=1)
            raise r.error((*key, "platform"), f"{_dotted((*key, 'platform'))}: unknown platform {name!r}",
                          hint=f"did you mean {close[0]!r}?" if close else
                          f"add a [platforms.{name}] table with its runner (known: {', '.join(sorted(platforms))})")
    return names


def _targets(r: _Reader, raw: Mapping[str, Any]) -> dict[str, Target]:
    table = r.get(raw, "targets", dict, (), {})
    out = {}
    for name, value in table.items():
        key: KeyPath = ("targets", name)
        if not isinstance(value, dict):
            raise r.error(key, f"[targets.{name}] must be a table with a url")
        r.keys(value, {"url"}, key)
        out[name] = Target(name, r.get(value, "url", str, key))
    return out


def _platforms(r: _Reader, raw: Mapping[str, Any]) -> dict[str, Platform]:
    """``[platforms.<tag>] runner = "…"``: the wheel platforms and the CI runners their jobs go to (the default
    linux_x86_64 entry stands when the file names none)."""
    out = dict(DEFAULT_PLATFORMS)
    for name, value in r.get(raw, "platforms", dict, (), {}).items():
        key: KeyPath = ("platforms", name)
        if not isinstance(value, dict) or not PLATFORM.match(name):
            raise r.error(key, f"[platforms.{name}] must be a table keyed by a wheel platform tag like linux_aarch64")
        r.keys(value, {"runner"}, key)
        out[name] = Platform(name, r.get(value, "runner", str, key))
    return out


def _section(r: _Reader, raw: Mapping[str, Any], name: str, required: bool = True) -> Mapping[str, Any]:
    return r.get(raw, name, dict, (), ... if required else {})


def load(path: str | Path) -> Config:
    """Read and validate ``path``; raises ConfigError (exit 2) naming file, line, key and value."""
    path = Path(path).absolute()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), None, "matrix file not found",
                          hint="run from the repository root or pass --matrix PATH") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from_message(str(exc))
        raise ConfigError(path.name, line, f"not valid TOML: {exc}") from None
    r = _Reader(path, Locator(text))
    r.keys(raw, {"farm", "packages", "torch", "cuda", "variants", "platforms", "matrix", "targets"}, ())
    blocks = r.get(raw, "matrix", list, (), [])
    platforms = _platforms(r, raw)
    config = Config(
        path=path,
        farm=_farm(r, raw),
        packages={n: _package(r, n, t) if isinstance(t, dict) else _bad_table(r, "packages", n)
                  for n, t in _section(r, raw, "packages").items()},
        torch={v: _torch(r, v, t, platforms) for v, t in _section(r, raw, "torch").items()},
        cuda={v: _cuda(r, v, t) for v, t in _section(r, raw, "cuda").items()},
        variants={n: _variant(r, n, t) for n, t in _section(r, raw, "variants", False).items()},
        blocks=tuple(_block(r, i, t, platforms) for i, t in enumerate(blocks)),
        targets=_targets(r, raw),
        locator=r.locator,
        platforms=platforms,
    )
    return config


def _bad_table(r: _Reader, section: str, name: str) -> Package:
    raise r.error((section, name), f"[{section}.{name}] must be a table")


def _line_from_message(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None
