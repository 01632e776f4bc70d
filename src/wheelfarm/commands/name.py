"""``wheelfarm name``: the upstream file name of one cell (pure naming, no compatibility judgement)."""

from __future__ import annotations

import argparse

from .. import naming
from ..errors import BadInput

NAME = "name"
HELP = "Print the upstream-convention wheel file name for one cell."


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--package", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--torch", required=True, help="2.4 or 2.4.1")
    parser.add_argument("--cuda", required=True, help="the toolkit the wheel is built with: 12.3 or 12.4.1")
    parser.add_argument("--python", required=True, help="3.12 (or cp312)")
    parser.add_argument("--cxx11abi", required=True, type=str.upper, choices=["TRUE", "FALSE"])
    parser.add_argument("--platform", default="linux_x86_64")
    parser.add_argument("--variant", default="")
    parser.add_argument("--metadata-version", action="store_true",
                        help="also print the METADATA Version the wheel must carry")


def execute(args: argparse.Namespace) -> int:
    python = args.python
    if python.startswith("cp") and python[2:].isdigit():
        python = f"{python[2]}.{python[3:]}"
    try:
        name = naming.wheel_name(args.package, args.version, args.torch, args.cuda, python,
                                 args.cxx11abi == "TRUE", args.platform, args.variant)
        version = naming.wheel_version(args.package, args.version, args.torch, args.cuda,
                                       args.cxx11abi == "TRUE", args.variant)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    print(name)
    if args.metadata_version:
        print(version)
    return 0
