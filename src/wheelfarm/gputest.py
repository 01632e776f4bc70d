"""GPU test of a built wheel: probe the GPU, decide, make a clean env, run the checks and (optionally) a
time-boxed subset of the package's own tests, write ``<wheel>.gpu.json``.

Plan (pure, unit-tested without a GPU): ``parse_nvidia_smi``, ``archs_from_audit``, ``decide``, ``plan_env``,
``requirements``, ``count_junit``/``count_progress``, ``build_result``. Execute: ``probe_gpu``, ``make_env``,
``run_checks``, ``run_upstream``, ``run``. The GPU probe is the first thing ``run`` does: on a machine
without a GPU nothing else happens (no file is read, no venv made).

``<wheel>.audit.json`` keys read here (written by ``wheelfarm audit``, docs/audit.md):
``{"archs": {"sass": ["sm_80", "sm_90a"], "ptx": ["compute_90"]}}``; also accepted: top-level
``"sass"``/``"ptx"`` lists, or ``"archs"`` as one list where ``compute_XX`` entries are PTX. Entries may be
``sm_90``, ``sm90``, ``90``, ``compute_90`` (suffixes ``a``/``f`` kept). No file or no such key: archs are
not checked before running.

``<wheel>.gpu.json`` (schema 1) is written only when the checks ran: a skip or a refusal writes nothing, so a
runner without a suitable GPU never overwrites the result of one that has it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.parser
import functools
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion

from . import gpu_checks, log, proc
from .errors import BadInput, BuildFailed

RESULT_SCHEMA = 1
NO_GPU = "no CUDA GPU found: skipping GPU tests"
ENV_REUSED = "reused-runner-torch"
ENV_FRESH = "fresh-venv"
ENV_INSTALLED = "preinstalled"
# Clear these for every child: the test env must import torch/flash_attn from its own site-packages only.
CLEAN_ENV = {"PYTHONPATH": "", "PYTHONHOME": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
PROBE_TIMEOUT_S = 180  # importing torch from a cold disk can take a while
UPSTREAM_GRACE_S = 30  # after SIGINT at the budget, pytest writes its junit xml; then SIGKILL
CHECKS_TIMEOUT_S = 900  # the checks take < 1 min on an H100; a hung kernel must not hang the runner


# ----------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]
    driver: str | None = None
    source: str = "nvidia-smi"

    @property
    def sm(self) -> str:
        return f"sm{self.capability[0]}{self.capability[1]}"

    @property
    def cc(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "capability": self.cc, "driver": self.driver, "probe": self.source}


@dataclass(frozen=True)
class PythonInfo:
    """What an interpreter offers: its torch (or None) and the first CUDA GPU torch sees."""

    python: str  # "3.12.3"
    torch: str | None  # "2.11.0+cu130"
    cuda: str | None  # "13.0" (torch.version.cuda)
    cxx11abi: bool | None
    gpu: Gpu | None
    site_dirs: tuple[str, ...] = ()  # its site-packages (and user site), where its torch lives

    @property
    def torch_minor(self) -> str | None:
        m = re.match(r"(\d+)\.(\d+)", self.torch or "")
        return f"{m[1]}.{m[2]}" if m else None


@dataclass(frozen=True)
class WheelInfo:
    path: Path
    project: str  # canonical: "flash-attn"
    version: str  # full, with the local label
    torch: str | None  # "2.11" from the local label; None for names without one
    cuda_major: str | None  # "13"
    cxx11abi: bool | None
    variant: str = ""  # the local label's ".<variant>" ("bf16hd128"), "" for a standard wheel

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class WheelArchs:
    sass: tuple[str, ...]  # normalized "90", "90a", "100f"
    ptx: tuple[str, ...]


@dataclass(frozen=True)
class Rules:
    """Per-package GPU test settings: built-in defaults, overridden by build_matrix.toml, then by flags."""

    package: str
    min_capability: tuple[int, int] | None = None
    needs: str = ""  # "flash-attn 2 needs Ampere (sm80) or newer"
    checks: str | None = None  # gpu_checks/<checks>_checks.py
    requires: tuple[str, ...] = ()  # non-torch runtime deps to install beside the wheel
    upstream_file: str | None = None  # path of the package's test file inside its sdist
    upstream_select: str | None = None  # pytest -k expression
    upstream_timeout: int = 300
    upstream_support: tuple[str, ...] = ()  # sdist files the test file imports, copied beside it
    env: Mapping[str, str] = field(default_factory=dict)  # the variant's DISABLE switches, for checks and pytest


BUILTIN_RULES = {
    "flash-attn": Rules(
        "flash-attn",
        (8, 0),
        "flash-attn 2 needs Ampere (sm80) or newer",
        "flash_attn",
        ("einops",),
        "tests/test_flash_attn.py",
    ),
    "flash-attn-3": Rules(
        "flash-attn-3",
        (9, 0),
        "FlashAttention-3 needs Hopper (sm90)",
        "flash_attn_3",
        ("einops",),
        "hopper/test_flash_attn.py",
        upstream_support=("hopper/test_util.py", "hopper/padding.py"),
    ),
}


@dataclass(frozen=True)
class Decision:
    action: str  # "run" | "skip" | "refuse"
    message: str

    @property
    def exit_code(self) -> int:
        return 1 if self.action == "refuse" else 0


@dataclass(frozen=True)
class EnvPlan:
    mode: str  # ENV_REUSED | ENV_FRESH | ENV_INSTALLED
    reason: str
    torch_requirement: str | None = None  # installed first into a fresh venv
    site_dirs: tuple[str, ...] = ()  # reused: the runner's site-packages, layered under the venv's own


@dataclass(frozen=True)
class Counts:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0
    failures: tuple[str, ...] = ()  # first failing/erroring test ids

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.skipped + self.errors


@dataclass(frozen=True)
class Options:
    wheel: Path
    require_gpu: bool = False
    reuse_env: bool = False
    installed: bool = False
    python: str = sys.executable
    find_links: tuple[Path, ...] = ()
    index_url: str | None = None
    extra_requires: tuple[str, ...] = ()
    checks: str | None = None
    upstream_tests: Path | None = None  # sdist, unpacked sdist directory, or the test file itself
    upstream_file: str | None = None
    upstream_select: str | None = None
    upstream_timeout: int | None = None
    config: Path | None = None
    workdir: Path | None = None
    keep: bool = False
    output: Path | None = None


@dataclass(frozen=True)
class Outcome:
    status: str  # passed | failed | skipped | refused
    exit_code: int
    message: str
    result: dict[str, Any] | None = None  # the <wheel>.gpu.json content, when checks ran
    path: Path | None = None
    gpu: Gpu | None = None

    def payload(self) -> dict[str, Any]:
        if self.result is not None:
            return {
                **self.result,
                "status": self.status,
                "result_file": str(self.path) if self.path else None,
            }
        return {
            "schema": RESULT_SCHEMA,
            "status": self.status,
            "passed": None,
            "reason": self.message,
            "gpu": self.gpu.to_json() if self.gpu else None,
        }


# ----------------------------------------------------------------------------------------- GPU probe


def parse_nvidia_smi(text: str, source: str = "nvidia-smi") -> list[Gpu]:
    """Lines of ``--query-gpu=name,compute_cap,driver_version --format=csv,noheader``."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.rsplit(",", 2)]
        if len(parts) != 3:
            continue
        m = re.fullmatch(r"(\d+)\.(\d+)", parts[1])
        if m and parts[0]:
            gpus.append(Gpu(parts[0], (int(m[1]), int(m[2])), parts[2] or None, source))
    return gpus


