"""Typed errors: each carries the exit code the CLI returns and, where possible, what to do next.

Exit codes (DESIGN.md "Interfaces"): 0 ok, 1 a build/test/publish failed, 2 bad input.
"""

from __future__ import annotations


class WheelfarmError(Exception):
    """Base class; the CLI catches only these."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class BadInput(WheelfarmError):
    """The user's input (toml, flags, sdist, patch, environment) is wrong: exit 2."""

    exit_code = 2


class ConfigError(BadInput):
    """A problem in build_matrix.toml, located at ``file:line``."""

    def __init__(self, path: str, line: int | None, message: str, *, hint: str | None = None) -> None:
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {message}", hint=hint)
        self.path = path
        self.line = line


class BuildFailed(WheelfarmError):
    """A build step failed (compiler error, OOM kill, audit failure): exit 1."""


class PublishFailed(WheelfarmError):
    """Publishing refused or failed (immutability, upload error): exit 1."""
