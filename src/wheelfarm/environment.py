"""The consumer's environment — what a wheel must match — taken three ways, and the known images.

- ``inspect_env(python)``: run ``resources/probe.py`` (stdlib only) under an interpreter, this one by default;
- ``from_probe(json)``: the same facts printed by that probe elsewhere (``python -c "$(curl <mirror>/probe.py)"`` in
  a Colab cell, an image, a cluster node) and handed to ``wheelfarm resolve --env FILE|-``;
- ``manual_env(...)``: facts given by hand (``--torch 2.8.0 --cuda 12.8 --python 3.12 --cxx11abi TRUE --glibc 2.35``);
- ``image_env(name)``: a row of ``data/images.toml`` (pytorch/pytorch, NGC, Hugging Face DLCs), each fact with
  its source.

Consumer side: this module needs only ``packaging`` (and tomli on 3.10), never the farm's dependencies.
"""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from packaging.version import InvalidVersion, Version

from . import proc
from .errors import BadInput

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROBE_FORMAT = 1


@dataclass(frozen=True)
class Env:
    python: str  # "3.11"
    torch: str | None  # "2.14.1"; None: torch is not installed
    cuda: str | None  # torch.version.cuda, "13.0"; None: a CPU build of torch
    cxx11abi: bool | None  # torch._C._GLIBCXX_USE_CXX11_ABI
    glibc: str | None = None  # "2.39"
    gpu: tuple[int, int] | None = None  # compute capability of device 0
    machine: str = "x86_64"
    source: str = "this environment"
    torch_local: str = ""  # torch's local label: "cu130", NGC's "ecf3bae40a"

    def describe(self) -> str:
        abi = "?" if self.cxx11abi is None else str(self.cxx11abi).upper()
        gpu = f"sm{self.gpu[0]}{self.gpu[1]}" if self.gpu else "none seen"
        torch = (self.torch or "not installed") + (f"+{self.torch_local}" if self.torch_local else "")
        return (
            f"Python {self.python}, torch {torch} (CUDA {self.cuda or '-'}, "
            f"cxx11abi {abi}), glibc {self.glibc or '?'}, {self.machine}, GPU {gpu} [{self.source}]"
        )

    @property
    def prerelease(self) -> bool:
        """A torch that PyPI never shipped (NGC's ``2.6.0a0+ecf3bae40a``, a nightly ``2.10.0.dev20251001``)."""
        return bool(self.torch) and _version(self.torch or "").is_prerelease


def _version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion as exc:
        raise BadInput(f"torch version {text!r} is not a PEP 440 version") from exc


def probe_source() -> str:
    """The probe script the mirror serves as ``probe.py``."""
    return resources.files("wheelfarm").joinpath("resources/probe.py").read_text()