def visible_device() -> str | None:
    """The first entry of CUDA_VISIBLE_DEVICES; "" when it hides every GPU; None when unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    first = value.split(",")[0].strip()
    return "" if first in ("", "-1", "NoDevFiles") else first


def _capture(cmd: Sequence[str], timeout: float = PROBE_TIMEOUT_S) -> subprocess.CompletedProcess[str] | None:
    """Run a probe quietly; None if it can't start or hangs."""
    try:
        return subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, env={**os.environ, **CLEAN_ENV}
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _nvidia_smi(device: str | None) -> Gpu | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    cmd = [exe, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"]
    if device:
        cmd += ["-i", device]
    done = _capture(cmd, timeout=60)
    if done is None or done.returncode != 0:
        return None
    gpus = parse_nvidia_smi(done.stdout)
    return gpus[0] if gpus else None


_PYTHON_PROBE = r"""
import json, os, platform, site
dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
    dirs.append(site.getusersitepackages())
info = {"python": platform.python_version(), "torch": None, "cuda": None, "cxx11abi": None, "gpu": None,
        "site_dirs": [d for d in dirs if os.path.isdir(d)]}
try:
    import torch
except Exception:
    pass
else:
    info.update(torch=torch.__version__, cuda=torch.version.cuda,
                cxx11abi=bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", False)))
    try:
        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = {"name": p.name, "capability": [p.major, p.minor]}
    except Exception:
        pass
print("WHEELFARM_PROBE " + json.dumps(info))
"""


@functools.lru_cache(maxsize=8)
def probe_python(python: str) -> PythonInfo | None:
    """Ask ``python`` about its torch and GPU (one subprocess, cached); None if it doesn't run."""
    done = _capture([python, "-c", _PYTHON_PROBE])
    line = next(
        (x for x in (done.stdout if done else "").splitlines() if x.startswith("WHEELFARM_PROBE ")), None
    )
    if line is None:
        return None
    info = json.loads(line.split(" ", 1)[1])
    gpu = info.get("gpu")
    return PythonInfo(
        info["python"],
        info["torch"],
        info["cuda"],
        info["cxx11abi"],
        Gpu(gpu["name"], (gpu["capability"][0], gpu["capability"][1]), _proc_driver(), "torch")
        if gpu
        else None,
        tuple(info.get("site_dirs", ())),
    )


def _proc_driver() -> str | None:
    with contextlib.suppress(OSError):
        m = re.search(
            r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", Path("/proc/driver/nvidia/version").read_text()
        )
        return m[1] if m else None
    return None


def probe_gpu(python: str) -> Gpu | None:
    """nvidia-smi first (needs no torch); else torch in ``python``. None: no usable CUDA GPU here."""
    device = visible_device()
    if device == "":
        return None
    gpu = _nvidia_smi(device)
    if gpu is not None:
        return gpu
    info = probe_python(python)
    return info.gpu if info else None


# ----------------------------------------------------------------------------------------- archs & decisions


_ARCH = re.compile(r"^(?:sm_?|compute_?)?(\d+)([af]?)$")


def normalize_arch(entry: str) -> str:
    """ "sm_90a" / "compute_90" / "sm90" / "90" / "9.0" → "90a" / "90" / "90" / "90" / "90"."""
    text = str(entry).strip().lower()
    if re.fullmatch(r"\d+\.\d", text):
        text = text.replace(".", "")
    m = _ARCH.fullmatch(text)
    if not m or len(m[1]) < 2:
        raise ValueError(f"{entry!r} is not a CUDA arch like sm_90 or compute_90")
    return m[1] + m[2]


def _split(arch: str) -> tuple[int, int, str]:
    digits, suffix = (arch[:-1], arch[-1]) if arch[-1] in "af" else (arch, "")
    return int(digits[:-1]), int(digits[-1]), suffix


def sass_runs_on(arch: str, cc: tuple[int, int]) -> bool:
    """SASS runs on the same major with an equal or higher minor; ``a`` SASS on exactly its own cc."""
    major, minor, suffix = _split(arch)
    if suffix == "a":
        return (major, minor) == cc
    return major == cc[0] and minor <= cc[1]


def ptx_jits_on(arch: str, cc: tuple[int, int]) -> bool:
    """PTX JIT-compiles for any equal or newer cc; ``a`` PTX only for its own cc, ``f`` within its family."""
    major, minor, suffix = _split(arch)
    if suffix == "a":
        return (major, minor) == cc
    if suffix == "f":
        return major == cc[0] and minor <= cc[1]
    return (major, minor) <= cc


def archs_from_audit(data: Mapping[str, Any], source: str = "audit.json") -> WheelArchs | None:
    """The wheel's SASS/PTX from an audit report (keys: module docstring); None if it has none."""
    archs = data.get("archs")
    if isinstance(archs, Mapping):
        sass, ptx = archs.get("sass"), archs.get("ptx")
    elif isinstance(archs, list):
        sass = [a for a in archs if not str(a).lower().startswith("compute")]
        ptx = [a for a in archs if str(a).lower().startswith("compute")]
    else:
        sass, ptx = data.get("sass"), data.get("ptx")
    if sass is None and ptx is None:
        return None
    try:
        return WheelArchs(
            tuple(normalize_arch(a) for a in sass or ()), tuple(normalize_arch(a) for a in ptx or ())
        )
    except (ValueError, TypeError) as exc:
        raise BadInput(
            f"{source}: key 'archs': {exc}", hint="re-run `wheelfarm audit` on the wheel"
        ) from None


def load_audit_archs(wheel: Path) -> WheelArchs | None:
    path = Path(f"{wheel}.audit.json")
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInput(
            f"{path}: not readable JSON: {exc}", hint="re-run `wheelfarm audit` on the wheel"
        ) from None
    return archs_from_audit(data, str(path)) if isinstance(data, Mapping) else None


def decide(
    gpu: Gpu | None, archs: WheelArchs | None, rules: Rules, *, require_gpu: bool, wheel: str = "the wheel"
) -> Decision:
    """Run, skip (exit 0) or refuse (exit 1) — before anything is installed."""
    if gpu is None:
        if require_gpu:
            return Decision("refuse", "no CUDA GPU found: --require-gpu was given")
        return Decision("skip", NO_GPU)
    where = f"{gpu.name} ({gpu.sm})"
    if rules.min_capability and gpu.capability < rules.min_capability:
        needs = (
            rules.needs
            or f"{rules.package} needs sm{rules.min_capability[0]}{rules.min_capability[1]} or newer"
        )
        # Without --require-gpu this is a runner that cannot judge the wheel (a T4/V100 box in a mixed
        # pool): skipping keeps such pools green. With --require-gpu a verdict was demanded and none is
        # possible: fail.
        tail = "failing: --require-gpu was given" if require_gpu else "skipping GPU tests"
        return Decision(
            "refuse" if require_gpu else "skip", f"unsupported GPU: {needs}; found {where}: {tail}"
        )
    if archs is None:
        return Decision("run", f"testing on {where}: no audit arch list, so archs were not checked first")
    sass = [a for a in archs.sass if sass_runs_on(a, gpu.capability)]
    if sass:
        return Decision("run", f"testing on {where}: SASS {', '.join('sm_' + a for a in sass)} covers it")
    ptx = [a for a in archs.ptx if ptx_jits_on(a, gpu.capability)]
    if ptx:
        return Decision(
            "run",
            f"testing on {where}: no SASS for it, PTX compute_{ptx[-1]} will be JIT-compiled "
            "(slow first launch)",
        )
    have = ", ".join("sm_" + a for a in archs.sass) or "no SASS"
    have_ptx = ", ".join("compute_" + a for a in archs.ptx) or "none"
    # A wheel that cannot run on this (supported) GPU is a refusal, not a skip: the cell claims this runner's
    # GPU family or was sent to the wrong runner; either way someone must look.
    return Decision(
        "refuse",
        f"{wheel} cannot run on {where}: it has {have} and no usable PTX (PTX: {have_ptx}); "
        f"rebuild with {gpu.capability[0]}{gpu.capability[1]} in the archs",
    )


# ------------------------------------------------------------------------------------ wheel & env planning


def describe_wheel(path: Path) -> WheelInfo:
    """Project, version and the torch/CUDA/ABI of the local label (upstream convention) from the file name."""
    try:
        name, version, _build, _tags = parse_wheel_filename(path.name)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise BadInput(f"{path}: not a wheel file name: {exc}") from None
    label = path.name.split("-")[1].split("+", 1)[1] if "+" in path.name.split("-")[1] else ""
    torch = re.search(r"torch(\d+)\.(\d+)", label)
    cuda = re.search(r"cu(\d+)", label)
    abi = re.search(r"cxx11abi(true|false)(?:\.([a-z0-9]+))?", label, re.IGNORECASE)
    cuda_major = None
    if cuda:
        digits = cuda[1]
        cuda_major = digits if len(digits) <= 2 else digits[:-1]  # cu13, cu12 / cu118 → 11, cu130 → 13
    return WheelInfo(
        path,
        str(name),
        str(version),
        f"{torch[1]}.{torch[2]}" if torch else None,
        cuda_major,
        abi[1].lower() == "true" if abi else None,
        (abi[2] or "").lower() if abi else "",
    )


def rules_for(project: str, config: Path | None, variant: str = "") -> Rules:
    """Built-in rules for ``project``, overridden by its ``[packages.<name>]`` table in ``config``; a ``variant``
    that compiles features out sets their switches for the checks and upstream's tests (which read them)."""
    rules = BUILTIN_RULES.get(project, Rules(project))
    if config is None:
        return rules
    from . import config as config_mod

    conf = config_mod.load(config)
    package = next((p for n, p in conf.packages.items() if canonicalize_name(n) == project), None)
    if package is None:
        return rules
    gpu_test = package.gpu_test
    min_arch = int(getattr(package, "min_arch", 0) or 0)
    return replace(
        rules,
        min_capability=(min_arch // 10, min_arch % 10) if min_arch else rules.min_capability,
        needs=rules.needs if min_arch == _arch_int(rules.min_capability) else "",
        checks=gpu_test.checks or rules.checks,
        requires=tuple(package.requires) or rules.requires,
        upstream_file=gpu_test.upstream_tests or rules.upstream_file,
        upstream_select=gpu_test.upstream_select or rules.upstream_select,
        upstream_timeout=gpu_test.upstream_timeout or rules.upstream_timeout,
        upstream_support=gpu_test.upstream_support or rules.upstream_support,
        env={package.disable_knobs[f]: "TRUE" for f in getattr(conf.variants.get(variant), "disable", ())
             if f in package.disable_knobs},
    )


def _arch_int(cc: tuple[int, int] | None) -> int:
    return cc[0] * 10 + cc[1] if cc else 0


def plan_env(wheel: WheelInfo, runner: PythonInfo | None, *, reuse: bool, installed: bool = False) -> EnvPlan:
    """Which environment the checks run in, and why (printed and recorded)."""
    if installed:
        return EnvPlan(ENV_INSTALLED, "--installed: the given Python's environment as it is")
    want = (
        f"torch {wheel.torch or '?'}"
        + (f", CUDA {wheel.cuda_major}" if wheel.cuda_major else "")
        + (f", cxx11abi {str(wheel.cxx11abi).upper()}" if wheel.cxx11abi is not None else "")
    )
    fresh_req = f"torch=={wheel.torch}.*" if wheel.torch else None
    if not reuse:
        return EnvPlan(
            ENV_FRESH,
            f"fresh venv with the wheel's {want} (pass --reuse-env to reuse the runner's torch)",
            fresh_req,
        )
    if runner is None or runner.torch is None:
        return EnvPlan(ENV_FRESH, "--reuse-env: the runner Python has no torch; fresh venv", fresh_req)
    mismatches = []
    if wheel.torch and runner.torch_minor != wheel.torch:
        mismatches.append(f"torch {runner.torch_minor} != {wheel.torch}")
    if wheel.cuda_major and runner.cuda and runner.cuda.split(".")[0] != wheel.cuda_major:
        mismatches.append(f"CUDA {runner.cuda} is not CUDA {wheel.cuda_major}")
    if wheel.cuda_major and runner.cuda is None:
        mismatches.append("the runner's torch is a CPU build")
    if wheel.cxx11abi is not None and runner.cxx11abi is not None and runner.cxx11abi != wheel.cxx11abi:
        mismatches.append(f"cxx11abi {str(runner.cxx11abi).upper()} != {str(wheel.cxx11abi).upper()}")
    if mismatches:
        return EnvPlan(
            ENV_FRESH,
            f"--reuse-env: runner torch {runner.torch} does not match the wheel "
            f"({'; '.join(mismatches)}); fresh venv",
            fresh_req,
        )
    note = "" if wheel.torch else " (the wheel name carries no torch version: unverified)"
    return EnvPlan(
        ENV_REUSED,
        f"runner torch {runner.torch} (CUDA {runner.cuda}) matches the wheel's {want}{note}; "
        "venv over the runner's site-packages",
        site_dirs=runner.site_dirs,
    )


def wheel_requires(path: Path) -> list[str]:
    """The wheel's Requires-Dist (no extras), as written in its METADATA."""
    try:
        with zipfile.ZipFile(path) as zf:
            meta = next((n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)), None)
            text = zf.read(meta).decode("utf-8") if meta else ""
    except (OSError, zipfile.BadZipFile) as exc:
        raise BadInput(f"{path}: not a readable wheel: {exc}") from None
    return email.parser.Parser().parsestr(text).get_all("Requires-Dist") or []


def requirements(declared: Iterable[str], extra: Iterable[str], *, upstream: bool) -> list[str]:
    """What to install beside a ``--no-deps`` wheel: its non-torch deps (markers evaluated here, extras
    dropped), the package's configured requires, ``extra``, pytest for upstream's tests; one per project."""
    out: dict[str, str] = {}
    for text in [*declared, *extra, *(["pytest"] if upstream else [])]:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            raise BadInput(f"requirement {text!r} is not valid (PEP 508)") from None
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name != "torch" and name not in out:
            out[name] = str(req)
    return list(out.values())


def pip_source_args(find_links: Sequence[Path], index_url: str | None) -> list[str]:
    """``--find-links`` alone means offline (``--no-index``): an offline GPU runner must not wait on PyPI."""
    args = [a for d in find_links for a in ("--find-links", str(d))]
    if index_url:
        args += ["--index-url", index_url]
    elif find_links:
        args.append("--no-index")
    return args


# ----------------------------------------------------------------------------------------- execution: env


@dataclass(frozen=True)
class TestEnv:
    python: Path
    pip: tuple[str, ...]
    root: Path | None  # the venv directory (None: preinstalled)


def _pip(env: TestEnv, args: Sequence[str], what: str) -> None:
    done = proc.run([*env.pip, "install", *args], env=CLEAN_ENV, capture=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise BuildFailed(
            f"pip could not install {what} (exit {done.returncode}):\n{tail}",
            hint="carry the wheels in a --find-links directory (the GPU runner is offline)",
        )


def _layer_site_dirs(python: Path, site_dirs: Sequence[str]) -> None:
    """Make the runner's packages (torch, pip, pytest…) importable behind the venv's own site-packages.

    Like ``venv --system-site-packages``, but it also works when the runner's Python is itself a venv or
    conda env (``venv`` always builds on the *base* interpreter, whose site-packages has no torch then).
    ``addsitedir`` also runs the runner's own .pth files.
    """
    done = _capture([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    if done is None or done.returncode != 0:
        raise BuildFailed(f"the new venv's Python {python} does not run")
    purelib = Path(done.stdout.strip())
    lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in site_dirs)
    (purelib / "_wheelfarm_runner_site.pth").write_text(lines, encoding="utf-8")


def _find_pip(python: Path, base_python: str) -> tuple[str, ...]:
    if _ok([str(python), "-m", "pip", "--version"]):  # its own, or the runner's through system site-packages
        return (str(python), "-m", "pip")
    if _ok([str(python), "-m", "ensurepip", "--default-pip"]):  # bundled, works offline
        return (str(python), "-m", "pip")
    drive = (base_python, "-m", "pip", "--python", str(python))  # pip >= 22.3 can install into another env
    if _ok([*drive, "--version"]):
        return drive
    raise BuildFailed(f"no pip for the test venv {python}", hint=f"install pip for {base_python}")


def _ok(cmd: Sequence[str]) -> bool:
    done = _capture(cmd)
    return done is not None and done.returncode == 0


def make_env(
    plan: EnvPlan,
    root: Path,
    base_python: str,
    wheel: WheelInfo,
    extra: Sequence[str],
    sources: Sequence[str],
) -> TestEnv:
    """Create the venv of ``plan`` under ``root`` and install torch (fresh only), the wheel and ``extra``."""
    if plan.mode == ENV_INSTALLED:
        return TestEnv(Path(base_python), (base_python, "-m", "pip"), None)
    venv = root / "venv"
    cmd = [base_python, "-m", "venv", "--without-pip", str(venv)]
    if proc.run(cmd, env=CLEAN_ENV, capture=True, check=False).returncode != 0:
        raise BuildFailed(f"could not create a venv with {base_python}", hint="is the venv module installed?")
    python = venv / "bin" / "python"
    if plan.mode == ENV_REUSED:
        _layer_site_dirs(python, plan.site_dirs)
    env = TestEnv(python, _find_pip(python, base_python), venv)
    if plan.mode == ENV_FRESH:
        if not plan.torch_requirement:
            raise BadInput(
                f"{wheel.name}: the name carries no torch version, so a fresh venv can't pick one",
                hint="use --reuse-env with a runner whose torch fits the wheel",
            )
        _pip(env, [*sources, "--prefer-binary", plan.torch_requirement], plan.torch_requirement)
    # --force-reinstall: a copy in the runner's site-packages must not satisfy this; the test is of this file
    _pip(env, [*sources, "--no-deps", "--force-reinstall", str(wheel.path)], wheel.name)
    if extra:
        _pip(env, [*sources, "--prefer-binary", *extra], ", ".join(extra))
    return env


# ----------------------------------------------------------------------------------------- execution: checks


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def run_checks(env: TestEnv, checks: str, workdir: Path, extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run ``gpu_checks/<checks>_checks.py`` with the test env's Python; its JSON result. ``extra_env``: the
    variant's DISABLE switches (the checks skip what was compiled out)."""
    script = gpu_checks.script(checks)
    out = workdir / f"{checks}-checks.json"
    out.unlink(missing_ok=True)
    # WHEELFARM_GPU_CHECKS_ARGS: extra arguments for the script (tests run a CPU stand-in: "--device cpu")
    cmd = [
        str(env.python),
        str(script),
        "--out",
        str(out),
        *shlex.split(os.environ.get("WHEELFARM_GPU_CHECKS_ARGS", "")),
    ]
    log.info(f"$ {shlex.join(cmd)}")
    fd = _stderr_fd()  # the checks' progress goes to stderr: stdout is kept for the verdict or --json
    try:
        streams: dict[str, Any] = {"capture_output": True} if fd is None else {"stdout": fd, "stderr": fd}
        done = subprocess.run(
            cmd,
            cwd=workdir,
            env={**os.environ, **CLEAN_ENV, **(extra_env or {})},
            text=True,
            timeout=CHECKS_TIMEOUT_S,
            **streams,
        )
    except subprocess.TimeoutExpired:
        raise BuildFailed(
            f"the {checks} checks did not finish in {CHECKS_TIMEOUT_S}s (a hung kernel?)"
        ) from None
    if fd is None:
        log.info(done.stdout + done.stderr)
    if not out.is_file():
        raise BuildFailed(
            f"the {checks} checks crashed (exit {done.returncode}) before writing {out.name}",
            hint="see the output above",
        )
    result = json.loads(out.read_text(encoding="utf-8"))
    if env.root is not None and result.get("env", {}).get("package_file"):
        imported = Path(result["env"]["package_file"]).resolve()
        if not imported.is_relative_to(env.root.resolve()):
            result["passed"] = False
            result["error"] = f"imported {imported}, not the copy installed in {env.root}"
    return result


# ----------------------------------------------------------------------------------------- upstream tests


def extract_upstream(source: Path, member: str, dest: Path) -> Path:
    """Copy the test file ``member`` (e.g. tests/test_flash_attn.py) out of an sdist, directory or file."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / Path(member).name
    if source.is_file() and source.suffix == ".py":
        shutil.copyfile(source, target)
    elif source.is_dir():
        found = source / member
        if not found.is_file():
            raise BadInput(f"{source}: no {member} in this directory", hint="give the unpacked sdist's root")
        shutil.copyfile(found, target)
    elif source.is_file() and tarfile.is_tarfile(source):
        with tarfile.open(source) as tf:
            info = next(
                (m for m in tf.getmembers() if m.isfile() and m.name.split("/", 1)[-1] == member), None
            )
            if info is None:
                raise BadInput(
                    f"{source}: no {member} in this sdist", hint="check upstream-tests in build_matrix.toml"
                )
            fh = tf.extractfile(info)
            assert fh is not None
            target.write_bytes(fh.read())
    elif source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            name = next((n for n in zf.namelist() if n.split("/", 1)[-1] == member), None)
            if name is None:
                raise BadInput(f"{source}: no {member} in this sdist")
            target.write_bytes(zf.read(name))
    else:
        raise BadInput(f"--upstream-tests {source}: not an sdist, a directory or a .py file")
    return target


def count_junit(path: Path) -> Counts:
    """passed/failed/skipped/errors over every <testcase> of a junit xml (failure beats error beats skip)."""
    root = ET.parse(path).getroot()
    passed = failed = skipped = errors = 0
    failures: list[str] = []
    for case in root.iter("testcase"):
        if not case.get("name"):  # the test a time-budget SIGINT interrupted: neither passed nor failed
            continue
        tags = {child.tag for child in case}
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
        if "failure" in tags:
            failed += 1
        elif "error" in tags:
            errors += 1
        elif "skipped" in tags:
            skipped += 1
            continue
        else:
            passed += 1
            continue
        if len(failures) < 20:
            failures.append(test_id)
    return Counts(passed, failed, skipped, errors, tuple(failures))


def count_progress(path: Path) -> tuple[Counts, int | None]:
    """Counts from the progress log of upstream_conftest.py (used when pytest died before its junit xml),
    and the number of tests selected."""
    outcomes: dict[str, str] = {}
    selected, collect_errors = None, []
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            rec = json.loads(line)
            if rec.get("event") == "collected":
                selected = rec.get("count")
            elif rec.get("event") == "collect-error":
                collect_errors.append(rec.get("nodeid", "?"))
            elif rec.get("event") == "report" and (new := _outcome(rec["when"], rec["outcome"])):
                old = outcomes.get(rec["nodeid"])
                outcomes[rec["nodeid"]] = new if old is None or _RANK[new] > _RANK[old] else old
    by = {k: [n for n, o in outcomes.items() if o == k] for k in ("passed", "failed", "skipped", "error")}
    bad = (by["failed"] + by["error"] + collect_errors)[:20]
    return Counts(
        len(by["passed"]),
        len(by["failed"]),
        len(by["skipped"]),
        len(by["error"]) + len(collect_errors),
        tuple(bad),
    ), selected


_RANK = {"failed": 3, "error": 2, "skipped": 1, "passed": 0}


def _outcome(when: str, outcome: str) -> str | None:
    """A test's verdict from one phase report: a failing call fails it; failing setup/teardown: error."""
    if outcome == "failed":
        return "failed" if when == "call" else "error"
    if outcome == "skipped":
        return "skipped"
    return "passed" if when == "call" else None


def _run_with_budget(cmd: Sequence[str], cwd: Path, env: Mapping[str, str], budget: float, log_path: Path):
    """Run ``cmd`` for at most ``budget`` seconds, then SIGINT (pytest writes its junit xml), then SIGKILL."""
    log.info(f"$ {shlex.join(cmd)}   (budget {budget:.0f}s, log {log_path})")
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as out:
        child = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timed_out = False
        try:
            child.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(child, signal.SIGINT)
            try:
                child.wait(timeout=UPSTREAM_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.wait()
        except BaseException:  # our own Ctrl-C: the child runs in its own session and must not outlive us
            _signal_group(child, signal.SIGKILL)
            child.wait()
            raise
    return child.returncode, timed_out, time.monotonic() - start


def _signal_group(child: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)


def run_upstream(env: TestEnv, test_file: Path, select: str | None, budget: int,
                 extra_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """pytest on upstream's test file in its own directory (so nothing shadows the installed package)."""
    rundir = test_file.parent
    (rundir / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # no config from above leaks in
    shutil.copyfile(gpu_checks.UPSTREAM_CONFTEST, rundir / "conftest.py")
    junit, progress = rundir / "junit.xml", rundir / "progress.jsonl"
    junit.unlink(missing_ok=True)
    progress.unlink(missing_ok=True)
    cmd = [
        str(env.python),
        "-m",
        "pytest",
        test_file.name,
        "-c",
        "pytest.ini",
        "--rootdir",
        ".",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit.name}",
        *(["-k", select] if select else []),
    ]
    child_env = {**CLEAN_ENV, "PYTEST_ADDOPTS": "", "WHEELFARM_PROGRESS": str(progress), **(extra_env or {})}
    code, timed_out, seconds = _run_with_budget(cmd, rundir, child_env, budget, rundir / "pytest.log")
    from_progress, selected = count_progress(progress)
    counts, source = from_progress, "progress"
    if junit.is_file():
        with contextlib.suppress(ET.ParseError):
            counts, source = count_junit(junit), "junit"
    return {
        "file": test_file.name,
        "select": select,
        "selected": selected,
        "passed": counts.passed,
        "failed": counts.failed,
        "skipped": counts.skipped,
        "errors": counts.errors,
        "timed_out": timed_out,
        "seconds": round(seconds, 1),
        "budget_s": budget,
        "exit_code": code,
        "counted_from": source,
        "failures": list(counts.failures),
        "log": str(rundir / "pytest.log"),
        "env": dict(extra_env or {}),
    }


def upstream_ok(upstream: Mapping[str, Any] | None) -> bool:
    """No failure, no error, at least one test passed; a timeout alone is not a failure of the wheel."""
    if upstream is None:
        return True
    return upstream["failed"] == 0 and upstream["errors"] == 0 and upstream["passed"] > 0


# ----------------------------------------------------------------------------------------- result


CASE_KEYS = ("name", "dtype", "headdim", "causal", "max_err", "ref_err", "tol", "passed", "seconds")


def build_result(
    *,
    wheel: WheelInfo,
    sha256: str,
    gpu: Gpu,
    plan: EnvPlan,
    checks_name: str,
    checks: Mapping[str, Any],
    upstream: Mapping[str, Any] | None,
    started: dt.datetime,
    duration_s: float,
) -> dict[str, Any]:
    """The ``<wheel>.gpu.json`` document (schema 1); ``passed`` is the publish gate."""
    env = checks.get("env", {})
    cases = [{**{k: c.get(k) for k in CASE_KEYS}, **c} for c in checks.get("cases", [])]
    failed = [c["name"] for c in cases if not c.get("passed")]
    checks_ok = bool(checks.get("passed")) and not checks.get("error") and bool(cases) and not failed
    return {
        "schema": RESULT_SCHEMA,
        "wheel": wheel.name,
        "sha256": sha256,
        "passed": checks_ok and upstream_ok(upstream),
        "gpu": gpu.to_json(),
        "cuda": env.get("cuda"),
        "torch": env.get("torch"),
        "python": env.get("python"),
        "env": plan.mode,
        "env_reason": plan.reason,
        "installed": {"version": env.get("package_version"), "file": env.get("package_file")},
        "checks": {
            "name": checks_name,
            "passed": checks_ok,
            "error": checks.get("error"),
            "cases": len(cases),
            "failed": failed,
            "seconds": checks.get("seconds"),
        },
        "cases": cases,
        "upstream": dict(upstream) if upstream is not None else None,
        "duration_s": round(duration_s, 1),
        "started": started.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "runner": platform.node(),
    }


def write_result(path: Path, result: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def summary(result: Mapping[str, Any]) -> str:
    cases = result["cases"]
    ok = sum(1 for c in cases if c.get("passed"))
    sm = "sm" + result["gpu"]["capability"].replace(".", "")
    text = (
        f"{'PASSED' if result['passed'] else 'FAILED'}: {result['wheel']} on {result['gpu']['name']} "
        f"({sm}), {result['env']}: checks {ok}/{len(cases)} passed"
    )
    up = result.get("upstream")
    if up:
        text += (
            f"; upstream {up['passed']} passed, {up['failed']} failed, {up['skipped']} skipped, "
            f"{up['errors']} errors of {up['selected'] if up['selected'] is not None else '?'} selected"
            f"{' (stopped at the time budget)' if up['timed_out'] else ''}"
        )
    if result["checks"]["error"]:
        text += f"; error: {result['checks']['error']}"
    return text


# ----------------------------------------------------------------------------------------- orchestration


def run(opts: Options) -> Outcome:
    """The whole GPU test; the GPU probe comes first and nothing else runs on a machine without one."""
    gpu = probe_gpu(opts.python)
    if gpu is None:
        decision = decide(None, None, Rules("?"), require_gpu=opts.require_gpu)
        return Outcome(
            "refused" if decision.action == "refuse" else "skipped", decision.exit_code, decision.message
        )
    wheel = describe_wheel(opts.wheel)
    if not opts.wheel.is_file():
        raise BadInput(f"{opts.wheel}: no such wheel file")
    default_config = Path("build_matrix.toml")
    config = opts.config or (default_config if default_config.is_file() else None)
    rules = rules_for(wheel.project, config, wheel.variant)
    decision = decide(
        gpu, load_audit_archs(opts.wheel), rules, require_gpu=opts.require_gpu, wheel=wheel.name
    )
    if decision.action != "run":
        status = "refused" if decision.action == "refuse" else "skipped"
        return Outcome(status, decision.exit_code, decision.message, gpu=gpu)
    log.info(decision.message)
    return _test(opts, wheel, rules, gpu)


def _test(opts: Options, wheel: WheelInfo, rules: Rules, gpu: Gpu) -> Outcome:
    checks_name = opts.checks or rules.checks
    if not checks_name or not gpu_checks.script(checks_name).is_file():
        raise BadInput(
            f"no GPU checks {checks_name!r} for {wheel.project} (known: {', '.join(gpu_checks.available())})",
            hint="pass --checks NAME or set packages.<name>.gpu-test.checks in build_matrix.toml",
        )
    select = opts.upstream_select or rules.upstream_select
    member = opts.upstream_file or rules.upstream_file
    if opts.upstream_tests is not None and (not select or not member):
        raise BadInput(
            "upstream tests need a test file and a -k selection (the full suite takes hours)",
            hint="set upstream-tests/upstream-select in build_matrix.toml or pass "
            "--upstream-file/--upstream-select",
        )
    started, t0 = dt.datetime.now(dt.timezone.utc), time.monotonic()
    sha256 = _sha256(opts.wheel)
    if opts.workdir:
        opts.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="wheelfarm-gputest-", dir=opts.workdir))
    plan = plan_env(
        wheel,
        None if opts.installed or not opts.reuse_env else probe_python(opts.python),
        reuse=opts.reuse_env,
        installed=opts.installed,
    )
    log.info(f"environment: {plan.mode}: {plan.reason}")
    extra = (
        []
        if opts.installed
        else requirements(
            [*wheel_requires(opts.wheel), *rules.requires],
            opts.extra_requires,
            upstream=opts.upstream_tests is not None,
        )
    )
    with log.step(f"test environment ({plan.mode})"):
        env = make_env(
            plan, workdir, opts.python, wheel, extra, pip_source_args(opts.find_links, opts.index_url)
        )
    with log.step(f"GPU checks: {checks_name}"):
        checks = run_checks(env, checks_name, workdir, rules.env)
    upstream = None
    if opts.upstream_tests is not None:
        test_file = extract_upstream(opts.upstream_tests, member, workdir / "upstream")  # type: ignore[arg-type]
        for support in rules.upstream_support:
            extract_upstream(opts.upstream_tests, support, workdir / "upstream")
        budget = opts.upstream_timeout or rules.upstream_timeout
        with log.step(f"upstream tests: {member} -k {select!r}"):
            upstream = run_upstream(env, test_file, select, budget, rules.env)
    result = build_result(
        wheel=wheel,
        sha256=sha256,
        gpu=gpu,
        plan=plan,
        checks_name=checks_name,
        checks=checks,
        upstream=upstream,
        started=started,
        duration_s=time.monotonic() - t0,
    )
    keep = opts.keep or not result["passed"]
    if upstream is not None and not keep:
        result["upstream"]["log"] = None  # the work directory goes away
    path = opts.output or Path(f"{opts.wheel}.gpu.json")
    write_result(path, result)
    _report(result, workdir, keep=keep)
    status = "passed" if result["passed"] else "failed"
    return Outcome(
        status, 0 if result["passed"] else 1, f"{summary(result)}\n  result: {path}", result, path, gpu
    )


def _report(result: Mapping[str, Any], workdir: Path, *, keep: bool) -> None:
    for case in result["cases"]:
        if not case.get("passed"):
            log.error(
                f"case {case['name']}: {case.get('error') or case.get('worst')} err={case.get('max_err')} "
                f"tol={case.get('tol')}"
            )
    up = result.get("upstream")
    if up and up["failures"]:
        log.error(f"upstream failures (first {len(up['failures'])}): {', '.join(up['failures'][:5])} …")
    if keep:
        log.info(f"kept the test environment and logs in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
