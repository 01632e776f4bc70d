"""``wheelfarm bench``: build cost as ratios against the upstream method, side by side on this machine."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from .. import bench, log
from ..compile_cache import parse_target
from ..errors import BadInput
from ..matrix import expand, select, with_variant
from ..settings import add_matrix_options, load_config

NAME = "bench"
HELP = ("Measure build cost as ratios (wheelfarm vs the upstream method, extra Pythons, ninja span vs the limit, "
        "peak RSS vs the plan) on this machine, beside the recorded GPU-host runs; default: the fixture package.")
SKIPPABLE = ("upstream", "extra-python", "second-runner", "plan")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_matrix_options(parser)
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    parser.add_argument("--work-dir", type=Path,
                        help="where the build folders go; its wheelfarm/ and upstream/ are emptied first "
                             "(default: <[farm].work-dir>/bench)")
    parser.add_argument("--python", type=Path, help="reuse this interpreter and its torch (a GPU runner's)")
    parser.add_argument("--cuda-home", type=Path, help="reuse this CUDA toolkit instead of the PyPI-assembled one")
    parser.add_argument("--sdists", type=Path, action="append", default=[],
                        help="a folder of sdists to seed the fresh work dirs with (default: the farm's, the cache's)")
    parser.add_argument("--skip", nargs="+", action="extend", default=[], choices=SKIPPABLE,
                        help="leave out a measurement (e.g. upstream where two builds don't fit one machine hold)")
    parser.add_argument("--cache", metavar="s3://BUCKET/PREFIX",
                        help="the shared compile cache the wheelfarm builds and the second runner use (default: "
                             "moto's S3 server on 127.0.0.1 as a stand-in, when moto is installed)")
    parser.add_argument("--ninja-log", action="append", default=[], metavar="PATH:CORES[:LABEL]",
                        help="also analyse this recorded .ninja_log (docs/gpu-runs/*/ninja_log are always analysed)")
    parser.add_argument("--as-variant", metavar="NAME",
                        help="build the selected cells as this [variants] entry (its archs and patches), e.g. "
                             "sm90lite: flash-attn's 73 objects at ~43 %% of the work, both methods in one "
                             "GPU-machine hold")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the builds N times, alternating which method goes first; figures are medians")
    parser.add_argument("--no-build", action="store_true",
                        help="build nothing: time `plan` and analyse the recorded runs (seconds; for docs and CI)")


def execute(args: argparse.Namespace) -> int:
    config = load_config(args)
    selectors = list(args.select) or list(bench.DEFAULT_SELECT)
    extra_logs = [bench.parse_log_spec(spec) for spec in args.ninja_log]
    figures: list[bench.Figure] = []
    report = bench.Report(bench.describe_machine(), selectors, figures)
    if not args.no_build:
        cells = select(expand(config), selectors)
        if args.as_variant:
            cells = [with_variant(config, c, args.as_variant) for c in cells]
        work_dir = (args.work_dir or config.root / config.farm.work_dir / "bench").resolve()
        given = parse_target(args.cache, work_dir / "compile-cache") if args.cache else None
        if given is not None and not given.shared:
            raise BadInput(f"bench --cache {args.cache}: the second runner needs a shared cache",
                           hint="s3://BUCKET/PREFIX, or leave it out for moto's S3 server on 127.0.0.1")
        with contextlib.ExitStack() as stack:
            shared = given or (None if "second-runner" in args.skip else stack.enter_context(bench.s3_stand_in()))
            note = "" if given or shared is None else "moto's S3 server on 127.0.0.1 (stand-in for S3)"
            opts = bench.Options(work_dir=work_dir, python=args.python, cuda_home=args.cuda_home,
                                 sdists=tuple(args.sdists) or bench.default_sdists(config), skip=frozenset(args.skip),
                                 cache=shared, cache_note=note)
            report = bench.run(config, cells, selectors, opts, rounds=max(1, args.rounds))
    if "plan" not in args.skip:
        work_dir = (args.work_dir or config.root / config.farm.work_dir / "bench").resolve()
        report.figures.append(bench.time_plan(config, work_dir))
    report.figures.extend(bench.recorded_report(config.root, extra_logs))
    log.console.print(report.table(), width=None if log.console.is_terminal else 200)
    log.info(f"{bench.summarise(report.figures)}; {bench.load_note()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(sys.argv[2:] if sys.argv[1:2] == ["bench"] else []),
                                        indent=2) + "\n")
        log.info(f"wrote {args.json}")
    return 0