def inspect_env(python: str | None = None) -> Env:
    """Probe ``python`` (default: this interpreter) for the facts a wheel must match."""
    exe = python or sys.executable
    try:
        out = proc.run([exe, "-c", probe_source()], capture=True, quiet=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BadInput(f"--python {exe}: could not run the probe with it ({type(exc).__name__})",
                       hint="give an interpreter (a path, or a command on PATH) that runs Python 3") from exc
    if not out.stdout.strip():
        raise BadInput(f"--python {exe}: the probe printed nothing: is that a Python interpreter?")
    return from_probe(out.stdout, source="this environment" if python is None else f"--python {exe}")


_HOW = "write it with: python -c \"$(curl -fsSL <mirror>/probe.py)\" > env.json"


def from_probe(text: str, *, source: str = "probe") -> Env:
    """An ``Env`` from the probe's JSON (its last JSON line: a stray line printed before it is ignored); BadInput
    naming what is wrong with it."""
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("{")]
    try:
        raw = json.loads(lines[-1] if lines else text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{source}: not the probe's JSON ({exc.msg} at line {exc.lineno})", hint=_HOW) from exc
    if not isinstance(raw, dict) or "python" not in raw:
        raise BadInput(f"{source}: not the probe's JSON (no \"python\" key)", hint=_HOW)
    fmt = raw.get("probe", PROBE_FORMAT)
    if not isinstance(fmt, int):
        raise BadInput(f"{source}: \"probe\" is {fmt!r}, not a format number", hint=_HOW)
    if fmt > PROBE_FORMAT:
        raise BadInput(f"{source}: probe format {fmt} is newer than this wheelfarm's ({PROBE_FORMAT})",
                       hint="upgrade wheelfarm")

    def text_of(key: str, *, xy: bool = False) -> str | None:
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or (xy and not _is_xy(value.split("-")[0])):
            raise BadInput(f"{source}: {key!r} is {value!r}, expected " + ("X.Y" if xy else "a string"), hint=_HOW)
        return value

    if raw.get("torch_error") and not raw.get("torch"):
        raise BadInput(f"{source}: torch is installed there but does not import ({raw['torch_error']})",
                       hint="fix that torch first: no extension wheel can load without it")
    gpu, abi = raw.get("gpu"), raw.get("cxx11abi")
    if gpu is not None and not (isinstance(gpu, list) and len(gpu) == 2 and all(isinstance(g, int) for g in gpu)):
        raise BadInput(f"{source}: \"gpu\" is {gpu!r}, expected [major, minor]", hint=_HOW)
    if abi is not None and not isinstance(abi, bool):
        raise BadInput(f"{source}: \"cxx11abi\" is {abi!r}, expected true, false or null", hint=_HOW)
    python = text_of("python", xy=True)
    torch, _, local = (text_of("torch") or "").partition("+")
    if torch:
        _version(torch)
    glibc = text_of("glibc", xy=True)
    return Env(
        python=str(python),
        torch=torch or None,
        cuda=text_of("cuda", xy=True),
        cxx11abi=abi,
        glibc=glibc.split("-")[0] if glibc else None,
        gpu=(gpu[0], gpu[1]) if gpu else None,
        machine=normalize_machine(text_of("machine") or "x86_64"),
        source=source,
        torch_local=local,
    )


MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def normalize_machine(value: str) -> str:
    """x86_64 or aarch64 (amd64 and arm64 are other names of them); BadInput for anything else."""
    machine = MACHINES.get(value.lower())
    if machine is None:
        raise BadInput(f"machine {value!r}: wheelfarm builds for x86_64 and aarch64 (also spelled amd64, arm64)")
    return machine


def manual_env(*, python: str, torch: str, cuda: str | None, cxx11abi: str | None, glibc: str | None,
               machine: str = "x86_64") -> Env:
    """An ``Env`` given by hand. ``cuda`` None is refused (say ``--cuda cpu`` for a CPU torch); ``cxx11abi`` None is
    torch's PyPI default (TRUE from 2.7, FALSE before)."""
    for flag, value in (("--python", python), ("--glibc", glibc), ("--cuda", cuda if cuda != "cpu" else None)):
        if value is not None and not _is_xy(value):
            raise BadInput(f"{flag} {value!r}: expected X.Y (e.g. 3.12, 2.35, 12.8)")
    if cuda is None:
        raise BadInput("--torch without --cuda: give torch.version.cuda (e.g. --cuda 12.8), or --cuda cpu")
    version, _, local = torch.partition("+")
    v = _version(version)
    if cxx11abi is None:
        abi = (v.major, v.minor) >= (2, 7)  # PyPI's torch wheels: the C++11 ABI from 2.7 on, the old one before
    elif cxx11abi.upper() in ("TRUE", "FALSE", "1", "0"):
        abi = cxx11abi.upper() in ("TRUE", "1")
    else:
        raise BadInput(f"--cxx11abi {cxx11abi!r}: expected TRUE or FALSE")
    return Env(python=python, torch=version, cuda=None if cuda == "cpu" else cuda, cxx11abi=abi, glibc=glibc,
               machine=normalize_machine(machine), torch_local=local,
               source="given by hand" + ("" if cxx11abi else f" (cxx11abi {abi}: torch's default)"))


def _is_xy(value: str) -> bool:
    major, dot, minor = value.partition(".")
    return bool(dot) and major.isdigit() and minor.isdigit()


# -------------------------------------------------------------------------------------------- images


def _table() -> dict[str, Any]:
    return tomllib.loads(resources.files("wheelfarm").joinpath("data/images.toml").read_text())


def images() -> dict[str, dict[str, Any]]:
    """The known images, name → row (``data/images.toml``)."""
    return dict(_table()["images"])


def image_env(name: str, machine: str | None = None) -> Env:
    """The environment of a well-known image, from ``data/images.toml``."""
    table = images()
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
        raise BadInput(
            f"--image {name!r} is not in wheelfarm/data/images.toml",
            hint=f"did you mean {', '.join(close)}?" if close
            else "list them with --list-images, or describe the environment by hand (--torch --cuda --python "
                 "--cxx11abi --glibc) or with the mirror's probe.py (--env)",
        )
    img = table[name]
    machines = [str(m) for m in img.get("machines", [img.get("machine", "x86_64")])]
    machine = normalize_machine(machine) if machine else None
    if machine and machine not in machines:
        raise BadInput(f"--image {name}: published for {', '.join(machines)}, not {machine}")
    torch, _, local = str(img["torch"]).partition("+")
    return Env(
        python=str(img["python"]),
        torch=torch,
        cuda=str(img["cuda"]),
        cxx11abi=bool(img["cxx11abi"]),
        glibc=str(img["glibc"]),
        machine=machine or machines[0],
        source=f"image {name}" + ("" if img.get("verified", False) else ", facts not verified in the image"),
        torch_local=str(img.get("torch-local", local)).lstrip("+"),
    )


def image_rows() -> list[tuple[str, Mapping[str, Any]]]:
    """The table in a stable order: family, then name."""
    return sorted(images().items(), key=lambda kv: (str(kv[1].get("family", "")), kv[0]))


def min_arch(package: str) -> int | None:
    """The package's minimum GPU arch (``[packages.<name>] min-arch`` in data/images.toml)."""
    from packaging.utils import canonicalize_name

    packages: dict[str, dict[str, int]] = _table().get("packages", {})
    entry = packages.get(canonicalize_name(package))
    return int(entry["min-arch"]) if entry and "min-arch" in entry else None
