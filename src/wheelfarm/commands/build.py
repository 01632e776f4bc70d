"""``wheelfarm build``: build the selected cells into the wheelhouse, audit each wheel, print a summary."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from .. import log, repair, toolchain
from ..audit import Declared
from ..build import BuildPaths, BuildResult, build_cell
from ..compile_cache import parse_target
from ..config import Config
from ..errors import BadInput, BuildFailed
from ..matrix import Cell
from ..settings import add_matrix_options, load_config, selected_cells
from ..wheelmeta import sha256_file

NAME = "build"
HELP = "Build the selected cells (default: [farm].default-select) into the wheelhouse and audit them."


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_matrix_options(parser)
    parser.add_argument("--backend", choices=["auto", "host", "container"], default="auto",
                        help="where to compile: auto (default) = the manylinux-style container when an engine and "
                             "a build image are there, else the host, saying why; docs/containers.md")
    parser.add_argument("--wheelhouse", type=Path, help="output folder (default: [farm].wheelhouse)")
    parser.add_argument("--work-dir", type=Path, help="source trees, build dirs, logs (default: [farm].work-dir)")
    parser.add_argument("--python", type=Path,
                        help="reuse this interpreter's torch instead of a managed one (e.g. a GPU runner's); "
                             "in a container its site-packages is mounted read-only")
    parser.add_argument("--cuda-home", type=Path, help="reuse this CUDA toolkit instead of the PyPI-assembled one "
                                                       "(in a container: mounted at the same path)")
    parser.add_argument("--cache", metavar="DIR|s3://BUCKET/PREFIX",
                        help="the compile cache (sccache): a local folder (default: <work-dir>/compile-cache) or an "
                             "S3 bucket/prefix every runner shares, one sub-prefix per toolkit; S3 credentials from "
                             "the standard AWS chain, endpoint from AWS_ENDPOINT_URL")
    parser.add_argument("--max-jobs", type=int, help="upper bound for MAX_JOBS (the planner may choose fewer)")
    parser.add_argument("--no-audit", action="store_true",
                        help="skip the audit of each built wheel (on the host backend also its repair)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")


def _paths(config: Config, args: argparse.Namespace) -> BuildPaths:
    root = config.root
    return BuildPaths(work_dir=(args.work_dir or root / config.farm.work_dir).resolve(),
                      wheelhouse=(args.wheelhouse or root / config.farm.wheelhouse).resolve())


def _repair_and_audit(result: BuildResult, tc: toolchain.Toolchain) -> None:
    """The repair policy every backend applies (repair.py: auditwheel, torch and CUDA never vendored, the upstream
    name kept; the container backend runs the same command in the image), then the audit (name == contents).
    The wheel is replaced in the wheelhouse atomically; a failed repair or audit fails the cell."""
    assert result.wheel is not None
    declared = Declared(archs=result.cell.archs, torch=result.cell.torch)
    try:
        fixed = repair.repair(result.wheel, result.wheel.parent, keep_name=True, declared=declared,
                              torch_lib_dir=tc.torch_lib)
    except BuildFailed as exc:
        result.ok, result.error = False, str(exc)
        return
    result.wheel, result.sha256, result.size = fixed, sha256_file(fixed), fixed.stat().st_size


def _summary(results: list[BuildResult]) -> Table:
    table = Table(title="wheelfarm build")
    for column in ("cell", "wheel", "size", "sha256", "time", "peak RSS", "objects", "compile cache", "result"):
        table.add_column(column, overflow="fold")
    for r in results:
        table.add_row(r.cell.describe(), r.wheel.name if r.wheel else "-", f"{r.size / 2**20:.1f} MiB",
                      r.sha256[:16], f"{r.seconds:.0f}s", f"{r.peaks.total_mb} MB",
                      f"{r.objects_compiled}/{r.objects_total}",
                      f"{r.cache.kernel_hits} .cu hits, {r.cache.kernel_misses} compiled", "ok" if r.ok else "FAILED")
    return table


def run_builds(config: Config, cells: list[Cell], args: argparse.Namespace) -> list[BuildResult]:
    paths = _paths(config, args)
    cache = parse_target(args.cache, paths.work_dir / "compile-cache")
    results = []
    for index, cell in enumerate(sorted(cells, key=lambda c: (c.group, c.python)), start=1):
        with log.step(f"[{index}/{len(cells)}] {cell.wheel}"):
            tc = toolchain.prepare(config, cell, python=args.python, cuda_home=args.cuda_home)
            log.info(f"toolchain: python {tc.python}, torch {tc.torch_version} (CUDA {tc.torch_cuda}, "
                     f"cxx11abi={tc.cxx11abi}), CUDA_HOME={tc.cuda_home} (nvcc {tc.nvcc_version}), "
                     f"{tc.compiler_version}")
            result = build_cell(config, cell, tc, paths, max_jobs=args.max_jobs, cache=cache)
            if result.ok and not args.no_audit:
                _repair_and_audit(result, tc)
            if not result.ok:
                log.error(f"{cell.wheel}: {result.error}")
            results.append(result)
    return results


def execute(args: argparse.Namespace) -> int:
    parse_target(args.cache, Path("compile-cache"))  # a bad --cache is bad input before anything is made
    config = load_config(args)
    cells = selected_cells(config, args, use_default=True)
    if not cells:
        raise BadInput(f"no cell of {config.path.name} matches --select {' '.join(args.select) or '(default)'}",
                       hint="list the cells with `wheelfarm matrix`")
    if args.python and len({c.python for c in cells}) > 1:
        raise BadInput("--python reuses one interpreter, but the selected cells need Pythons "
                       f"{sorted({c.python for c in cells})}", hint="add --select python=X.Y")
    backend = args.backend
    if backend == "auto":  # a container when an engine and a build image exist, else the host
        from ..container_build import unavailable_reason

        reason = unavailable_reason(config, cells)
        backend = "host" if reason else "container"
        if reason:
            log.warn(f"--backend auto: building on the HOST, not in a container: {reason}. The wheel's glibc floor "
                     "will be this host's. For the manylinux-style container: bash scripts/setup-podman.sh && "
                     "scripts/build-test-image.sh (or a production image, docs/containers.md)")
        else:
            log.info("--backend auto: building in the container (engine and build image found)")
    if backend == "container":
        from ..container_build import build_in_container

        results = build_in_container(config, cells, args)
    else:
        toolchain.check_host(config, cells, args.cuda_home)
        results = run_builds(config, cells, args)
    log.console.print(_summary(results))
    if args.json:
        args.json.write_text(json.dumps([r.to_json() for r in results], indent=2))
    return 0 if all(r.ok for r in results) else 1
