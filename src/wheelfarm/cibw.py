"""Plan a cibuildwheel run for one group of cells (same package version, torch, CUDA, ABI, archs): the
``[tool.cibuildwheel]`` table wheelfarm writes, the container's mounts, and its hooks.

Pure: no subprocess, no engine (``container_build`` probes, resolves and runs). What goes where:

* ``before-all`` (once per container): the CUDA toolkit from its pinned PyPI wheels into a mounted, cached
  folder, made a CUDA_HOME (``lib64 -> lib``, ``libcudart.so``) — unless the image brings that CUDA itself;
* ``before-build`` (per Python): the group's exact torch into a mounted, cached folder per Python, put on that
  Python's path with a ``.pth`` file, plus the build tools (``build`` runs with ``--no-isolation``);
* environment: the package's knobs, MAX_JOBS/NVCC_THREADS planned for the container's memory limit, CUDA_HOME,
  the compiler (through sccache), and torch's ``PYTORCH_NVCC`` pointed at nvcc_shim.py → sccache → nvcc: the
  host's pinned sccache binary is mounted read-only (the image needs nothing installed), the local cache folder
  at one path for every Python (the source tree is /project for all of them too, torch's headers are at one
  path through nvcc_shim's link), so the group's second Python reuses the first one's .cu objects; an S3 cache
  gets its bucket/prefix/endpoint in the environment and credentials as a mounted file, never as values;
* ``repair-wheel-command``: ``auditwheel repair`` in the container (the libraries it may vendor are the
  image's), torch and CUDA excluded as ``repair.py`` does; the upstream name, METADATA and the audit are done
  on the host afterwards (``container_build``).

The hooks also append timestamps (``marks``) and write sccache's statistics per Python (zeroed before its build,
read after it), read back by ``parse_costs`` to report each Python's cost.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .compile_cache import TORCH_BUILD_ENV, CacheStats, parse_stats
from .config import CudaRelease
from .container import PODMAN_ULIMITS, Engine, Mount
from .errors import BadInput
from .jobs import JobPlan
from .matrix import Cell
from .repair import exclude_args

# Inside the container: the same paths for every Python of the group (compile-cache hits need that).
WF = PurePosixPath("/wf")
LIB = WF / "lib"  # wheelfarm's package folder (nvcc_shim.py, ninja_order.py), read-only
COMPILE_CACHE = WF / "compile-cache"  # a local --cache folder
SCCACHE = WF / "sccache"  # the host's pinned sccache binary (a static-enough manylinux2014 build), read-only
AWS_CREDENTIALS = WF / "aws-credentials"  # an S3 cache's credentials (a file the host writes), read-only
CXX_WRAPPER = WF / "cxx"  # the host compiler through sccache: a script named like the compiler, read-only
RUN = WF / "run"  # the group's own writable folder: sccache's socket, nvcc_shim's link (the chroot engine shares /tmp)
TORCH_LINK = RUN / "torch-site"  # nvcc_shim's one path for torch's headers, for every Python of the group
CUDA = WF / "cuda"  # CUDA toolkits from PyPI wheels, one folder per CUDA minor
TORCH = WF / "torch"  # torch per (version, Python)
PIP_CACHE = WF / "pip-cache"
LOGS = WF / "logs"
SHIMS = WF / "bin"  # the LPT ninja shim, read-only
DURATIONS = WF / "durations.json"
MARKS = LOGS / "marks"
CACHE_STATS = LOGS / "sccache"  # <identifier>.json: sccache's statistics of that Python's build
NINJA_LOGS = LOGS / "ninja"  # <identifier>/build/temp/.ninja_log: per-object seconds (build.record_durations)
UTILITY_PYTHON = "/opt/python/cp39-cp39/bin/python"  # cibuildwheel needs it in every image (DESIGN.md)
BUILD_TOOLS = ("build", "setuptools>=69", "wheel", "ninja", "packaging", "psutil")
PYPI = "https://pypi.org/simple"
RUN_LABEL = "org.wheelfarm.run"  # podman/docker label on the container of one cibuildwheel run
PY_DIGITS = "$(python -c 'import sys; print(\"%d%d\" % sys.version_info[:2])')"  # in a hook: "312"


# ------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class ImageFacts:
    """What the build image offers, from one ``PROBE`` run (``parse_facts``)."""

    ref: str
    glibc: str
    pythons: tuple[str, ...] = ()  # "/opt/python/<name>" folders: "cp311-cp311", ...
    gcc: int | None = None  # major version of g++ on PATH
    clangs: tuple[int, ...] = ()  # clang++-N present
    cuda_home: str | None = None  # the image's own CUDA (production images set CUDA_HOME)
    cuda: str | None = None  # its version, "13.0"
    ssl_cert_file: str | None = None  # the image's CA bundle (the test image trusts the host's)
    utility_python: str = UTILITY_PYTHON  # runs wheelfarm's shims (an image without cp39: its first Python)


PROBE = r"""
echo "glibc=$(getconf GNU_LIBC_VERSION | cut -d' ' -f2)"
echo "gcc=$(g++ -dumpversion 2>/dev/null)"
for c in /usr/bin/clang++-[0-9]*; do [ -x "$c" ] && echo "clang=${c##*-}"; done
for p in /opt/python/*/bin/python; do [ -x "$p" ] && echo "python=$(basename "$(dirname "$(dirname "$p")")")"; done
echo "cuda_home=${CUDA_HOME:-}"
[ -n "${CUDA_HOME:-}" ] && echo "cuda=$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"
echo "ssl_cert_file=${SSL_CERT_FILE:-}"
for p in /opt/python/cp39-cp39/bin/python /opt/python/*/bin/python; do [ -x "$p" ] && echo "utility=$p" && break; done
true
"""


def parse_facts(ref: str, text: str) -> ImageFacts:
    """``PROBE``'s output -> ImageFacts."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and value:
            values.setdefault(key, []).append(value)
    one = {key: vals[-1] for key, vals in values.items()}
    if "glibc" not in one:
        raise BadInput(f"image {ref}: cannot read its glibc version (getconf GNU_LIBC_VERSION)")
    gcc = re.match(r"\d+", one.get("gcc", ""))
    return ImageFacts(
        ref=ref, glibc=one["glibc"], pythons=tuple(sorted(values.get("python", []))),
        gcc=int(gcc.group()) if gcc else None,
        clangs=tuple(sorted(int(c) for c in values.get("clang", []) if c.isdigit())),
        cuda_home=one.get("cuda_home"), cuda=one.get("cuda"), ssl_cert_file=one.get("ssl_cert_file"),
        utility_python=values["utility"][0] if "utility" in values else UTILITY_PYTHON,
    )


