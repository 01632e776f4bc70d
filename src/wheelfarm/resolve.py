"""Which mirror index and wheel fit an environment, or why none does, with the lines to paste.

``decide(env, files, ...)`` is pure: an ``Env`` (environment.py: Python, torch, torch's CUDA, C++ ABI, glibc, GPU
capability) and the wheel file names a mirror holds → a ``Decision``. A wheel fits when its CPython tag, torch
major.minor, CUDA tag (the one that package version's setup.py asks for, ``naming.setup_py_cuda_tag``), C++
ABI, platform (architecture, glibc floor of a ``manylinux_2_X`` tag, and the floor its audit measured:
``<wheel>.audit.json`` beside it) and variant archs (``sm90`` → that GPU only) all match. Nothing fits, whatever the
mirror holds, on a GPU below the package's minimum arch (flash-attn 2: sm80), under a torch built with a CUDA too
old for the GPU, or under a pre-release torch (NGC's ``2.6.0a0+…``: a wheel built against PyPI's torch may meet
undefined symbols there; the honest answer is a build against that very torch, which the decision spells out).
"""

from __future__ import annotations

import json
import re
import urllib.error
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

from . import answers, gpus, mirror_read, naming
from .environment import Env
from .errors import BadInput
from .gpu_code import GpuCode

_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")
_LEGACY_MANYLINUX = {"manylinux1": "2.5", "manylinux2010": "2.12", "manylinux2014": "2.17"}
_SM_VARIANT = re.compile(r"^sm(\d+)$")


@dataclass(frozen=True)
class Decision:
    ok: bool
    env: str
    wheel: str | None = None
    variant: str | None = None  # the variant index key (local label)
    index_url: str | None = None
    install: str | None = None  # the pip line; ``lines`` holds every form
    lines: Mapping[str, str] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()  # why nothing fits
    nearest: tuple[str, ...] = ()  # closest available wheels and how they differ
    build_command: str | None = None
    select: tuple[str, ...] = ()  # the build command's --select (matrix.select keys)
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class AuditFacts:
    """What a wheel's ``.audit.json`` says about where it runs."""

    glibc: str | None = None  # the highest GLIBC version its ELF files need
    code: GpuCode | None = None  # the GPU code it carries

    @classmethod
    def from_json(cls, data: bytes) -> AuditFacts | None:
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
        glibc = doc.get("glibc") if isinstance(doc.get("glibc"), dict) else {}
        floor = glibc.get("max_glibc") if glibc else None
        return cls(str(floor) if floor else None, GpuCode.from_audit(doc.get("archs")))


def _audit_mismatch(env: Env, facts: AuditFacts | None) -> list[str]:
    out = []
    if facts and facts.glibc and env.glibc and _version_key(facts.glibc) > _version_key(env.glibc):
        out.append(f"its audit says it needs glibc {facts.glibc}, the environment has {env.glibc}")
    if facts and facts.code and env.gpu and not facts.code.runs_on(env.gpu):
        out.append(f"its audit found GPU code for {facts.code.describe()} only: nothing runs on {gpus.sm(env.gpu)}")
    return out


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def decide(
    env: Env,
    files: Sequence[str],
    *,
    package: str = "flash-attn",
    mirror: str = "",
    min_arch: int | None = None,
    variant_archs: Mapping[str, Sequence[int]] | None = None,
    audit: Callable[[str], AuditFacts | None] | None = None,
) -> Decision:
    """Pick the wheel for ``env`` among ``files`` (file names), or explain why none fits. ``audit(file)`` is what
    the wheel's audit measured (None: no audit result); it is asked for the wheels that fit by name only. A
    standard wheel is preferred to a variant (which may be built for some GPUs only, or with features left out)."""
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
    notes: tuple[str, ...] = () if env.gpu else ("no GPU seen: the GPU architecture was not checked",)
    if env.glibc is None:
        notes += ("glibc unknown: the wheels' glibc floors were not checked",)
    fits = sorted(((f, w) for f, w, miss in wheels if not miss),
                  key=lambda fw: (fw[1].variant == "", Version(fw[1].version),
                                  fw[1].cuda_tag == naming.setup_py_cuda_tag(package, fw[1].version, env.cuda or "",
                                                                            env.torch), fw[1].platform),
                  reverse=True)
    refused: dict[str, list[str]] = {}
    for f, w in fits:
        facts = audit(f) if audit else None
        why = _audit_mismatch(env, facts)
        if why:
            refused[f] = why
            continue
        if audit and facts is None and (env.glibc or env.gpu):
            notes += (f"{f} has no audit result beside it on the mirror: its glibc floor and GPU code were not "
                      "checked",)
        if env.prerelease:
            return _prerelease(env, package, f, wheels, notes)
        if w.variant:
            notes += (f"this is a variant build ({w.variant}): made for some GPUs only or with features left out; "
                      "the mirror has no standard wheel for this environment",)
        answer = answers.for_wheel(mirror, f)
        return Decision(True, env.describe(), wheel=f, variant=f.split("-")[1].partition("+")[2],
                        index_url=answer.index_url, install=answer.pip, lines=answer.lines(), notes=notes)
    ranked = sorted(((f, refused.get(f, miss)) for f, _, miss in wheels), key=lambda t: (len(t[1]), t[0]))[:3]
    nearest = tuple(f"{f} (differs: {'; '.join(miss)})" for f, miss in ranked)
    if refused:
        reason = f"the {package} wheels that match by name do not fit what their audits measured"
    else:
        reason = f"no {package} wheel on the mirror fits" if wheels else f"the mirror has no {package} wheels"
    if env.prerelease:
        reason += f"; {_prerelease_reason(env)}"
    select = build_select(env, package, _newest([w for _, w, _ in wheels]))
    return Decision(
        False,
        env.describe(),
        reasons=(reason,),
        nearest=nearest,
        build_command=build_command(select, exact_torch=env.prerelease),
        select=tuple(select),
        notes=notes,
    )


