"""Expand build_matrix.toml into cells, reject impossible or duplicate ones, and select by ``KEY=GLOB``."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from packaging.version import InvalidVersion, Version

from . import naming
from .compat import impossible, torch_cuda_build
from .config import Block, Config
from .errors import BadInput


@dataclass(frozen=True, order=True)
class Cell:
    package: str
    version: str
    torch: str
    cuda: str
    python: str
    cxx11abi: bool
    archs: tuple[str, ...]
    variant: str = ""
    platform: str = "linux_x86_64"
    patches: str = ""  # the variant's patch folder (repo-relative), applied after the package version's patches
    disable: tuple[str, ...] = ()  # the variant's features compiled out (the package's disable-knobs)
    abi3: str = ""  # the package's limited-API tag ("cp39"): the wheel serves every Python, ``python`` builds it

    @property
    def cost_key(self) -> str:
        """What decides the compile work, for recorded durations and peaks: the package version and archs, and the
        variant when its patches or disabled features change the code."""
        changes_code = self.patches or self.disable
        return f"{self.package}-{self.version}-sm{'_'.join(self.archs)}" + (f"-{self.variant}" if changes_code else "")

    @property
    def abi_flag(self) -> str:
        return "TRUE" if self.cxx11abi else "FALSE"

    @property
    def python_tag(self) -> str:
        return naming.python_tag(self.python)

    @property
    def local_label(self) -> str:
        return naming.local_label(self.package, self.version, self.torch, self.cuda, self.cxx11abi, self.variant)

    @property
    def wheel_version(self) -> str:
        return naming.wheel_version(self.package, self.version, self.torch, self.cuda, self.cxx11abi, self.variant)

    @property
    def wheel(self) -> str:
        return naming.wheel_name(self.package, self.version, self.torch, self.cuda, self.python, self.cxx11abi,
                                 self.platform, self.variant, self.abi3)

    @property
    def index(self) -> str:
        """The variant index key: ``<mirror>/<index>/simple/`` serves this cell's wheel."""
        return self.local_label

    @property
    def group(self) -> str:
        """Cells of one group share every compile but the Python binding (DESIGN.md)."""
        return f"{self.package}-{self.version}+{self.local_label}-sm{'_'.join(self.archs)}"

    def describe(self) -> str:
        return (f"{self.package} {self.version} torch {self.torch} CUDA {self.cuda} Python {self.python} "
                f"cxx11abi={self.abi_flag} archs={','.join(self.archs)}"
                + (f" variant={self.variant}" if self.variant else ""))

    def to_json(self, config: Config | None = None) -> dict[str, Any]:
        data = asdict(self)
        data["archs"] = list(self.archs)
        data["disable"] = list(self.disable)
        data.update(wheel=self.wheel, index=self.index, group=self.group, wheel_version=self.wheel_version)
        if config is not None:
            data["torch_cuda"] = torch_cuda_build(config.torch[self.torch], self.cuda, self.cxx11abi,
                                                  self.platform)
        return data


def _torch_minor(value: str) -> str:
    return ".".join(value.split(".")[:2])


def _block_cells(config: Config, block: Block) -> Iterable[tuple[Cell, tuple[str | int, ...]]]:
    key = ("matrix", block.index)
    if block.package not in config.packages:
        raise config.error((*key, "package"), f"matrix[{block.index}].package: unknown package {block.package!r}",
                           hint=_close(block.package, config.packages))
    package = config.packages[block.package]
    if block.variant and block.variant not in config.variants:
        raise config.error((*key, "variant"), f"matrix[{block.index}].variant: unknown variant {block.variant!r}",
                           hint=_close(block.variant, config.variants))
    variant = config.variants.get(block.variant)
    unknown = [f for f in (variant.disable if variant else ()) if f not in package.disable_knobs]
    if variant and unknown:
        raise config.error((*key, "variant"), f"matrix[{block.index}]: variant {variant.name!r} disables "
                           f"{', '.join(unknown)}, which {block.package} has no disable-knobs for",
                           hint=f"{block.package} can compile out: {', '.join(package.disable_knobs) or 'nothing'}")
    for version, torch, cuda, python, abi, platform in itertools.product(
        block.versions, block.torch, block.cuda, block.python, block.cxx11abi, block.platform
    ):
        if version not in package.versions:
            raise config.error((*key, "version"), f"matrix[{block.index}].version: {block.package} {version!r} "
                               f"has no sha256 pin in [packages.{block.package}.versions]",
                               hint=_close(version, package.versions))
        archs = block.archs or (variant.archs if variant and variant.archs else package.versions[version].archs)
        cell = Cell(block.package, version, _torch_minor(torch), cuda, python, abi, tuple(archs), block.variant,
                    platform, (variant.patches or "") if variant else "", variant.disable if variant else (),
                    package.abi3)
        if _excluded(cell, block):
            continue
        yield cell, key


def _excluded(cell: Cell, block: Block) -> bool:
    return any(all(_matches_value(cell, k, v) for k, v in rule.items()) for rule in block.exclude)