@dataclass(frozen=True)
class PipSources:
    """The host's local wheel folders and file:// indexes (pip config and env), mounted read-only at the same
    paths so the container installs what lies on disk instead of downloading it again."""

    find_links: tuple[str, ...] = ()
    extra_index_urls: tuple[str, ...] = ()

    def folders(self) -> tuple[Path, ...]:
        """Host folders to mount: a find-links folder itself, a file:// index's parent (its ../files)."""
        out = [Path(p) for p in self.find_links]
        for url in self.extra_index_urls:
            path = Path(url.removeprefix("file://")).resolve()
            out.append(path.parent if path.name == "simple" else path)
        return tuple(dict.fromkeys(out))


def _local(value: str) -> bool:
    return value.startswith(("/", "file:///"))


def parse_pip_config(text: str) -> PipSources:
    """``pip config list`` output -> the local find-links folders and file:// extra indexes."""
    found: dict[str, list[str]] = {"find-links": [], "extra-index-url": []}
    for line in text.splitlines():
        match = re.match(r"^[\w:.-]*\.(find-links|extra-index-url)='(.*)'$", line.strip())
        if match:
            found[match.group(1)] += [v for v in match.group(2).split() if _local(v)]
    return PipSources(tuple(dict.fromkeys(p.removeprefix("file://") for p in found["find-links"])),
                      tuple(dict.fromkeys(found["extra-index-url"])))


