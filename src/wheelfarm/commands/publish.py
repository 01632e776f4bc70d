"""``wheelfarm publish WHEEL… --to TARGET``: gated, immutable, concurrency-safe publishing, then the index."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import log
from ..errors import BadInput
from ..publish import Options, gpu_exempt, publish
from ..store import Store, open_store

NAME = "publish"
HELP = (
    "Publish wheels (files or folders such as wheelhouse/) to a mirror: a directory, s3://bucket/prefix or "
    "github://owner/repo@tag; immutable, audit-gated, then reindexed."
)


def add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--to",
        dest="target",
        default=None,
        metavar="TARGET",
        help="a directory, s3://bucket/prefix, github://owner/repo@tag, or a [targets.NAME] of "
        "the matrix file (default: $WHEELFARM_MIRROR, else [farm] mirror, else ./mirror)",
    )
    parser.add_argument(
        "--endpoint-url", default=None, help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)"
    )
    parser.add_argument(
        "--pages-dir",
        default=None,
        help="github:// only: the folder that receives the index pages for GitHub Pages "
        "(default ./pages); wheel links point at the release assets",
    )


def open_target(args: argparse.Namespace) -> Store:
    return open_store(_target(args.target), endpoint_url=args.endpoint_url, pages_dir=args.pages_dir)


def _target(value: str | None) -> str:
    """``--to`` as given, a named target of the matrix file, or the default mirror."""
    matrix = Path(os.environ.get("WHEELFARM_MATRIX", "build_matrix.toml"))
    config = None
    if matrix.is_file() and (value is None or ("://" not in value and not Path(value).exists())):
        from ..config import load

        config = load(matrix)
    if value is None:
        return os.environ.get("WHEELFARM_MIRROR") or (config.farm.mirror if config else "mirror")
    if config and value in config.targets:
        return config.targets[value].url
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("wheels", nargs="+", metavar="WHEEL", help="wheel files, or folders of *.whl")
    add_target_options(parser)
    parser.add_argument(
        "--replace",
        action="store_true",
        help="overwrite a published wheel with different bytes (the old sha256 is logged in "
        "the index state's 'replaced' list); without it such a wheel is refused",
    )
    parser.add_argument(
        "--no-audit-gate",
        dest="audit_gate",
        action="store_false",
        help="publish wheels without a passing <wheel>.audit.json (for fixtures, not releases)",
    )
    parser.add_argument(
        "--require-gpu-result", action="store_true", help="refuse wheels without a passing <wheel>.gpu.json"
    )
    parser.add_argument("--gpu-untested", action="append", default=[], metavar="ARCH",
                        help="with --require-gpu-result: wheels for this architecture (aarch64) need no GPU result "
                             "(no GPU runner of it); they are published on the audit alone, and said so")


def _wheel_paths(items: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.glob("*.whl"))
            if not found:
                raise BadInput(f"{path}: no *.whl files in this folder")
            paths.extend(found)
        elif path.is_file() and path.suffix == ".whl":
            paths.append(path)
        else:
            raise BadInput(f"{path}: not a wheel file or a folder of wheels")
    return paths


def execute(args: argparse.Namespace) -> int:
    paths = _wheel_paths(args.wheels)
    store = open_target(args)
    opts = Options(
        replace=args.replace, audit_gate=args.audit_gate, require_gpu_result=args.require_gpu_result,
        gpu_untested=tuple(args.gpu_untested),
    )
    if opts.require_gpu_result:
        for path in paths:
            if gpu_exempt(path.name, opts.gpu_untested) and not path.with_name(path.name + ".gpu.json").is_file():
                log.warn(f"{path.name}: no GPU runner for its architecture: published on its audit alone")
    with log.step(f"publish {len(paths)} wheel(s) to {store.description}"):
        results = publish(store, paths, opts)
    for file, status in results.items():
        print(f"{status}\t{file}")
    return 0
