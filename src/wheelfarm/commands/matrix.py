"""``wheelfarm matrix``: list the cells of build_matrix.toml with their wheel names."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from ..matrix import summary
from ..settings import add_matrix_options, load_config, selected_cells

NAME = "matrix"
HELP = "List the matrix cells and their wheel file names (a table, or --json), or count them by axis (--summary)."


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_matrix_options(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list of cells (for CI matrices)")
    parser.add_argument("--summary", action="store_true",
                        help="the cell counts by axis (package, version, torch, CUDA, Python, ABI, platform, "
                             "variant) and the total; with --json as an object")


def _print_summary(counts: dict[str, dict[str, int]], source: str) -> None:
    table = Table(title=f"{counts['total']['cells']} cells from {source}", show_header=True)
    table.add_column("axis")
    table.add_column("cells per value", overflow="fold")
    for axis, values in counts.items():
        if axis != "total":
            table.add_row(axis, "  ".join(f"{value}: {n}" for value, n in values.items()))
    Console().print(table)


def execute(args: argparse.Namespace) -> int:
    config = load_config(args)
    cells = selected_cells(config, args)
    if args.summary:
        counts = summary(cells)
        if args.json:
            print(json.dumps(counts, indent=2))
        else:
            _print_summary(counts, config.path.name)
        return 0
    if args.json:
        print(json.dumps([c.to_json(config) for c in cells], indent=2))
        return 0
    table = Table(title=f"{len(cells)} cells from {config.path.name}", show_lines=False)
    for column in ("package", "version", "torch", "CUDA", "py", "abi", "archs", "variant", "platform", "wheel"):
        table.add_column(column, overflow="fold")
    for c in cells:
        table.add_row(c.package, c.version, c.torch, c.cuda, c.python, c.abi_flag, ",".join(c.archs),
                      c.variant or "-", c.platform, c.wheel)
    Console().print(table)
    return 0