def _matches_value(cell: Cell, key: str, value: Any) -> bool:
    """An exclude rule's value: one value, or a list of alternatives (``torch = ["2.7", "2.8"]``); for ``archs``
    the list is the value itself."""
    if key == "archs":
        return list(cell.archs) == [str(v) for v in value]
    if isinstance(value, list):
        return any(_matches_value(cell, key, v) for v in value)
    if key == "torch":
        return cell.torch == _torch_minor(str(value))
    return bool(getattr(cell, key) == value)


def expand(config: Config) -> list[Cell]:
    """All cells of all blocks; an impossible or duplicate cell is a located ConfigError (exit 2)."""
    seen: dict[str, tuple[str | int, ...]] = {}
    cells: list[Cell] = []
    for block in config.blocks:
        for cell, key in _block_cells(config, block):
            reason = impossible(config, package=cell.package, version=cell.version, torch=cell.torch,
                                cuda=cell.cuda, python=cell.python, cxx11abi=cell.cxx11abi, archs=cell.archs,
                                platform=cell.platform)
            if reason:
                raise config.error(key, f"{block.name}: impossible cell ({cell.describe()}): {reason}",
                                   hint="remove the value or add an exclude = [{...}] rule for it")
            if cell.wheel in seen:
                first = config.locator.line(seen[cell.wheel])
                abi3 = (f"; {cell.package} wheels are {cell.abi3}-abi3, one for every Python: give the block one "
                        "build Python" if cell.abi3 else "")
                raise config.error((*key, "name"), f"{block.name}: duplicate cell {cell.wheel} (already produced by "
                                   f"the [[matrix]] entry at line {first}){abi3}")
            seen[cell.wheel] = key
            cells.append(cell)
    return cells


SUMMARY_AXES = ("package", "version", "torch", "cuda", "python", "cxx11abi", "platform", "variant")


def _summary_value(cell: Cell, axis: str) -> str:
    if axis == "version":  # versions of different packages are different things (flash-attn 2.8.3.post2)
        return f"{cell.package} {cell.version}"
    return _cell_value(cell, axis) or "-"


def _summary_order(value: str) -> tuple[Any, ...]:
    """Versions in numeric order (torch 2.9 before 2.10), anything else by name."""
    parts = value.rsplit(" ", 1)
    try:
        return (parts[0] if len(parts) == 2 else "", Version(parts[-1]), value)
    except InvalidVersion:
        return (value, Version("0"), value)


def summary(cells: Sequence[Cell]) -> dict[str, dict[str, int]]:
    """Cell counts per value of each axis (and ``total``): what ``wheelfarm matrix --summary`` prints."""
    out: dict[str, dict[str, int]] = {"total": {"cells": len(cells)}}
    for axis in SUMMARY_AXES:
        counts = Counter(_summary_value(c, axis) for c in cells)
        out[axis] = {value: counts[value] for value in sorted(counts, key=_summary_order)}
    return out


SELECT_KEYS = ("package", "version", "torch", "cuda", "python", "cxx11abi", "archs", "variant", "platform",
               "wheel", "index", "group")


def _cell_value(cell: Cell, key: str) -> str:
    if key == "cxx11abi":
        return cell.abi_flag
    if key == "archs":
        return ",".join(cell.archs)
    return str(getattr(cell, key))


def parse_selectors(selectors: Sequence[str]) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for item in selectors:
        key, sep, pattern = item.partition("=")
        key = key.strip()
        if not sep:
            raise BadInput(f"--select {item!r}: expected KEY=GLOB, e.g. torch=2.8 or python=3.1*")
        if key not in SELECT_KEYS:
            raise BadInput(f"--select {item!r}: unknown key {key!r}", hint=_close(key, SELECT_KEYS)
                           or f"keys: {', '.join(SELECT_KEYS)}")
        if key == "cxx11abi":
            pattern = pattern.upper()
        parsed.setdefault(key, []).append(pattern)
    return parsed


def select(cells: Iterable[Cell], selectors: Sequence[str]) -> list[Cell]:
    """Keep cells matching every key (patterns of one key are alternatives)."""
    parsed = parse_selectors(selectors)
    return [c for c in cells
            if all(any(fnmatch.fnmatchcase(_cell_value(c, k), p) for p in pats) for k, pats in parsed.items())]


def _close(word: str, options: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(word, list(options), n=1)
    return f"did you mean {match[0]!r}?" if match else None


def with_variant(config: Config, cell: Cell, name: str) -> Cell:
    """``cell`` as variant ``name`` builds it (its archs and patches): for a bench of a variant no block lists."""
    if name not in config.variants:
        raise BadInput(f"unknown variant {name!r}", hint=_close(name, config.variants)
                       or f"variants: {', '.join(config.variants) or 'none in build_matrix.toml'}")
    variant = config.variants[name]
    return dataclasses.replace(cell, variant=name, archs=variant.archs or cell.archs, patches=variant.patches or "",
                               disable=variant.disable)