@dataclass(frozen=True)
class HostDirs:
    """Host folders behind the container paths above (``shims``/``durations``: None = no LPT ordering)."""

    lib: Path
    compile_cache: Path | None  # a local --cache folder (None: an S3 cache)
    sccache: Path
    cuda: Path
    torch: Path
    logs: Path
    pip_cache: Path | None = None
    shims: Path | None = None
    durations: Path | None = None
    aws_credentials: Path | None = None
    cxx_wrapper: Path | None = None  # a folder holding cxx_wrapper_script() under the compiler's name
    run: Path | None = None  # behind RUN

    def mounts(self, pip: PipSources) -> list[Mount]:
        mounts = [Mount(self.lib, str(LIB), read_only=True), Mount(self.sccache, str(SCCACHE), read_only=True),
                  Mount(self.cuda, str(CUDA)), Mount(self.torch, str(TORCH)), Mount(self.logs, str(LOGS))]
        mounts += [Mount(self.compile_cache, str(COMPILE_CACHE))] if self.compile_cache else []
        mounts += [Mount(self.aws_credentials, str(AWS_CREDENTIALS), read_only=True)] if self.aws_credentials else []
        mounts += [Mount(self.cxx_wrapper, str(CXX_WRAPPER), read_only=True)] if self.cxx_wrapper else []
        mounts += [Mount(self.run, str(RUN))] if self.run else []
        mounts += [Mount(self.pip_cache, str(PIP_CACHE))] if self.pip_cache else []
        if self.shims and self.durations:
            mounts += [Mount(self.shims, str(SHIMS), read_only=True),
                       Mount(self.durations, str(DURATIONS), read_only=True)]
        return mounts + [Mount(folder, str(folder), read_only=True) for folder in pip.folders()]


@dataclass(frozen=True)
class GroupPlan:
    """Everything decided for one cibuildwheel run; ``table()`` is its configuration."""

    cells: tuple[Cell, ...]
    image: ImageFacts
    engine: Engine
    torch_version: str  # exact, "2.14.1" (resolved once: every Python of the group gets the same)
    torch_index: str | None  # PyTorch's own index when PyPI's torch is another CUDA build, else None
    cuda: CudaRelease
    compiler: Mapping[str, str]  # CC, CXX
    jobs: JobPlan
    memory_mb: int  # the container's memory limit (--memory); the job plan is made for it
    knobs: Mapping[str, str]
    cache_env: Mapping[str, str]  # sccache's configuration inside the container (compile_cache.CacheTarget.env)
    dirs: HostDirs
    pip: PipSources = field(default_factory=PipSources)
    extra_mounts: tuple[Mount, ...] = ()  # a runner's own torch and CUDA (``--python``/``--cuda-home``)
    run_id: str = ""  # labels this run's container (RUN_LABEL), so a stopped build can remove it

    def mounts(self) -> list[Mount]:
        return [*self.dirs.mounts(self.pip), *self.extra_mounts]

    @property
    def cuda_home(self) -> str:
        if self.toolkit is None:
            assert self.image.cuda_home
            return self.image.cuda_home
        return str(CUDA / self.cuda.version / "nvidia" / f"cu{self.cuda.version.split('.')[0]}")

    @property
    def toolkit(self) -> tuple[str, ...] | None:
        """PyPI pins that before-all installs; None when the image has this CUDA (production images)."""
        if self.image.cuda_home and self.image.cuda == self.cuda.version:
            return None
        return self.cuda.toolkit

    def table(self) -> dict[str, object]:
        return cibuildwheel_table(self)


# ------------------------------------------------------------------------------------------ decisions


def identifier(cell: Cell) -> str:
    """cibuildwheel's build identifier of the cell: ``cp311-manylinux_x86_64``."""
    arch = cell.platform.removeprefix("linux_")
    return f"{cell.python_tag}-manylinux_{arch}"


def missing_pythons(cells: Sequence[Cell], facts: ImageFacts) -> list[str]:
    return [c.python for c in cells if f"{c.python_tag}-{c.python_tag}" not in facts.pythons]


def choose_compiler(facts: ImageFacts, cxx_std: int, cuda: CudaRelease) -> dict[str, str]:
    """g++ when it is new enough for torch's C++ standard and CUDA accepts it, else the newest clang CUDA
    accepts (bullseye: g++ 10 cannot compile torch 2.14's C++20 headers, clang-16 can)."""
    min_gcc, min_clang = (11, 14) if cxx_std >= 20 else (7, 5)
    if facts.gcc and min_gcc <= facts.gcc <= (cuda.max_gcc or facts.gcc):
        return {"CC": "gcc", "CXX": "g++"}
    clangs = [n for n in facts.clangs if min_clang <= n <= (cuda.max_clang or n)]
    if clangs:
        return {"CC": f"clang-{max(clangs)}", "CXX": f"clang++-{max(clangs)}"}
    raise BadInput(
        f"image {facts.ref} has no C++ compiler for C++{cxx_std} that CUDA {cuda.version} accepts "
        f"(g++ {facts.gcc}, clang {list(facts.clangs)}; need g++ {min_gcc}..{cuda.max_gcc} or "
        f"clang {min_clang}..{cuda.max_clang})", hint="use an image with a supported compiler (docs/containers.md)")


