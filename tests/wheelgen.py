"""Test helper: write small but REAL wheels (valid zip, METADATA, WHEEL, RECORD with sha256s) on the fly.

The payload is pure Python (``<module>/__init__.py`` recording the version), labelled as such: these wheels
stand in for CUDA extension wheels where only the name, version, local label, tags and metadata matter
(store, index, publish and install tests). The same arguments always give the same bytes (fixed zip
timestamps); ``salt`` changes the bytes without changing the name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

from packaging.utils import canonicalize_name

_EPOCH = (2020, 1, 1, 0, 0, 0)


def cpython_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def make_wheel(
    dest: Path,
    name: str,
    version: str,
    *,
    python_tag: str | None = None,
    platform: str = "linux_x86_64",
    requires_dist: Sequence[str] = (),
    requires_python: str | None = ">=3.9",
    metadata_version: str | None = None,
    salt: str = "",
) -> Path:
    """Write ``{name}-{version}-{py}-{py}-{platform}.whl`` into ``dest`` and return its path."""
    py = python_tag or cpython_tag()
    dist = canonicalize_name(name).replace("-", "_")
    filename = f"{dist}-{version}-{py}-{py}-{platform}.whl"
    info = f"{dist}-{version}.dist-info"
    meta = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {metadata_version or version}",
        "Summary: wheelfarm test wheel (pure-Python stand-in payload)",
    ]
    if requires_python:
        meta.append(f"Requires-Python: {requires_python}")
    meta += [f"Requires-Dist: {r}" for r in requires_dist]
    files = {
        f"{dist}/__init__.py": (
            f'"""Pure-Python stand-in payload (wheelfarm tests)."""\n'
            f'__version__ = "{version}"\nSALT = "{salt}"\n'
        ).encode(),
        f"{info}/METADATA": ("\n".join(meta) + "\n").encode(),
        f"{info}/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: wheelfarm-tests\nRoot-Is-Purelib: false\n"
            f"Tag: {py}-{py}-{platform}\n"
        ).encode(),
    }
    record = [
        f"{path},sha256={_b64(hashlib.sha256(data).digest())},{len(data)}" for path, data in files.items()
    ]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / filename
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zi = zipfile.ZipInfo(path, date_time=_EPOCH)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    return out


def add_member(wheel: Path, name: str, data: bytes, compress_type: int = zipfile.ZIP_DEFLATED) -> Path:
    """Add one file to ``wheel`` with its line in RECORD (a wheel whose RECORD lies is refused by publish)."""
    with zipfile.ZipFile(wheel) as zf:
        members = [(info, zf.read(info)) for info in zf.infolist()]
    line = f"{name},sha256={_b64(hashlib.sha256(data).digest())},{len(data)}\n".encode()
    with zipfile.ZipFile(wheel, "w") as zf:
        for info, content in members:
            zf.writestr(info, content + line if info.filename.endswith(".dist-info/RECORD") else content)
        zi = zipfile.ZipInfo(name, date_time=_EPOCH)
        zi.external_attr, zi.compress_type = 0o644 << 16, compress_type
        zf.writestr(zi, data)
    return wheel


def write_result(wheel: Path, suffix: str, passed: bool, sha256: str | None = None) -> Path:
    """A ``<wheel>.audit.json`` / ``<wheel>.gpu.json`` side file with the top-level keys publishing reads:
    ``schema``, ``wheel``, ``sha256``, ``passed`` (the real audit writes more, see docs/audit.md)."""
    side = wheel.with_name(wheel.name + suffix)
    doc = {
        "schema": 1,
        "wheel": wheel.name,
        "sha256": sha256 or hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "passed": passed,
    }
    side.write_text(json.dumps(doc) + "\n")
    return side


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
