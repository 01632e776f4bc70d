"""Tiny generators over pyelftools: the ELF facts the audit needs (in the manner of auditwheel's elfutils)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.hash import ELFHashSection, GNUHashSection
from elftools.elf.sections import SymbolTableSection

ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class Symbol:
    name: str
    defined: bool
    weak: bool
    dynamic: bool = True  # from .dynsym (else .symtab)


def is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == ELF_MAGIC


@contextlib.contextmanager
def _elf(path: Path) -> Iterator[ELFFile]:
    with path.open("rb") as f:
        yield ELFFile(f)


def _symbols(elf: ELFFile, section_names: Iterable[str]) -> Iterator[Symbol]:
    for name in section_names:
        section = elf.get_section_by_name(name)
        if not isinstance(section, SymbolTableSection):
            continue
        for sym in section.iter_symbols():
            if not sym.name or sym["st_info"]["type"] in ("STT_SECTION", "STT_FILE"):
                continue
            defined, weak = sym["st_shndx"] != "SHN_UNDEF", sym["st_info"]["bind"] == "STB_WEAK"
            yield Symbol(sym.name, defined, weak, dynamic=name == ".dynsym")


def symbols(path: Path, *, static: bool = True) -> Iterator[Symbol]:
    """Every named symbol of ``.dynsym`` (and ``.symtab`` unless stripped or ``static=False``)."""
    with _elf(path) as elf:
        yield from _symbols(elf, (".dynsym", ".symtab") if static else (".dynsym",))


def defined_among(path: Path, names: Iterable[str]) -> set[str]:
    """Which of ``names`` the shared library at ``path`` exports (defined, dynamic); uses its hash table."""
    wanted = set(names)
    with _elf(path) as elf:
        table = next((s for s in elf.iter_sections() if isinstance(s, GNUHashSection | ELFHashSection)), None)
        if table is None:
            return {s.name for s in _symbols(elf, (".dynsym",)) if s.defined and s.name in wanted}
        found = set()
        for name in wanted:
            sym = table.get_symbol(name)
            if sym is not None and sym["st_shndx"] != "SHN_UNDEF":
                found.add(name)
        return found
