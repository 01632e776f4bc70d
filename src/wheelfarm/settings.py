"""Where the matrix file is found and how CLI commands share the ``--matrix``/``--select`` options."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .config import Config, load
from .matrix import Cell, expand, select

DEFAULT_MATRIX = "build_matrix.toml"


def add_matrix_options(parser: argparse.ArgumentParser, *, selects: bool = True) -> None:
    parser.add_argument("--matrix", default=os.environ.get("WHEELFARM_MATRIX", DEFAULT_MATRIX),
                        help="the matrix file (default: ./build_matrix.toml or $WHEELFARM_MATRIX)")
    if selects:
        parser.add_argument("--select", nargs="+", action="extend", default=[], metavar="KEY=GLOB",
                            help="keep cells matching KEY=GLOB (keys: package, version, torch, cuda, python, "
                                 "cxx11abi, archs, variant, platform, wheel, index, group); repeat a key for OR")


def load_config(args: argparse.Namespace) -> Config:
    return load(Path(args.matrix))


def selected_cells(config: Config, args: argparse.Namespace, *, use_default: bool = False) -> list[Cell]:
    selectors = list(args.select)
    if not selectors and use_default:
        selectors = list(config.farm.default_select)
    return select(expand(config), selectors)
