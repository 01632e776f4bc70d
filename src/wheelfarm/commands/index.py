"""``wheelfarm index --to TARGET``: rebuild the mirror's index pages from what is stored."""

from __future__ import annotations

import argparse

from .. import log
from ..publish import reindex, rescan
from .publish import add_target_options, open_target

NAME = "index"
HELP = (
    "Rebuild a mirror's PEP 503/691 index (global simple/ and one <variant>/simple/ per local label) "
    "from its index state; --rescan first reconciles the state with the stored wheels."
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    parser.add_argument(
        "--rescan",
        action="store_true",
        help="add stored wheels (with their .metadata) missing from the index state, e.g. after "
        "a crashed publish, and drop entries whose wheel is gone",
    )


def execute(args: argparse.Namespace) -> int:
    store = open_target(args)
    with log.step(f"index {store.description}"):
        if args.rescan:
            state = rescan(store)
            log.info(f"index state: {len(state.entries)} wheel(s)")
        pages = reindex(store)
    print(f"{pages} index pages written for {store.description}")
    return 0
