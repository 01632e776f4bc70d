"""Which mirror index and wheel fit an environment, or why none does.

``decide(env, files, ...)`` is pure: an ``Env`` (Python, torch, torch's CUDA, C++ ABI, glibc, GPU capability)
and the wheel file names a mirror holds → a ``Decision``. A wheel fits when its CPython tag, torch
major.minor, CUDA tag (the one that package version's setup.py asks for, ``naming.setup_py_cuda_tag``), C++
ABI, platform (architecture, glibc floor of a ``manylinux_2_X`` tag) and variant archs (``sm90`` → that GPU
only) all match. A GPU below the package's minimum arch (flash-attn 2: sm80) fits nothing.

``inspect_env(python)`` probes a Python interpreter (by default this one) in a subprocess; ``image_env(name)``
reads ``data/images.toml``.
"""

from __future__ import annotations

import difflib
import html.parser
import json
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

from . import naming, proc
from .errors import BadInput

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")
_LEGACY_MANYLINUX = {"manylinux1": "2.5", "manylinux2010": "2.12", "manylinux2014": "2.17"}
_SM_VARIANT = re.compile(r"^sm(\d+)$")


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

    def describe(self) -> str:
        abi = "?" if self.cxx11abi is None else str(self.cxx11abi).upper()
        gpu = f"sm{self.gpu[0]}{self.gpu[1]}" if self.gpu else "none seen"
        return (
            f"Python {self.python}, torch {self.torch or 'not installed'} (CUDA {self.cuda or '-'}, "
            f"cxx11abi {abi}), glibc {self.glibc or '?'}, {self.machine}, GPU {gpu} [{self.source}]"
        )


@dataclass(frozen=True)
class Decision:
    ok: bool
    env: str
    wheel: str | None = None
    variant: str | None = None  # the variant index key (local label)
    index_url: str | None = None
    install: str | None = None
    reasons: tuple[str, ...] = ()  # why nothing fits
    nearest: tuple[str, ...] = ()  # closest available wheels and how they differ
    build_command: str | None = None
    notes: tuple[str, ...] = field(default=())


def decide(
    env: Env,
    files: Sequence[str],
    *,
    package: str = "flash-attn",
    mirror: str = "",
    min_arch: int | None = None,
    variant_archs: Mapping[str, Sequence[int]] | None = None,
) -> Decision:
    """Pick the wheel for ``env`` among ``files`` (file names), or explain why none fits."""
    package = canonicalize_name(package)
    blocker = _env_blocker(env, package, min_arch)
    if blocker:
        return Decision(False, env.describe(), reasons=(blocker,))
    assert env.torch is not None and env.cuda is not None
    wheels = []
    for f in files:
        try:
            w = naming.parse_wheel_name(f)
        except ValueError:
            continue
        if w.package == package:
            wheels.append((f, w, _mismatches(env, w, variant_archs or {})))
    notes = () if env.gpu else ("no GPU seen: the GPU architecture was not checked",)
    fits = [(f, w) for f, w, miss in wheels if not miss]
    if fits:
        f, w = max(fits, key=lambda fw: (Version(fw[1].version), fw[1].variant == "", fw[1].platform))
        label = f.split("-")[1].partition("+")[2]
        index = f"{mirror.rstrip('/')}/{label}/simple/"
        version = f.split("-")[1]
        install = f"pip install '{package}=={version}' --extra-index-url {index}"
        return Decision(
            True, env.describe(), wheel=f, variant=label, index_url=index, install=install, notes=notes
        )
    ranked = sorted(wheels, key=lambda t: (len(t[2]), t[0]))[:3]
    nearest = tuple(f"{f} (differs: {'; '.join(miss)})" for f, _, miss in ranked)
    reason = f"no {package} wheel on the mirror fits" if wheels else f"the mirror has no {package} wheels"
    return Decision(
        False,
        env.describe(),
        reasons=(reason,),
        nearest=nearest,
        build_command=_build_command(env, package, [w for _, w, _ in wheels]),
        notes=notes,
    )


def _env_blocker(env: Env, package: str, min_arch: int | None) -> str | None:
    if env.gpu and min_arch and env.gpu[0] * 10 + env.gpu[1] < min_arch:
        sm = f"sm{env.gpu[0]}{env.gpu[1]}"
        return (
            f"GPU {sm} is unsupported by {package}: it needs sm{min_arch} or newer (Ampere+); cards like "
            f"the T4 (sm75) or V100 (sm70) cannot run it, use torch's scaled_dot_product_attention instead"
        )
    if env.torch is None:
        return f"torch is not installed: {package} wheels are built per torch release, install torch first"
    if env.cuda is None:
        return f"torch {env.torch} is a CPU-only build: {package} needs a CUDA build of torch"
    return None