def _prerelease_reason(env: Env) -> str:
    local = f"+{env.torch_local}" if env.torch_local else ""
    return (f"torch {env.torch}{local} is a pre-release build (NGC and nightlies build torch from source): a wheel "
            f"built against PyPI's torch {naming.torch_tag(env.torch or '')} may fail here with undefined symbols")


def _prerelease(env: Env, package: str, file: str, wheels: Sequence[tuple[str, naming.WheelName, list[str]]],
                notes: tuple[str, ...]) -> Decision:
    select = build_select(env, package, _newest([w for _, w, _ in wheels]))
    return Decision(
        False,
        env.describe(),
        reasons=(_prerelease_reason(env),),
        nearest=(f"{file} (matches by name, built against PyPI's torch {naming.torch_tag(env.torch or '')}: "
                 "at your own risk)",),
        build_command=build_command(select, exact_torch=True),
        select=tuple(select),
        notes=notes,
    )


def _env_blocker(env: Env, package: str, min_arch: int | None) -> str | None:
    if env.gpu and min_arch and env.gpu[0] * 10 + env.gpu[1] < min_arch:
        sm = gpus.sm(env.gpu)
        return (
            f"GPU {sm} is unsupported by {package}: it needs sm{min_arch} or newer (Ampere+); cards like "
            f"the T4 (sm75) or V100 (sm70) cannot run it, use torch's scaled_dot_product_attention instead"
        )
    if env.torch is None:
        return f"torch is not installed: {package} wheels are built per torch release, install torch first"
    if env.cuda is None:
        return f"torch {env.torch} is not a CUDA build (CPU-only, or ROCm): {package} needs a CUDA build of torch"
    need = gpus.min_cuda(env.gpu) if env.gpu else None
    if need and Version(env.cuda) < Version(need):
        sm = gpus.sm(env.gpu) if env.gpu else "?"
        return (
            f"torch {env.torch} is built with CUDA {env.cuda}, which has no kernels for this GPU ({sm} needs CUDA "
            f"{need} or newer): torch itself will fail on it, whatever {package} wheel is installed; install a torch "
            f"built for CUDA {need}+ first (e.g. pip install torch --index-url "
            f"https://download.pytorch.org/whl/cu{need.replace('.', '')})"
        )
    return None


def gpu_runs(variant: str, gpu: tuple[int, int], variant_archs: Mapping[str, Sequence[int]] | None = None) -> bool:
    """Whether a wheel of ``variant`` has code for ``gpu``: a variant named for its archs (``sm90``, or listed in
    ``variant_archs``) runs on those only; any other (the standard wheel) on every GPU the package supports."""
    archs = (variant_archs or {}).get(variant) or _sm_variant_archs(variant)
    return not archs or gpu[0] * 10 + gpu[1] in archs


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
    if w.cuda_tag != want and naming.toolkit_for_cuda_tag(w.cuda_tag).split(".")[0] != env.cuda.split(".")[0]:
        # The tag setup.py asks for, or another build of the same CUDA major (minor-version compatibility: upstream
        # serves every 12.x torch from one 12.3 build; the farm builds 2.6.3's cu12 wheels with 12.6).
        out.append(f"CUDA {w.cuda_tag} ≠ {want} (torch's CUDA {env.cuda})")
    if env.cxx11abi is not None and w.cxx11abi != env.cxx11abi:
        out.append(f"cxx11abi {str(w.cxx11abi).upper()} ≠ {str(env.cxx11abi).upper()}")
    out.extend(_platform_mismatch(env, w.platform))
    if env.gpu and not gpu_runs(w.variant, env.gpu, variant_archs):
        archs = (variant_archs or {}).get(w.variant) or _sm_variant_archs(w.variant)
        have = ",".join(map(str, archs))
        out.append(f"variant {w.variant} has code for sm{have} only, the GPU is {gpus.sm(env.gpu)}")
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
    if floor and env.glibc and _version_key(floor) > _version_key(env.glibc):
        out.append(f"needs glibc {floor}, the environment has {env.glibc}")
    return out


