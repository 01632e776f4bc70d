"""``wheelfarm resolve``: the mirror index and wheel that fit this environment (or an image), or why not."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from .. import gpus
from ..resolve import Env, available_wheels, decide, image_env, inspect_env, min_arch, mirror_url

NAME = "resolve"
HELP = (
    "Print the variant index URL and wheel that fit the current environment (or --image), or why none fits "
    "and the `nox -s build` command that would build it."
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index-url",
        default=os.environ.get("WHEELFARM_INDEX_URL", "mirror"),
        help="the mirror root (holding simple/ and <variant>/simple/): URL or directory "
        "(default: $WHEELFARM_INDEX_URL, else ./mirror)",
    )
    parser.add_argument("--package", default="flash-attn")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--image",
        help="take the environment from a known image (wheelfarm/data/images.toml), "
        "e.g. nvcr.io/nvidia/pytorch:25.12-py3",
    )
    source.add_argument("--python", help="probe this interpreter instead of the current one")
    parser.add_argument("--gpu", help="assume this GPU: sm80, sm_90a, 12.0, sm121, or a name (T4, A100, L4, H100, "
                        "\"RTX 4090\", B200)")
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")


def execute(args: argparse.Namespace) -> int:
    env: Env = image_env(args.image) if args.image else inspect_env(args.python)
    if args.gpu:
        env = dataclasses.replace(env, gpu=gpus.capability(args.gpu))
    mirror = mirror_url(args.index_url)
    files = available_wheels(mirror, args.package)
    decision = decide(env, files, package=args.package, mirror=mirror, min_arch=min_arch(args.package))
    if args.json:
        print(json.dumps(dataclasses.asdict(decision), indent=2))
        return 0 if decision.ok else 1
    print(f"environment: {decision.env}")
    if decision.ok:
        print(f"wheel:       {decision.wheel}")
        print(f"index:       {decision.index_url}")
        print(f"install:     {decision.install}")
    else:
        for reason in decision.reasons:
            print(f"no wheel:    {reason}")
        for near in decision.nearest:
            print(f"nearest:     {near}")
        if decision.build_command:
            print(f"build it:    {decision.build_command}")
    for note in decision.notes:
        print(f"note:        {note}")
    return 0 if decision.ok else 1