def _cp(tag: str) -> tuple[int, int]:
    return int(tag[2]), int(tag[3:])


def _python_fits(w: naming.WheelName, python: str) -> bool:
    """A cpXY wheel serves CPython X.Y; a cpXY-abi3 one (FlashAttention-3's cp39-abi3) every CPython from X.Y on."""
    have = naming.python_tag(python)
    return _cp(have) >= _cp(w.python_tag) if w.abi3 else have == w.python_tag


def _mismatches(env: Env, w: naming.WheelName, variant_archs: Mapping[str, Sequence[int]]) -> list[str]:
    assert env.torch is not None and env.cuda is not None
    out = []
    if not _python_fits(w, env.python):
        have = naming.python_tag(env.python)
        out.append(f"python {have} < {w.python_tag} (abi3)" if w.abi3 else f"python {w.python_tag} ≠ {have}")
    if w.torch != naming.torch_tag(env.torch):
        out.append(f"torch {w.torch} ≠ {naming.torch_tag(env.torch)}")
    want = naming.setup_py_cuda_tag(w.package, w.version, env.cuda, env.torch)
    if w.cuda_tag != want:
        out.append(f"CUDA {w.cuda_tag} ≠ {want} (torch's CUDA {env.cuda})")
    if env.cxx11abi is not None and w.cxx11abi != env.cxx11abi:
        out.append(f"cxx11abi {str(w.cxx11abi).upper()} ≠ {str(env.cxx11abi).upper()}")
    out.extend(_platform_mismatch(env, w.platform))
    archs = variant_archs.get(w.variant) or _sm_variant_archs(w.variant)
    if archs and env.gpu and env.gpu[0] * 10 + env.gpu[1] not in archs:
        out.append(
            f"variant {w.variant} has code for sm{','.join(map(str, archs))} only, the GPU is "
            f"sm{env.gpu[0]}{env.gpu[1]}"
        )
    return out


def _sm_variant_archs(variant: str) -> tuple[int, ...]:
    m = _SM_VARIANT.match(variant)
    return (int(m[1]),) if m else ()


def _platform_mismatch(env: Env, platform: str) -> list[str]:
    out = []
    if not platform.endswith(env.machine):
        out.append(f"platform {platform} is not {env.machine}")
    m = _MANYLINUX.match(platform)
    floor = f"{m[1]}.{m[2]}" if m else _LEGACY_MANYLINUX.get(platform.rsplit("_", 2)[0])
    if floor and env.glibc and Version(floor) > Version(env.glibc):
        out.append(f"needs glibc {floor}, the environment has {env.glibc}")
    return out


def _build_command(env: Env, package: str, wheels: Sequence[naming.WheelName]) -> str:
    assert env.torch is not None and env.cuda is not None
    newest = max((w.version for w in wheels), key=Version, default=None)
    digits = naming.era(package, newest).cuda_digits if newest else 1
    cuda_major, cuda_minor = [*env.cuda.split("."), "0"][:2]
    cuda = f"{cuda_major}.*" if digits == 1 else f"{cuda_major}.{cuda_minor}"
    abi = "TRUE" if env.cxx11abi in (True, None) else "FALSE"
    return (
        f"nox -s build -- --select package={package} torch={naming.torch_tag(env.torch)} cuda={cuda} "
        f"python={env.python} cxx11abi={abi}"
    )


# -------------------------------------------------------------------------------------- environments

_PROBE = r"""
import json, os, platform, sys
env = {"python": "%d.%d" % sys.version_info[:2], "machine": platform.machine(), "torch": None, "cuda": None,
       "cxx11abi": None, "gpu": None, "glibc": None}
try:
    env["glibc"] = os.confstr("CS_GNU_LIBC_VERSION").split()[-1]
except (ValueError, OSError, AttributeError):
    pass
try:
    import torch
except ImportError:
    torch = None
if torch is not None:
    env["torch"] = torch.__version__.split("+")[0]
    env["cuda"] = torch.version.cuda
    env["cxx11abi"] = bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    if torch.cuda.is_available():
        env["gpu"] = list(torch.cuda.get_device_capability(0))
print(json.dumps(env))
"""