def check_cuda(facts: ImageFacts, cuda: CudaRelease) -> None:
    if facts.cuda_home and facts.cuda == cuda.version:
        return
    if not cuda.nvcc_in_wheels:
        raise BadInput(f"image {facts.ref} has no CUDA {cuda.version} and its PyPI wheels carry no nvcc",
                       hint=f"build the image with it: containers/Containerfile.manylinux_2_28_* --build-arg "
                            f"CUDA={cuda.version} (docs/containers.md)")


def manylinux_platforms(glibc: str, arch: str) -> list[str]:
    """Platform tags an image with this glibc installs, newest first: pip's ``--platform`` takes each one
    literally (``manylinux_2_31`` alone would not match torch's ``manylinux_2_28`` wheels)."""
    minor = int(glibc.split(".")[1])
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{arch}" for m, name in legacy.items() if m <= minor]


def torch_dir(python_tag: str, torch_version: str) -> PurePosixPath:
    """Relative folder of one Python's torch under TORCH (and under HostDirs.torch)."""
    return PurePosixPath(f"torch-{torch_version}") / python_tag


# ------------------------------------------------------------------------------------------ the table


def environment(plan: GroupPlan) -> dict[str, str]:
    """CIBW environment, in evaluation order (later values may use earlier ones)."""
    env = {"CUDA_HOME": plan.cuda_home, "CUDA_PATH": plan.cuda_home}
    lpt = plan.dirs.shims is not None and plan.dirs.durations is not None
    if lpt:
        env |= {"WHEELFARM_REAL_NINJA": "$(which ninja)", "WHEELFARM_DURATIONS": str(DURATIONS)}
    cxx = plan.dirs.cxx_wrapper is not None  # first on PATH: torch checks CXX's bounds by its name (clang… or g++)
    env["PATH"] = (f"{CXX_WRAPPER}:" if cxx else "") + (f"{SHIMS}:" if lpt else "") + "$CUDA_HOME/bin:$PATH"
    env |= dict(plan.compiler) | plan.jobs.env() | dict(plan.knobs)
    env |= {"PYTORCH_NVCC": f"{plan.image.utility_python} {LIB / 'nvcc_shim.py'}",
            "WHEELFARM_REAL_NVCC": "$CUDA_HOME/bin/nvcc", "WHEELFARM_SCCACHE": str(SCCACHE),
            "WHEELFARM_TORCH_LINK": str(TORCH_LINK), "SCCACHE_IDLE_TIMEOUT": "0", **TORCH_BUILD_ENV,
            # a socket of the group's own: the chroot engine shares the host's network, and with it port 4226
            "SCCACHE_SERVER_UDS": str(RUN / "sccache.sock"),
            **dict(plan.cache_env)}
    env |= {"AWS_SHARED_CREDENTIALS_FILE": str(AWS_CREDENTIALS)} if plan.dirs.aws_credentials else {}
    if cxx:  # CXX stays the compiler's name; the wrapper of that name, first on PATH, runs it through sccache
        env |= {"WHEELFARM_REAL_CXX": plan.compiler["CXX"]}
    env |= {"PIP_CACHE_DIR": str(PIP_CACHE)} if plan.dirs.pip_cache else {}
    env |= {"PIP_FIND_LINKS": " ".join(plan.pip.find_links)} if plan.pip.find_links else {}
    env |= {"PIP_EXTRA_INDEX_URL": " ".join(plan.pip.extra_index_urls)} if plan.pip.extra_index_urls else {}
    # cibuildwheel points PIP_CERT at its own certifi bundle; the test image trusts the host's CA instead.
    env |= {"PIP_CERT": plan.image.ssl_cert_file} if plan.image.ssl_cert_file else {}
    for key, value in env.items():
        if '"' in value or "\\" in value:
            raise BadInput(f"environment value of {key} contains a quote or backslash: {value!r}")
    return env


def _mark(event: str, who: str = "$CIBUILDWHEEL_BUILD_IDENTIFIER") -> str:
    return f'echo "{event} {who} $(date +%s.%N)" >> {MARKS}'


def _cached(dest: str, steps: Sequence[str]) -> str:
    """Shell that fills ``dest`` once: ``steps`` fill a fresh "$t" beside it (mktemp: unique across containers
    sharing the mount), which is moved into place whole; if another build got there first, this copy is
    dropped. A failed step removes "$t" and fails the hook."""
    return (f'if [ ! -e "{dest}/.ready" ]; then mkdir -p "$(dirname "{dest}")"'
            f' && t=$(mktemp -d "{dest}.part.XXXXXX") && {" && ".join(steps)} && touch "$t/.ready"'
            f' && (mv -T "$t" "{dest}" 2>/dev/null || rm -rf "$t") || (rm -rf "$t"; exit 1); fi')


