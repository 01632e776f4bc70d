"""``wheelfarm gpu-test WHEEL``: prove a wheel on this machine's GPU, or skip/refuse with the reason."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import gputest, log

NAME = "gpu-test"
HELP = (
    "Install a wheel in a clean venv and check it on this machine's GPU against a PyTorch reference "
    "(plus a time-boxed subset of the package's own tests); writes <wheel>.gpu.json. "
    "Without a GPU: skip, exit 0."
)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("wheel", type=Path, help="the wheel file")
    p.add_argument(
        "--require-gpu",
        action="store_true",
        help="exit 1 instead of skipping when there is no GPU or an unsupported one",
    )
    p.add_argument(
        "--json", action="store_true", help="print the result as JSON on stdout (the verdict to stderr)"
    )
    p.add_argument(
        "--reuse-env",
        action="store_true",
        help="reuse the runner Python's torch (a venv layered over its site-packages, like "
        "--system-site-packages) when its X.Y, CUDA major and C++ ABI match the wheel's; "
        "otherwise a fresh venv that installs the wheel's torch",
    )
    p.add_argument(
        "--installed",
        action="store_true",
        help="test the package already installed in --python's environment (no venv, no install)",
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        metavar="PY",
        help="the runner's Python: creates the venv, provides torch with --reuse-env (default: this one)",
    )
    p.add_argument(
        "--find-links",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="wheels for pip (einops, pytest, torch for a fresh venv); alone it means --no-index",
    )
    p.add_argument("--index-url", metavar="URL", help="package index for pip (default: pip's configuration)")
    p.add_argument(
        "--extra-require",
        action="append",
        default=[],
        metavar="REQ",
        help="another requirement to install beside the wheel (repeatable)",
    )
    p.add_argument(
        "--checks", metavar="NAME", help="check script gpu_checks/NAME_checks.py (default: the package's)"
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="TOML",
        help="build_matrix.toml with the package's gpu-test table (default: ./build_matrix.toml if any)",
    )
    up = p.add_argument_group("the package's own tests (run only with --upstream-tests)")
    up.add_argument(
        "--upstream-tests",
        type=Path,
        metavar="SDIST_OR_DIR",
        help="the package's sdist (.tar.gz/.zip), its unpacked directory, or the test file itself",
    )
    up.add_argument(
        "--upstream-file",
        metavar="PATH",
        help="the test file inside the sdist (default: upstream-tests of build_matrix.toml)",
    )
    up.add_argument(
        "--upstream-select", metavar="EXPR", help="pytest -k expression (default: upstream-select)"
    )
    up.add_argument(
        "--upstream-timeout",
        type=int,
        metavar="S",
        help="time budget in seconds; the run is stopped there and counted (default: upstream-timeout)",
    )
    p.add_argument(
        "--workdir", type=Path, metavar="DIR", help="where the venv and logs go (default: a temp dir)"
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the venv and logs (always kept when a check fails)"
    )
    p.add_argument("--output", type=Path, metavar="PATH", help="result file (default: <wheel>.gpu.json)")


def execute(args: argparse.Namespace) -> int:
    opts = gputest.Options(
        wheel=args.wheel,
        require_gpu=args.require_gpu,
        reuse_env=args.reuse_env,
        installed=args.installed,
        python=args.python,
        find_links=tuple(args.find_links),
        index_url=args.index_url,
        extra_requires=tuple(args.extra_require),
        checks=args.checks,
        upstream_tests=args.upstream_tests,
        upstream_file=args.upstream_file,
        upstream_select=args.upstream_select,
        upstream_timeout=args.upstream_timeout,
        config=args.config,
        workdir=args.workdir,
        keep=args.keep,
        output=args.output,
    )
    outcome = gputest.run(opts)
    if args.json:
        print(json.dumps(outcome.payload(), indent=2))
        (log.error if outcome.exit_code else log.info)(outcome.message)
    else:
        print(outcome.message, flush=True)
    return outcome.exit_code
