# /// script
# dependencies = ["nox>=2024.10.9"]
# ///
"""wheelfarm's sessions: each one calls the ``wheelfarm`` package; no logic lives here."""

from __future__ import annotations

from pathlib import Path

import nox

nox.needs_version = ">=2024.10.9"
nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests"]

PYTHON = "3.11"
PINNED_TOOLS = ["ruff==0.14.7", "mypy==1.19.0"]


def _install(session: nox.Session, *extras: str) -> None:
    session.install("-e", f".[{','.join(extras)}]" if extras else ".")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit tests and the end-to-end fixture build (real nvcc, real pip, real podman where present)."""
    _install(session, "test")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff and mypy over the package."""
    _install(session)
    session.install(*PINNED_TOOLS)
    session.run("ruff", "check", "src", "tests", "noxfile.py")
    session.run("mypy")


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
    wheels = sorted(str(p) for p in Path("wheelhouse").glob("*.whl"))
    if not wheels:
        session.skip("no wheels in wheelhouse/: run `nox -s build` first")
    for wheel in wheels:
        session.run("wheelfarm", "gpu-test", wheel, "--reuse-env", *session.posargs)


if __name__ == "__main__":
    nox.main()