def before_all(plan: GroupPlan) -> list[str]:
    """The CUDA toolkit from its pinned PyPI wheels into CUDA/<minor> (kept between runs), made a CUDA_HOME."""
    steps = [_mark("before-all", "group")]
    if plan.toolkit is not None:
        major = plan.cuda.version.split(".")[0]
        home = f"$t/nvidia/cu{major}"
        steps.append(_cached(str(CUDA / plan.cuda.version), [
            f'python -m pip install --no-deps --target "$t" {shlex.join(plan.toolkit)}',
            f'ln -sfn lib "{home}/lib64"', f'ln -sf libcudart.so.{major} "{home}/lib/libcudart.so"']))
    steps.append(f"{plan.cuda_home}/bin/nvcc --version")
    steps.append(_mark("after-all", "group"))
    return steps


def _torch_install(plan: GroupPlan) -> str:
    args = []
    if plan.torch_index:  # PyPI's torch is another CUDA build: PyTorch's index first, PyPI for the rest
        args = ["--index-url", plan.torch_index]
        args += [a for url in (PYPI, *plan.pip.extra_index_urls) for a in ("--extra-index-url", url)]
    # --no-compile: torch's thousands of .py files get their .pyc on first import (the folder is writable)
    req = shlex.join([*args, f"torch=={plan.torch_version}"])
    return f'python -m pip install --no-compile --target "$t/site-packages" {req}'


def before_build(plan: GroupPlan) -> list[str]:
    """Per Python: the group's torch (cached per Python under TORCH), on that Python's path via a .pth file,
    the build tools into the Python itself (the container is thrown away afterwards)."""
    purelib = "$(python -c 'import sysconfig; print(sysconfig.get_path(\"purelib\"))')"
    return [
        _mark("before"),
        f'wf_torch="{TORCH}/torch-{plan.torch_version}/cp{PY_DIGITS}"',
        _cached("$wf_torch", [_torch_install(plan)]),
        f'echo "$wf_torch/site-packages" > "{purelib}/wheelfarm-torch.pth"',
        f"python -m pip install -q {shlex.join(BUILD_TOOLS)}",
        f"{SCCACHE} --zero-stats > /dev/null",  # starts this container's sccache server (with this environment)
        _mark("start"),
    ]


def repair_command() -> list[str]:
    """auditwheel in the image (it may vendor only the image's libraries), torch and CUDA excluded; the
    file name stays the build's (upstream convention), wheelfarm relabels and audits it on the host.
    First this Python's .ninja_log is kept (per-object seconds: the LPT order and the compile-work figures;
    /project/build holds every Python's temp folder of the container)."""
    keep = f"{NINJA_LOGS}/$CIBUILDWHEEL_BUILD_IDENTIFIER/build/temp"
    ninja_log = f"{{package}}/build/temp*-cpython-{PY_DIGITS}/.ninja_log"
    cmd = ["auditwheel", "repair", "--plat", "auto", "--no-update-tags", *exclude_args()]
    stats = f'{SCCACHE} --show-stats --stats-format json > "{CACHE_STATS}/$CIBUILDWHEEL_BUILD_IDENTIFIER.json"'
    return [_mark("built"), f'mkdir -p "{CACHE_STATS}" && {stats}',
            f'(mkdir -p "{keep}" && cp {ninja_log} "{keep}/") || true',
            f"{shlex.join(cmd)} -w {{dest_dir}} {{wheel}}", _mark("repaired")]


def create_args(plan: GroupPlan) -> list[str]:
    """Engine flags: podman's quirks (DESIGN.md), never pull, the memory cap the job plan assumed, mounts."""
    args = []
    if plan.engine.name == "podman":
        args += [f"--runtime={plan.engine.runtime}"] if plan.engine.runtime else []
        args += [f"--ulimit={u}" for u in PODMAN_ULIMITS]  # --ulimit replaces the default list: give both
    args += ["--pull=never", f"--memory={plan.memory_mb}m", f"--memory-swap={plan.memory_mb}m"]
    args += [f"--label={RUN_LABEL}={plan.run_id}"] if plan.run_id else []
    return args + [m.arg() for m in plan.mounts()]


