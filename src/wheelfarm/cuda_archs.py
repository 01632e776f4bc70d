"""The GPU code inside an ELF: SASS (``sm_XX`` cubins) and PTX (``compute_XX``), listed by ``cuobjdump``.

``cuobjdump`` comes from the pinned PyPI wheel ``nvidia-cuda-cuobjdump`` (290 KB), installed once into the
tools cache, so the audit does not depend on a CUDA toolkit being present.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import log, proc
from .errors import BuildFailed
from .paths import cache_dir

CUOBJDUMP_PACKAGE = "nvidia-cuda-cuobjdump"
# The oldest wheel on PyPI is 13.2; a newer cuobjdump lists older fatbins, and knows the newest archs.
CUOBJDUMP_VERSION = "13.5.37"

_ELF_LINE = re.compile(r"^ELF file\s+\d+:\s*\S*?\.(sm_\w+?)\.cubin\s*$")
_PTX_LINE = re.compile(r"^PTX file\s+\d+:\s*\S*?\.(sm_\w+?)\.ptx\s*$")
_NO_DEVICE_CODE = "does not contain device code"


@dataclass(frozen=True)
class GpuCode:
    sass: frozenset[str]  # {"sm_80", "sm_90a", ...}
    ptx: frozenset[str]  # {"compute_90", ...}

    @property
    def empty(self) -> bool:
        return not self.sass and not self.ptx


def tools_dir() -> Path:
    """Pinned helper tools live in ``<cache>/tools`` (see ``wheelfarm.paths``)."""
    return cache_dir() / "tools"


def find_cuobjdump(explicit: Path | None = None) -> Path:
    """``explicit``, else ``$WHEELFARM_CUOBJDUMP``, else ``$CUDA_HOME/bin/cuobjdump`` (the toolkit the wheel
    was built with, e.g. on an offline GPU runner), else the pinned PyPI cuobjdump (installed once)."""
    if explicit is not None:
        return explicit
    if env := os.environ.get("WHEELFARM_CUOBJDUMP"):
        return Path(env)
    cuda_home = os.environ.get("CUDA_HOME")
    if cuda_home and (Path(cuda_home) / "bin" / "cuobjdump").is_file():
        return Path(cuda_home) / "bin" / "cuobjdump"
    target = tools_dir() / f"{CUOBJDUMP_PACKAGE}-{CUOBJDUMP_VERSION}"
    exe = target / "nvidia" / f"cu{CUOBJDUMP_VERSION.split('.')[0]}" / "bin" / "cuobjdump"
    if exe.is_file():
        return exe
    try:
        _install(target)
    except subprocess.CalledProcessError as exc:
        fallback = shutil.which("cuobjdump")
        if fallback:
            log.warn(f"could not install {CUOBJDUMP_PACKAGE}=={CUOBJDUMP_VERSION}; using {fallback}")
            return Path(fallback)
        raise BuildFailed(
            f"cuobjdump lists the GPU code, and {CUOBJDUMP_PACKAGE}=={CUOBJDUMP_VERSION} did not install",
            hint="pass --cuobjdump PATH or set WHEELFARM_CUOBJDUMP",
        ) from exc
    return exe


def _install(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        spec = f"{CUOBJDUMP_PACKAGE}=={CUOBJDUMP_VERSION}"
        proc.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", partial, spec])
        with contextlib.suppress(OSError):  # another process may have finished first: its copy is as good
            partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def cuobjdump_version(cuobjdump: Path) -> str:
    out = proc.run([cuobjdump, "--version"], capture=True, check=False, quiet=True).stdout
    match = re.search(r"release [\d.]+, V([\d.]+)", out)
    return match.group(1) if match else "unknown"


def parse_listing(text: str) -> GpuCode:
    """Parse ``cuobjdump --list-elf --list-ptx`` output."""
    sass, ptx = set(), set()
    for line in text.splitlines():
        if m := _ELF_LINE.match(line.strip()):
            sass.add(m.group(1))
        elif m := _PTX_LINE.match(line.strip()):
            ptx.add(m.group(1).replace("sm_", "compute_", 1))
    return GpuCode(frozenset(sass), frozenset(ptx))


def gpu_code(cuobjdump: Path, elf: Path) -> GpuCode:
    """The SASS and PTX architectures embedded in one ELF file (empty for host-only code)."""
    result = proc.run([cuobjdump, "--list-elf", "--list-ptx", elf], capture=True, check=False, quiet=True)
    if result.returncode != 0:
        if _NO_DEVICE_CODE in result.stdout + result.stderr:
            return GpuCode(frozenset(), frozenset())
        raise BuildFailed(
            f"cuobjdump failed on {elf.name} (exit {result.returncode}): {result.stderr.strip()}"
        )
    return parse_listing(result.stdout)


def normalize_arch(arch: str) -> tuple[str, bool]:
    """``"80"``/``"8.0"``/``"sm_80"``/``"90a"``/``"90+PTX"`` → (``"sm_80"``, wants_ptx)."""
    value = arch.strip()
    wants_ptx = value.upper().endswith("+PTX")
    value = value[: -len("+PTX")] if wants_ptx else value
    value = value.removeprefix("sm_").removeprefix("compute_").replace(".", "")
    if not re.fullmatch(r"\d{2,3}[a-z]?", value):
        raise ValueError(f"not a CUDA architecture: {arch!r} (expected e.g. 80, 9.0, 90a, sm_90, 90+PTX)")
    return f"sm_{value}", wants_ptx


def arch_sort_key(name: str) -> tuple[int, str]:
    digits = re.search(r"\d+", name)
    return (int(digits.group()) if digits else 0, name)