def inspect_env(python: str | None = None) -> Env:
    """Probe ``python`` (default: this interpreter) for the facts a wheel must match."""
    exe = python or sys.executable
    try:
        out = proc.run([exe, "-c", _PROBE], capture=True, quiet=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BadInput(f"--python {exe}: could not probe the interpreter ({exc})") from exc
    raw = json.loads(out.stdout.strip().splitlines()[-1])
    gpu = tuple(raw["gpu"]) if raw["gpu"] else None
    return Env(
        python=raw["python"],
        torch=raw["torch"],
        cuda=raw["cuda"],
        cxx11abi=raw["cxx11abi"],
        glibc=raw["glibc"],
        gpu=gpu,
        machine=raw["machine"],
        source="this environment" if python is None else exe,
    )


def _table() -> dict[str, object]:
    return tomllib.loads(resources.files("wheelfarm").joinpath("data/images.toml").read_text())


def image_env(name: str) -> Env:
    """The environment of a well-known image, from ``data/images.toml``."""
    images: dict[str, dict[str, object]] = _table()["images"]  # type: ignore[assignment]
    if name not in images:
        close = difflib.get_close_matches(name, list(images), n=3, cutoff=0.5)
        raise BadInput(
            f"--image {name!r} is not in wheelfarm/data/images.toml",
            hint=f"did you mean {', '.join(close)}?"
            if close
            else f"known images: {', '.join(sorted(images))}",
        )
    img = images[name]
    return Env(
        python=str(img["python"]),
        torch=str(img["torch"]),
        cuda=str(img["cuda"]),
        cxx11abi=bool(img["cxx11abi"]),
        glibc=str(img["glibc"]),
        machine=str(img.get("machine", "x86_64")),
        source=f"image {name}",
    )


def min_arch(package: str) -> int | None:
    """The package's minimum GPU arch (``[packages.<name>] min-arch`` in data/images.toml)."""
    packages: dict[str, dict[str, int]] = _table().get("packages", {})  # type: ignore[assignment]
    entry = packages.get(canonicalize_name(package))
    return int(entry["min-arch"]) if entry and "min-arch" in entry else None


# ----------------------------------------------------------------------------------------- the mirror


_LABEL_DIR = re.compile(r"^cu\d+torch[\d.]+cxx11abi(TRUE|FALSE)(\.[A-Za-z0-9]+)*$")  # a variant index folder


def mirror_url(value: str) -> str:
    """The mirror root as a URL: a directory becomes file://; a trailing ``/simple`` is dropped, and so is a
    variant folder before it (``…/cu12torch2.8cxx11abiTRUE/simple`` names the same mirror, not a root below it)."""
    url = value if "://" in value else Path(value).resolve().as_uri()
    url = url.rstrip("/")
    if url.endswith("/simple"):
        url = url[: -len("/simple")]
        head, _, last = url.rpartition("/")
        if _LABEL_DIR.match(last):
            url = head
    return url


def _no_mirror(mirror: str) -> BadInput:
    return BadInput(f"--index-url {mirror}: no wheelfarm mirror there (no simple/ index)",
                    hint="give the mirror's root (the folder or URL holding simple/ and <variant>/simple/), "
                         "or publish into it first")


def _mirror_exists(mirror: str) -> bool:
    root = f"{mirror}/simple/" + ("index.html" if mirror.startswith("file:") else "")
    try:
        with urllib.request.urlopen(root, timeout=60):
            return True
    except (urllib.error.URLError, OSError):
        return False


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def available_wheels(mirror: str, package: str) -> list[str]:
    """The wheel file names that the mirror's global ``simple/<package>/`` page links to."""
    page = f"{mirror}/simple/{canonicalize_name(package)}/"
    if page.startswith("file:"):
        page += "index.html"
    try:
        with urllib.request.urlopen(page, timeout=60) as resp:
            text = resp.read().decode()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # no such project page: an empty mirror for this package, or no mirror at all
            if not _mirror_exists(mirror):
                raise _no_mirror(mirror) from exc
            return []
        raise BadInput(f"--index-url {mirror}: {page} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        if page.startswith("file:") and isinstance(getattr(exc, "reason", exc), FileNotFoundError):
            if not _mirror_exists(mirror):
                raise _no_mirror(mirror) from exc
            return []
        raise BadInput(f"--index-url {mirror}: cannot read {page} ({exc})") from exc
    parser = _Links()
    parser.feed(text)
    names = (urllib.parse.unquote(urllib.parse.urlsplit(h).path.rsplit("/", 1)[-1]) for h in parser.hrefs)
    return sorted(n for n in names if n.endswith(".whl"))
