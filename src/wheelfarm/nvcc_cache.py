#!/usr/bin/env python3
"""A compile cache for nvcc that hits across Python versions (torch runs it through ``PYTORCH_NVCC``).

72 of flash-attn's 73 objects come from .cu files that never include Python.h (DESIGN.md), yet their command
lines differ per Python (the Python include dir, the venv's torch path), so ninja and ccache rebuild them. This
wrapper keys each compile on what decides the object — the source file's bytes, the command line with the
per-Python paths normalised away, the nvcc version, the torch version and the patched source's identity — and
stores an object only when nvcc's own dependency file shows it includes no Python header. Standard library only:
it runs under whatever interpreter the build uses.

Environment: WHEELFARM_REAL_NVCC (the nvcc to run), WHEELFARM_COMPILE_CACHE (the cache folder; unset = pass
through), WHEELFARM_CACHE_SALT (torch version + source identity), WHEELFARM_CACHE_STATS (a file counting hits).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_PY_INCLUDE = re.compile(r"/include/python3\.\d+[a-z]*/?$")
_SITE = re.compile(r"^.*?/(?:site|dist)-packages/")


SOURCES = (".cu", ".cpp", ".cc", ".cxx", ".c")


def _value_after(args: list[str], *flags: str) -> str | None:
    for i, arg in enumerate(args[:-1]):
        if arg in flags:
            return args[i + 1]
    return None


def source_of(args: list[str]) -> str | None:
    """The one source file compiled (torch may pass ``-c`` twice, so look for the file itself)."""
    found = [a for a in args if a.endswith(SOURCES) and not a.startswith("-") and Path(a).is_file()]
    return found[0] if len(found) == 1 else None


def _empty_dir(path: str) -> bool:
    """No file anywhere below ``path`` (a venv's include/ holds only an empty python3.X/)."""
    folder = Path(path)
    return not folder.is_dir() or not any(p.is_file() for p in folder.rglob("*"))


def normalise(args: list[str]) -> list[str]:
    """The command line without what varies per Python and per output path."""
    out: list[str] = []
    skip_next = False
    for i, arg in enumerate(args):
        if skip_next:
            skip_next = False
            continue
        if arg in ("-o", "--dependency-output", "-MF"):
            skip_next = True
            continue
        if arg == "-I" and i + 1 < len(args):
            arg = "-I" + args[i + 1]
            skip_next = True
        if arg.startswith("-I") and (_PY_INCLUDE.search(arg) or _empty_dir(arg[2:])):
            continue  # the Python headers (checked unused via the depfile) and empty dirs (a venv's include/)
        out.append(_SITE.sub("<site-packages>/", arg))
    return out


def cache_key(args: list[str], source: Path, nvcc_version: str, salt: str) -> str:
    digest = hashlib.sha256()
    for part in (*normalise(args), nvcc_version, salt):
        digest.update(part.encode() + b"\0")
    digest.update(source.read_bytes())
    return digest.hexdigest()


def python_dependent(depfile: Path) -> bool:
    text = depfile.read_text(errors="replace") if depfile.exists() else "Python.h"  # unknown: assume it is
    return "Python.h" in text or bool(re.search(r"/include/python3\.\d+", text))


def _nvcc_version(nvcc: str) -> str:
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout


def _count(stats: str | None, what: str) -> None:
    if stats:
        with open(stats, "a") as f:
            f.write(what + "\n")


def _store(entry: Path, obj: Path, depfile: Path | None) -> None:
    """Publish ``obj`` (and its depfile) into the cache atomically: a reader sees all or nothing."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".tmp-"))
    shutil.copy2(obj, tmp / "obj")
    if depfile is not None and depfile.exists():
        shutil.copy2(depfile, tmp / "dep")
    try:
        tmp.rename(entry)
    except OSError:  # another build stored it first
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    real = os.environ.get("WHEELFARM_REAL_NVCC", "nvcc")
    cache = os.environ.get("WHEELFARM_COMPILE_CACHE")
    out, src_arg = _value_after(argv, "-o"), source_of(argv)
    if not cache or not out or not src_arg or "-c" not in argv:
        return subprocess.call([real, *argv])
    depfile_arg = _value_after(argv, "--dependency-output", "-MF")
    key = cache_key(argv, Path(src_arg), _nvcc_version(real), os.environ.get("WHEELFARM_CACHE_SALT", ""))
    entry = Path(cache) / key[:2] / key
    stats = os.environ.get("WHEELFARM_CACHE_STATS")
    if (entry / "obj").exists():
        shutil.copy2(entry / "obj", out)
        if depfile_arg and (entry / "dep").exists():
            shutil.copy2(entry / "dep", depfile_arg)
        _count(stats, f"hit {src_arg}")
        return 0
    code = subprocess.call([real, *argv])
    if code == 0 and depfile_arg and not python_dependent(Path(depfile_arg)):
        _store(entry, Path(out), Path(depfile_arg))
        _count(stats, f"miss {src_arg}")
    else:
        _count(stats, f"uncached {src_arg}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
