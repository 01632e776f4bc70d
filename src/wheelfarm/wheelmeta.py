"""Make a built wheel's name and METADATA agree: upstream file name, the same Version inside (local label
included), the dist-info folder to match, and ``Requires-Dist: torch==X.Y.*`` — RECORD rewritten by ``wheel``.
"""

from __future__ import annotations

import email.parser
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from wheel.wheelfile import WheelFile

from .hashing import sha256_file

__all__ = ["read_metadata", "relabel", "rewrite_metadata", "sha256_file"]




def read_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        return zf.read(name).decode("utf-8")


def metadata_fields(text: str) -> email.message.Message:
    return email.parser.Parser().parsestr(text, headersonly=True)


def rewrite_metadata(text: str, version: str, pins: dict[str, str]) -> str:
    """Set ``Version`` and replace unpinned ``Requires-Dist`` entries named in ``pins`` by ``name<spec>``."""
    head, sep, body = text.partition("\n\n")
    lines = []
    for line in head.splitlines():
        if line.startswith("Version:"):
            line = f"Version: {version}"
        elif line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            spec = pins.get(canonicalize_name(req.name))
            if spec and not req.specifier:
                marker = f"; {req.marker}" if req.marker else ""
                line = f"Requires-Dist: {req.name}{spec}{marker}"
        lines.append(line)
    present = {canonicalize_name(Requirement(ln.split(":", 1)[1].strip()).name)
               for ln in lines if ln.startswith("Requires-Dist:")}
    lines += [f"Requires-Dist: {name}{spec}" for name, spec in pins.items() if name not in present]
    return "\n".join(lines) + (sep + body if sep else "\n")


def relabel(src: Path, dest: Path, *, pins: dict[str, str]) -> Path:
    """Write ``src`` as ``dest`` (a wheel file name in the upstream convention) with consistent metadata."""
    name = parse_wheel_filename(dest.name)[0]
    dist = dest.name.split("-")[0]
    file_version = dest.name.split("-")[1]
    if canonicalize_name(parse_wheel_filename(src.name)[0]) != name:
        raise ValueError(f"{src.name} and {dest.name} are different projects")
    new_info = f"{dist}-{file_version}.dist-info"
    tmpdir = Path(tempfile.mkdtemp(prefix=".relabel-", dir=dest.parent))
    tmp = tmpdir / dest.name
    try:
        with zipfile.ZipFile(src) as zin, WheelFile(tmp, "w") as zout:
            old_info = next(n.split("/")[0] for n in zin.namelist() if n.split("/")[0].endswith(".dist-info"))
            for info in zin.infolist():
                if info.is_dir():
                    continue  # folder entries (auditwheel repair writes "pkg/"): RECORD lists files only
                parts = info.filename.split("/", 1)
                if parts[0] == old_info:
                    if parts[1] == "RECORD":
                        continue  # WheelFile writes a fresh RECORD with every file's hash
                    info_name = f"{new_info}/{parts[1]}"
                else:
                    info_name = info.filename
                data = zin.read(info)
                if info_name == f"{new_info}/METADATA":
                    data = rewrite_metadata(data.decode("utf-8"), file_version, pins).encode("utf-8")
                new = zipfile.ZipInfo(info_name, date_time=info.date_time)
                new.external_attr, new.compress_type = info.external_attr, zipfile.ZIP_DEFLATED
                zout.writestr(new, data)
    except BaseException:  # a full disk, a bad zip, Ctrl-C: nothing half-written stays beside the wheels
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    # WheelFile needs the real file name; it is written aside and renamed into place only once whole.
    tmp.replace(dest)
    tmpdir.rmdir()
    assert re.fullmatch(r"[\w.+-]+\.whl", dest.name)
    return dest
