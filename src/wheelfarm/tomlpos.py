"""Find the line of a key in a TOML document, so errors can say ``build_matrix.toml:LINE``.

tomllib gives values, not positions. This small scanner follows table headers (``[a.b]``, ``[[a]]``) and
``key = value`` lines; it answers the line where a key path is assigned, or where its table starts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_ASSIGN = re.compile(r"^\s*((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_.\- ]+?))\s*=")

Path = Sequence[str | int]


def split_dotted(key: str) -> list[str]:
    """``a."b.c".d`` → ``["a", "b.c", "d"]``."""
    parts = re.findall(r'"([^"]*)"|\'([^\']*)\'|([^.\s]+)', key)
    return [next(p for p in groups if p) if any(groups) else "" for groups in parts]


class Locator:
    def __init__(self, text: str) -> None:
        self._table_lines: dict[tuple[str | int, ...], int] = {}
        self._key_lines: dict[tuple[str | int, ...], int] = {}
        self._scan(text)

    def _scan(self, text: str) -> None:
        current: tuple[str | int, ...] = ()
        array_counts: dict[tuple[str | int, ...], int] = {}
        for lineno, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header and not line.lstrip().startswith("#"):
                keys = tuple(split_dotted(header.group(2)))
                if header.group(1) == "[[":
                    index = array_counts.get(keys, 0)
                    array_counts[keys] = index + 1
                    current = (*keys, index)
                else:
                    current = self._resolve_arrays(keys, array_counts)
                self._table_lines.setdefault(current, lineno)
                continue
            assign = _ASSIGN.match(line)
            if assign and not line.lstrip().startswith("#"):
                keys = tuple(split_dotted(assign.group(1).strip()))
                self._key_lines.setdefault((*current, *keys), lineno)

    @staticmethod
    def _resolve_arrays(
        keys: tuple[str, ...], counts: dict[tuple[str | int, ...], int]
    ) -> tuple[str | int, ...]:
        # [matrix.exclude] after [[matrix]] belongs to the last element of that array.
        out: list[str | int] = []
        for key in keys:
            out.append(key)
            if tuple(out) in counts:
                out.append(counts[tuple(out)] - 1)
        return tuple(out)

    def line(self, path: Path) -> int | None:
        """The line assigning ``path``, else the nearest enclosing table or key found."""
        key = tuple(path)
        nested = [line for k, line in (*self._table_lines.items(), *self._key_lines.items()) if k[: len(key)] == key]
        if key not in self._key_lines and key not in self._table_lines and nested:
            return min(nested)  # a table only present through sub-tables, e.g. [variant.sm90]
        while key:
            if key in self._key_lines:
                return self._key_lines[key]
            if key in self._table_lines:
                return self._table_lines[key]
            key = key[:-1]
        return None
