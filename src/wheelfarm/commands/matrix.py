"""``wheelfarm matrix``: list the cells of build_matrix.toml with their wheel names."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from ..settings import add_matrix_options, load_config, selected_cells

NAME = "matrix"
HELP = "List the matrix cells and their wheel file names (a table, or --json)."


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_matrix_options(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list of cells (for CI matrices)")


def execute(args: argparse.Namespace) -> int:
    config = load_config(args)
    cells = selected_cells(config, args)
    if args.json:
        print(json.dumps([c.to_json(config) for c in cells], indent=2))
        return 0
    table = Table(title=f"{len(cells)} cells from {config.path.name}", show_lines=False)
    for column in ("package", "version", "torch", "CUDA", "py", "abi", "archs", "variant", "wheel"):
        table.add_column(column, overflow="fold")
    for c in cells:
        table.add_row(c.package, c.version, c.torch, c.cuda, c.python, c.abi_flag, ",".join(c.archs),
                      c.variant or "-", c.wheel)
    Console().print(table)
    return 0