def build_select(env: Env, package: str, version: str | None = None) -> list[str]:
    """The ``--select`` of the standard cell for ``env`` (matrix.select's keys and globs): one package version
    (when known), torch X.Y, the CUDA its naming era tells apart, Python, ABI, this platform, no variant."""
    assert env.torch is not None and env.cuda is not None
    cuda = f"{env.cuda.split('.')[0]}.*"  # any build of torch's CUDA major: the matrix picks the toolkit per era
    abi = "TRUE" if env.cxx11abi in (True, None) else "FALSE"
    return [f"package={package}", *([f"version={version}"] if version else []), f"torch={naming.torch_tag(env.torch)}",
            f"cuda={cuda}", f"python={env.python}", f"cxx11abi={abi}", f"platform=linux_{env.machine}", "variant="]


def _newest(wheels: Sequence[naming.WheelName]) -> str | None:
    return max((w.version for w in wheels), key=Version, default=None)


def build_command(select: Sequence[str], *, exact_torch: bool = False) -> str:
    words = " ".join(select)
    if exact_torch:  # against the environment's own torch and CUDA: the host backend with this interpreter
        return (f"wheelfarm build --backend host --python \"$(command -v python)\" --cuda-home "
                f"\"${{CUDA_HOME:-/usr/local/cuda}}\" --select {words}   # inside it, from a wheelfarm checkout with "
                "pip install -e '.[farm]'")
    return f"nox -s build -- --select {words}"


def against_matrix(decision: Decision, env: Env, package: str, matrix: Path) -> Decision:
    """The decision's build command checked against ``matrix``: pinned to the newest version the matrix builds for
    this environment when the mirror named none, or a note that the matrix has no such cell yet."""
    from .config import load
    from .matrix import expand, select

    if not decision.select or env.torch is None or env.cuda is None:
        return decision
    every = expand(load(matrix))
    cells = select(every, decision.select)
    versions = {c.version for c in cells}
    chosen = list(decision.select)
    if len(versions) > 1 or (cells and not any(s.startswith("version=") for s in chosen)):
        chosen = build_select(env, package, max(versions, key=Version))
    if len({c.wheel for c in select(every, chosen)}) > 1:  # two toolkits of one major make two names: torch's own
        exact = [f"cuda={env.cuda}" if s.startswith("cuda=") else s for s in chosen]
        chosen = exact if select(every, exact) else chosen
    if cells:
        exact_torch = decision.build_command is not None and decision.build_command.startswith("wheelfarm build")
        return replace(decision, select=tuple(chosen), build_command=build_command(chosen, exact_torch=exact_torch))
    note = (f"{matrix} has no such cell yet: add the torch/CUDA/Python to a [[matrix]] block (one toml edit), "
            "then run that command")
    return replace(decision, notes=(*decision.notes, note))


# ----------------------------------------------------------------------------------------- the mirror


_LABEL_DIR = re.compile(r"^cu\d+torch[\d.]+cxx11abi(TRUE|FALSE)(\.[A-Za-z0-9]+)*$")  # a variant index folder


def mirror_url(value: str) -> str:
    """The mirror root as a URL: a directory becomes file://; a trailing ``/simple`` is dropped, and so is a
    variant folder before it (``…/cu12torch2.8cxx11abiTRUE/simple`` names the same mirror, not a root below it)."""
    url = value if "://" in value else Path(value).resolve().as_uri()
    url = url.rstrip("/")
    head, _, last = url.rpartition("/")
    if head.endswith("/simple"):  # …/simple/<project>: a project page
        url = head
    if url.endswith("/simple"):
        url = url[: -len("/simple")]
    head, _, last = url.rpartition("/")
    if _LABEL_DIR.match(last):  # …/<variant>[/simple]: a variant index of the mirror
        url = head
    return url


def _no_mirror(mirror: str) -> BadInput:
    return BadInput(f"--index-url {mirror}: no wheelfarm mirror there (no simple/ index)",
                    hint="give the mirror's root (the folder or URL holding simple/ and <variant>/simple/), "
                         "or publish into it first")


def _get(mirror: str, url: str) -> bytes | None:
    try:
        return mirror_read.get(url)
    except (urllib.error.URLError, OSError) as exc:
        raise BadInput(f"--index-url {mirror}: cannot read {url} ({exc})") from exc


class MirrorView:
    """The wheels of one project on a mirror, and the glibc floor their audits measured (read on demand)."""

    def __init__(self, mirror: str, package: str) -> None:
        self.mirror = mirror
        found = mirror_read.project_wheels(mirror, canonicalize_name(package), lambda u: _get(mirror, u))
        if found is None and _get(mirror, f"{mirror}/simple/") is None:
            raise _no_mirror(mirror)
        self.urls = found or {}

    @property
    def files(self) -> list[str]:
        return sorted(self.urls)

    def audit(self, file: str) -> AuditFacts | None:
        """What ``<file>.audit.json`` beside the wheel says; None when there is none (or it is not readable)."""
        data = _get(self.mirror, self.urls[file] + ".audit.json")
        return AuditFacts.from_json(data) if data else None


def available_wheels(mirror: str, package: str) -> list[str]:
    """The wheel file names the mirror holds for ``package`` (through the global page and the variant pages)."""
    return MirrorView(mirror, package).files
