"""``wheelfarm audit``: check that each wheel's name equals its contents; write ``<wheel>.audit.json``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..audit import AuditReport, Declared, audit_wheel, torch_lib_dir_for

NAME = "audit"
HELP = "Audit wheels: ABI, torch symbols, glibc floor, SASS archs and METADATA must match the name."


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("wheels", nargs="+", type=Path, metavar="WHEEL")
    parser.add_argument("--json", action="store_true", help="print the reports as a JSON list on stdout")
    parser.add_argument(
        "--cxx11abi",
        type=str.upper,
        choices=["TRUE", "FALSE"],
        help="declared ABI, for names outside the convention",
    )
    parser.add_argument("--archs", help="declared CUDA archs, e.g. 80,90 (SASS must be exactly these)")
    parser.add_argument("--torch", help="declared torch X.Y, for names outside the convention")
    parser.add_argument("--max-glibc", help="highest glibc the wheel may need, e.g. 2.28")
    parser.add_argument("--torch-lib-dir", type=Path, help="torch/lib of the torch to check symbols against")
    parser.add_argument("--python", help="an interpreter whose importable torch to check symbols against")
    parser.add_argument("--cuobjdump", type=Path, help="cuobjdump to use (default: the pinned PyPI one)")


def declared_from_args(args: argparse.Namespace) -> Declared:
    archs = (
        tuple(a.strip() for a in args.archs.replace(";", ",").split(",") if a.strip()) if args.archs else None
    )
    abi = None if args.cxx11abi is None else args.cxx11abi == "TRUE"
    return Declared(torch=args.torch, cxx11abi=abi, archs=archs, max_glibc=args.max_glibc)


def execute(args: argparse.Namespace) -> int:
    lib_dir = args.torch_lib_dir or (torch_lib_dir_for(args.python) if args.python else None)
    declared = declared_from_args(args)
    reports = [
        audit_wheel(w, declared=declared, torch_lib_dir=lib_dir, cuobjdump=args.cuobjdump)
        for w in args.wheels
    ]
    console = Console(stderr=args.json, highlight=False)
    for report in reports:
        render(report, console)
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=2))
    return 0 if all(r.passed for r in reports) else 1


def render(report: AuditReport, console: Console) -> None:
    verdict = Text("PASSED", style="bold green") if report.passed else Text("FAILED", style="bold red")
    console.print(Text.assemble(verdict, " ", report.wheel.name))
    table = Table(show_header=False, box=None, padding=(0, 1))
    for check in report.checks:
        mark = (
            Text("skip", style="dim")
            if check.skipped
            else (Text("ok", style="green") if check.passed else Text("FAIL", style="bold red"))
        )
        table.add_row(mark, check.name, Text(check.detail))
        if not check.passed and check.impact:
            table.add_row("", "", Text(f"→ {check.impact}", style="red"))
    console.print(table)
    console.print(Text(f"  audit: {report.json_path}", style="dim"))
