"""cibuildwheel's in-container build steps as one shell script, for engines cibuildwheel cannot drive (chroot).

The script is made from the same ``[tool.cibuildwheel]`` table that podman/docker builds hand to cibuildwheel
(``cibw.cibuildwheel_table``), so both paths run the same hooks in the same order, with the same environment
and the same paths inside (/project, /wf/...):

    environment (evaluated per Python, in order) → before-all (once, first Python) → before-build →
    ``python -m build --wheel --no-isolation --skip-dependency-check`` of /project → repair-wheel-command

as cibuildwheel's Linux platform does (``/opt/python/<tag>/bin`` first on PATH, ``$CIBUILDWHEEL_BUILD_IDENTIFIER``
set, the repair's ``{wheel}``, ``{dest_dir}`` and ``{package}`` filled in). Pure: text in, text out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

from .cibw import GroupPlan, identifier
from .matrix import Cell

PROJECT = "/project"
OUTPUT = "/output"  # the repaired wheels: the host's cibw-out folder
BUILT = "/tmp/wheelfarm-built"


def _hook(lines: object) -> str:
    """A cibuildwheel hook (a string or a list joined with &&, as cibuildwheel does), made to stop the script at
    its first failing step as cibuildwheel's ``sh -c`` does (``set -e`` ignores all but the last of an && list)."""
    steps = [lines] if isinstance(lines, str) else list(cast(Sequence[str], lines))
    return f"{{ {' && '.join(steps)}\n}} || exit $?"


def _python_block(table: Mapping[str, object], cell: Cell, first: bool) -> list[str]:
    tag = f"{cell.python_tag}-{cell.python_tag}"
    env = table["environment"]
    assert isinstance(env, Mapping)
    repair = _hook(table["repair-wheel-command"]).replace("{wheel}", '"$wheel"').replace(
        "{dest_dir}", OUTPUT).replace("{package}", PROJECT)
    lines = [f"echo '::group::wheelfarm steps: {identifier(cell)}'", "(",
             f"export CIBUILDWHEEL_BUILD_IDENTIFIER={identifier(cell)}",
             f"export PATH=/opt/python/{tag}/bin:$PATH"]
    lines += [f'export {key}="{value}"' for key, value in env.items()]  # cibw.environment: no quotes inside
    if first and table.get("before-all"):
        lines.append(_hook(table["before-all"]))
    if table.get("before-build"):
        lines.append(_hook(table["before-build"]))
    lines += [f"rm -rf {BUILT} && mkdir -p {BUILT} {OUTPUT}",
              f"cd {PROJECT} && python -m build --wheel --no-isolation --skip-dependency-check --outdir {BUILT} . "
              "|| exit $?",
              f'wheel=$(ls {BUILT}/*.whl)', repair, ")"]
    return lines


def script(plan: GroupPlan) -> str:
    """The whole group's build as a bash script (exits at the first failing step, like cibuildwheel)."""
    table = plan.table()
    lines = ["#!/bin/bash", "# wheelfarm: the group's cibuildwheel steps, run by wheelfarm (steps.py)",
             "set -eo pipefail"]
    for index, cell in enumerate(plan.cells):
        lines += _python_block(table, cell, first=index == 0)
    return "\n".join(lines) + "\n"


def command() -> list[str]:
    return ["bash", "/wf/steps.sh"]
