"""One logger that knows CI: timed steps, GitHub Actions ``::group::``/``::error::`` markers, rich output."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape

console = Console(stderr=True, highlight=False)


def on_github_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def info(message: str) -> None:
    console.print(message, markup=False, soft_wrap=True)


def warn(message: str) -> None:
    if on_github_actions():
        print(f"::warning::{message}", flush=True)
    console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def error(message: str) -> None:
    if on_github_actions():
        print(f"::error::{message}", flush=True)
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """A timed, titled step; folded into a group on GitHub Actions."""
    start = time.monotonic()
    if on_github_actions():
        print(f"::group::{title}", flush=True)
    console.print(f"[bold cyan]▶ {escape(title)}[/]", soft_wrap=True)
    try:
        yield
    finally:
        if on_github_actions():
            print("::endgroup::", flush=True)
        console.print(f"[dim]  {escape(title)}: {time.monotonic() - start:.1f}s[/]", soft_wrap=True)