def cibuildwheel_table(plan: GroupPlan) -> dict[str, object]:
    """The ``[tool.cibuildwheel]`` table for the group (written to a file passed as --config-file)."""
    arch = plan.cells[0].platform.removeprefix("linux_")
    return {
        "build": " ".join(identifier(c) for c in plan.cells),
        "archs": [arch],
        f"manylinux-{arch}-image": plan.image.ref,
        "container-engine": {"name": plan.engine.name, "create-args": create_args(plan),
                             "disable-host-mount": "true"},
        # --skip-dependency-check: before-build installed them; the check would run setup.py (import torch) once more
        "build-frontend": {"name": "build", "args": ["--no-isolation", "--skip-dependency-check"]},
        "environment": environment(plan),
        "before-all": before_all(plan),
        "before-build": before_build(plan),
        "repair-wheel-command": repair_command(),
        "test-command": "",
    }


def to_toml(table: Mapping[str, object], section: str = "tool.cibuildwheel") -> str:
    """A flat table of strings, ints, string lists and inline tables as TOML (JSON strings are TOML strings)."""

    def value(v: object) -> str:
        if isinstance(v, Mapping):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise TypeError(f"cannot write {v!r} as TOML here")
        return json.dumps(v)

    return f"[{section}]\n" + "".join(f"{key} = {value(v)}\n" for key, v in table.items())


def cxx_wrapper_script() -> str:
    """``$CXX`` in the container, named like it: the image's compiler (``WHEELFARM_REAL_CXX``, looked up on PATH
    without this wrapper's folder) through sccache."""
    return (f'#!/bin/sh\nPATH="${{PATH#{CXX_WRAPPER}:}}"\n'
            f'exec {SCCACHE} "$(command -v "$WHEELFARM_REAL_CXX")" "$@"\n')


def ninja_shim(python: str = UTILITY_PYTHON) -> str:
    """``ninja`` on PATH that starts the longest objects first (ninja_order.py), then the real ninja."""
    return f'#!/bin/sh\nexec {python} {LIB / "ninja_order.py"} "$@"\n'


# ------------------------------------------------------------------------------------------ read back


@dataclass(frozen=True)
class PythonCost:
    """One Python of the group: seconds for its torch setup, its build (compile + link) and its repair."""

    torch_s: float | None = None
    build_s: float | None = None  # wall seconds of cibuildwheel's build step (python -m build)
    repair_s: float | None = None
    compile_job_s: float | None = None  # the sum of ninja's per-object seconds (compile work, any parallelism)
    cache: CacheStats = field(default_factory=CacheStats)  # sccache's statistics of this Python's build
    objects: int = 0  # steps in that ninja log (compiles, cache hits included, and the link)

    def to_json(self) -> dict[str, object]:
        out = {k: round(v, 1) if isinstance(v, float) else v for k, v in self.__dict__.items() if k != "cache"}
        return out | {"compile_cache": self.cache.to_json()}


def _span(times: Mapping[str, float], start: str, end: str) -> float | None:
    return times[end] - times[start] if start in times and end in times else None


def ninja_rows(ninja_log: str) -> list[list[str]]:
    return [f for f in (line.split("\t") for line in ninja_log.splitlines() if not line.startswith("#")) if len(f) >= 4]


def ninja_job_seconds(ninja_log: str) -> float:
    """Sum of the object durations in a ``.ninja_log`` (v5+: start and end in ms, tab-separated)."""
    return sum(int(f[1]) - int(f[0]) for f in ninja_rows(ninja_log)) / 1000


def parse_costs(marks: str, stats: Mapping[str, str], ninja_logs: Mapping[str, str] | None = None
                ) -> dict[str, PythonCost]:
    """The hooks' marks (``event identifier epoch``), sccache's statistics (JSON per identifier) and the kept ninja
    logs, per identifier."""
    times: dict[str, dict[str, float]] = {}
    for line in marks.splitlines():
        parts = line.split()
        if len(parts) == 3:
            times.setdefault(parts[1], {})[parts[0]] = float(parts[2])
    logs = ninja_logs or {}
    return {
        ident: PythonCost(_span(t, "before", "start"), _span(t, "start", "built"), _span(t, "built", "repaired"),
                          ninja_job_seconds(logs[ident]) if ident in logs else None,
                          parse_stats(stats[ident]) if ident in stats else CacheStats(),
                          len(ninja_rows(logs.get(ident, ""))))
        for ident, t in times.items() if ident != "group"
    }
