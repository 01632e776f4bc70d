"""``wheelfarm plan --against TARGET``: the matrix cells a mirror lacks, as build jobs for a CI matrix."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .. import log
from ..config import Config
from ..plan import MATRIX_LIMIT, Plan, open_reader, plan_against
from ..settings import add_matrix_options, load_config, selected_cells
from ..store import open_store

NAME = "plan"
HELP = (
    "Compare the matrix with what a mirror holds (wheel + passing audit, and GPU result with "
    "--require-gpu-result) and print the missing cells as build jobs: one per build group, its Pythons "
    "together; --json gives GitHub Actions strategy.matrix chunks of at most 256 jobs."
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_matrix_options(parser)
    parser.add_argument(
        "--against", metavar="TARGET", default=None,
        help="the mirror: a directory, s3://bucket/prefix, github://owner/repo@tag, http(s)://… (a served "
             "mirror, read without credentials) or a [targets.NAME] of the matrix file "
             "(default: $WHEELFARM_MIRROR, else [farm] mirror)")
    parser.add_argument("--endpoint-url", default=None,
                        help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    parser.add_argument("--json", action="store_true",
                        help="print the plan as JSON: counts and 'chunks', each a strategy.matrix {'include': […]}")
    parser.add_argument("--max-jobs", type=int, default=MATRIX_LIMIT, metavar="N",
                        help=f"jobs per chunk (default and most: {MATRIX_LIMIT}, GitHub Actions' matrix limit)")
    parser.add_argument("--force", action="store_true",
                        help="plan every selected cell, whatever the mirror holds (the mirror is not read)")
    parser.add_argument("--require-gpu-result", action="store_true",
                        help="a wheel counts as present only with a passing .gpu.json too")
    parser.add_argument("--gpu-untested", action="append", default=[], metavar="ARCH",
                        help="with --require-gpu-result: wheels for this architecture (aarch64) count on their audit "
                             "alone (publish's rule)")
    parser.add_argument("--github-output", type=Path, metavar="FILE",
                        help="append matrix=<first chunk>, jobs, missing and chunks to FILE ($GITHUB_OUTPUT)")


def resolve_target(config: Config, value: str | None) -> str:
    """``--against`` as given, a named target of the matrix file, or the default mirror."""
    if value is None:
        return os.environ.get("WHEELFARM_MIRROR") or config.farm.mirror
    if value in config.targets and "://" not in value and not Path(value).exists():
        return config.targets[value].url
    return value


def write_github_output(path: Path, result: Plan) -> None:
    """The plan job's outputs: the first chunk as the build matrix (the rest go to the next run)."""
    matrices = result.matrices()
    first = matrices[0] if matrices else {"include": []}
    lines = {"matrix": json.dumps(first, separators=(",", ":")), "jobs": str(len(first["include"])),
             "missing": str(len(result.missing)), "chunks": str(len(matrices))}
    with path.open("a", encoding="utf-8") as out:
        out.writelines(f"{key}={value}\n" for key, value in lines.items())


def _report(result: Plan, target: str, seconds: float) -> str:
    if not result.missing:
        return f"nothing to build: all {result.total} selected cells are in {target} ({seconds:.1f}s)"
    how = "forced: every selected cell" if result.forced else f"{len(result.missing)} of {result.total} cells missing"
    lines = [f"{how} in {target} → {len(result.jobs)} build job(s) in {len(result.chunks)} chunk(s) "
             f"of ≤{result.chunk_size} ({seconds:.1f}s)"]
    for job in result.jobs:
        lines.append(f"  {job.group} [{job.platform}, runs on {job.runner}] python {' '.join(job.pythons)}")
        lines.append(f"      wheelfarm build --select {' '.join(job.select)}")
    return "\n".join(lines)


def execute(args: argparse.Namespace) -> int:
    config = load_config(args)
    cells = selected_cells(config, args)
    target = resolve_target(config, args.against)
    reader = None if args.force else open_reader(
        target, lambda t: open_store(t, endpoint_url=args.endpoint_url))
    description = reader.description if reader else target
    result, seconds = plan_against(cells, reader, force=args.force, require_gpu=args.require_gpu_result,
                                   gpu_untested=args.gpu_untested,
                                   chunk_size=args.max_jobs,
                                   runners={name: p.runner for name, p in config.platforms.items()})
    warnings = [f"{wheel}: stored in {description} without a passing result; a rebuild publishes only with "
                "`publish --replace`" for wheel in result.incomplete]
    if result.chunks[1:]:
        warnings.append(f"{len(result.jobs)} jobs exceed one matrix of {result.chunk_size}: a CI run builds the "
                        "first chunk; the next run plans the rest")
    if args.github_output:
        write_github_output(args.github_output, result)
    report = _report(result, description, seconds)
    if args.json:  # stdout carries the JSON only (log.warn would add ::warning:: lines there on Actions)
        print(json.dumps({**result.to_json(description), "warnings": warnings}, indent=2))
        for message in warnings:
            log.console.print(f"warning: {message}", markup=False, soft_wrap=True)
        log.info(report.splitlines()[0])
    else:
        for message in warnings:
            log.warn(message)
        print(report)
    return 0
