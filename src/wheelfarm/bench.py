"""Build cost as ratios, measured side by side in one run on one machine (``wheelfarm bench``, ``nox -s bench``).

Absolute times on a shared machine are noisy; ratios of builds run back to back on the same machine are what count.
Each figure has a goal (issue 10; DESIGN.md has the measurements behind them):

- ``cold-vs-upstream``: one cold cell, ``wheelfarm build`` (empty compile cache) / the upstream method (the sdist's own
  build: ``pip wheel --no-build-isolation`` of the patched source, MAX_JOBS = cores, NVCC_THREADS=2, no compile cache,
  ninja's own order) — goal ≤ 0.88;
- ``extra-python``: each additional Python of a (torch, CUDA, ABI, archs) group / the group's first — goal ≤ 0.06;
- ``second-runner``: .cu objects a second runner compiles for the group's first cell, its work dir and local disk
  empty, reading the first runner's objects from the shared S3 cache (sccache's statistics) — goal 0; with
  ``--cache s3://…`` a real bucket, else moto's S3 server on 127.0.0.1 (a stand-in, labelled so);
- ``span-vs-limit``: ninja's span / (compile job-seconds from its .ninja_log ÷ cores) — goal ≤ 1.06;
- ``peak-vs-plan``: peak RSS of the build's process tree / the planner's MAX_JOBS × per-job peak — goal ≤ 1.0;
- ``plan-seconds``: ``wheelfarm plan`` with nothing missing — goal < 60 s.

Recorded runs (``docs/gpu-runs/*/`` with ``ninja_log``, ``machine.txt``, ``build.json``; more with ``--ninja-log``) are
analysed the same way, so one table names every machine a figure comes from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from rich.table import Table

from . import jobs, log, toolchain
from .build import BuildPaths, BuildResult, build_cell
from .compile_cache import CacheTarget
from .config import Config
from .errors import BadInput, BuildFailed
from .matrix import Cell, expand
from .paths import cache_dir

SCHEMA = 1
DEFAULT_SELECT = ("package=fixture-attn",)
# flash-attn's only object that includes Python.h (DESIGN.md): what an extra Python must compile again.
RECORDED_PYTHON_OBJECTS = ("flash_api.o",)
UPSTREAM_NVCC_THREADS = "2"  # upstream flash-attn CI (DESIGN.md)
GPU_RUNS = "docs/gpu-runs"
SAME_PYTHON = "wheelfarm+same-python"  # the extra-Python build's role when the group has one interpreter
SECOND_RUNNER = "wheelfarm+second-runner"  # the group's first cell again: fresh work dir, only the shared cache


# ------------------------------------------------------------------------------------------------ goals


@dataclass(frozen=True)
class Goal:
    op: str  # "<=" | "<"
    limit: float
    unit: str = "×"

    def met(self, value: float) -> bool:
        return value <= self.limit if self.op == "<=" else value < self.limit

    def __str__(self) -> str:
        return f"{'≤' if self.op == '<=' else '<'}{self.limit:g}{'' if self.unit == '×' else ' '}{self.unit}"

    def show(self, value: float) -> str:
        return {"s": f"{value:.1f} s", "objects": f"{value:.0f} objects"}.get(self.unit, f"{value:.3f}×")


GOALS = {
    "cold-vs-upstream": Goal("<=", 0.88),
    "extra-python": Goal("<=", 0.06),
    "second-runner": Goal("<=", 0, "objects"),
    "span-vs-limit": Goal("<=", 1.06),
    "peak-vs-plan": Goal("<=", 1.0),
    "plan-seconds": Goal("<", 60.0, "s"),
}
TITLES = {
    "cold-vs-upstream": "cold cell: wheelfarm / upstream method",
    "extra-python": "additional Python / first Python of the group",
    "second-runner": "second runner, empty local cache, shared S3: .cu objects compiled",
    "span-vs-limit": "ninja span / (compile job-s ÷ cores)",
    "peak-vs-plan": "peak RSS / planner (MAX_JOBS × per-job MB)",
    "plan-seconds": "`wheelfarm plan`, nothing missing",
}


@dataclass(frozen=True)
class Figure:
    """One measured (or recorded, or projected) value against its goal, with the machine it comes from."""

    metric: str
    value: float | None  # None: not measured (``how`` says why)
    machine: str
    how: str
    source: str = "measured"  # measured | recorded | projection

    @property
    def goal(self) -> Goal:
        return GOALS[self.metric]

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.goal.met(self.value)

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "title": TITLES[self.metric], "value": _round(self.value),
                "goal": str(self.goal), "met": self.met, "machine": self.machine, "source": self.source,
                "how": self.how}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# ------------------------------------------------------------------------------------------- ninja logs


@dataclass(frozen=True)
class NinjaStats:
    """Per-object compile seconds from a ``.ninja_log`` (v5+: start ms, end ms, mtime, output, hash)."""

    seconds: dict[str, float]  # object file name -> seconds
    span_s: float

    @property
    def objects(self) -> int:
        return len(self.seconds)

    @property
    def job_s(self) -> float:
        return sum(self.seconds.values())

    @property
    def longest(self) -> tuple[str, float]:
        return max(self.seconds.items(), key=lambda kv: kv[1])

    def limit_s(self, cores: int) -> float:
        """The physical limit: every core busy from the first compile to the last."""
        return self.job_s / cores

    def bound_s(self, cores: int) -> float:
        """No schedule beats the limit nor the longest single object."""
        return max(self.limit_s(cores), self.longest[1])

    def efficiency(self, cores: int) -> float:
        return self.span_s / self.limit_s(cores)

    def seconds_of(self, names: Iterable[str]) -> float:
        return sum(self.seconds.get(n, 0.0) for n in names)

    def to_json(self, cores: int) -> dict[str, Any]:
        name, longest = self.longest
        return {"objects": self.objects, "job_s": round(self.job_s, 1), "span_s": round(self.span_s, 1),
                "cores": cores, "limit_s": round(self.limit_s(cores), 1), "bound_s": round(self.bound_s(cores), 1),
                "efficiency": round(self.efficiency(cores), 4), "longest": name, "longest_s": longest}


def parse_ninja_log(text: str) -> NinjaStats:
    """The last entry per output wins (ninja appends); the span runs from the first start to the last end."""
    entries: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if line.startswith("#") or len(fields) < 4:
            continue
        entries[fields[3]] = (int(fields[0]), int(fields[1]))
    if not entries:
        raise BadInput("the ninja log has no entries", hint="pass the .ninja_log of a finished build")
    span = (max(e for _, e in entries.values()) - min(s for s, _ in entries.values())) / 1000
    return NinjaStats({Path(out).name: (e - s) / 1000 for out, (s, e) in entries.items()}, span)


def read_ninja_log(path: Path) -> NinjaStats:
    try:
        return parse_ninja_log(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        raise BadInput(f"no ninja log at {path}") from None


def cell_ninja_log(paths: BuildPaths, cell: Cell) -> Path | None:
    """The .ninja_log of ``cell``'s extension in its group's source tree (one build folder per Python)."""
    tag = cell.python.replace(".", "")
    found = sorted(paths.group_dir(cell).glob(f"source/*/build/temp*-cpython-{tag}*/.ninja_log"))
    return found[0] if found else None


def python_dependent_objects(ninja_log: Path, stats: NinjaStats) -> list[str]:
    """The objects an additional Python compiles again: those torch's build.ninja (beside the log) builds with the
    host compiler (its ``compile`` rule: the binding .cpp files, which include Python.h); every .cu object
    (``cuda_compile``) preprocesses to the same text for each Python and comes from sccache."""
    manifest = ninja_log.with_name("build.ninja")
    text = manifest.read_text(errors="replace") if manifest.exists() else ""
    host = {Path(line[len("build "):].split(":")[0]).name for line in text.splitlines()
            if line.startswith("build ") and ": compile " in line}
    return sorted(host & set(stats.seconds))


# ------------------------------------------------------------------------------------------ the machine


def describe_machine() -> str:
    """This machine in words: cores, CPU model, memory, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = f"{jobs.meminfo_available_mb() // 1024} GiB available" if Path("/proc/meminfo").exists() else "?"
    gpu = "no GPU"
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, check=False).stdout.strip().splitlines()
        gpu = out[0] if out else gpu
    return f"this host: {jobs.usable_cores()} cores ({cpu}), {memory}, {gpu}"


# ------------------------------------------------------------------------------------------ recorded runs


@dataclass(frozen=True)
class RecordedRun:
    """A committed build record: its ninja log, the cores it ran on and, where known, the cell's wall time and the
    planner's numbers (``build.json`` of ``wheelfarm build --json``)."""

    ninja_log: Path
    cores: int
    machine: str
    cell_seconds: float | None = None
    peak_mb: int | None = None
    predicted_mb: int | None = None


def recorded_runs(root: Path) -> list[RecordedRun]:
    """Every ``docs/gpu-runs/*/ninja_log`` with its ``machine.txt`` (line 2: cores; a GPU line) and ``build.json``."""
    runs = []
    for log_path in sorted((root / GPU_RUNS).glob("*/ninja_log")):
        folder = log_path.parent
        lines = (folder / "machine.txt").read_text().splitlines() if (folder / "machine.txt").exists() else []
        cores = next((int(ln) for ln in lines if ln.strip().isdigit()), 0)
        gpu = next((ln.split(",")[0] for ln in lines if ln.startswith("NVIDIA")), "GPU host")
        if not cores:
            log.warn(f"{folder}/machine.txt names no core count: {log_path} skipped")
            continue
        seconds = peak = predicted = None
        if (folder / "build.json").exists():
            data = json.loads((folder / "build.json").read_text())
            record = data[0] if isinstance(data, list) else data
            seconds, peak = record.get("seconds"), record.get("peak_rss_mb")
            plan = record.get("plan") or {}
            if plan.get("max_jobs") and plan.get("per_job_mb"):
                predicted = int(plan["max_jobs"]) * int(plan["per_job_mb"])
        machine = f"{gpu} host, {cores} cores ({GPU_RUNS}/{folder.name}, wheelfarm build)"
        runs.append(RecordedRun(log_path, cores, machine, seconds, peak, predicted))
    return runs


def parse_log_spec(spec: str) -> RecordedRun:
    """``PATH:CORES[:LABEL]`` → a recorded run (only the ninja log is known)."""
    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) < 1:
        raise BadInput(f"--ninja-log {spec!r}: expected PATH:CORES[:LABEL], e.g. ninja_log:16:'H100, upstream'")
    label = parts[2] if len(parts) == 3 else f"{parts[1]} cores ({parts[0]})"
    return RecordedRun(Path(parts[0]), int(parts[1]), label)


def recorded_figures(run: RecordedRun) -> list[Figure]:
    stats = read_ninja_log(run.ninja_log)
    name, longest = stats.longest
    figures = [Figure(
        "span-vs-limit", stats.efficiency(run.cores), run.machine, source="recorded",
        how=(f"span {stats.span_s:.0f} s / ({stats.job_s:,.0f} job-s ÷ {run.cores}) = {stats.span_s:.0f} / "
             f"{stats.limit_s(run.cores):.0f}; {stats.objects} objects, longest {name} {longest:.0f} s"))]
    py_s = stats.seconds_of(RECORDED_PYTHON_OBJECTS)
    if py_s:
        objects = "+".join(RECORDED_PYTHON_OBJECTS)
        figures.append(Figure("extra-python", py_s / stats.job_s, run.machine, source="projection (job-s share)",
                              how=f"{objects} {py_s:.1f} s / {stats.job_s:,.0f} job-s: the only compile work an "
                                  "additional Python repeats"))
    if py_s and run.cell_seconds:
        fixed = run.cell_seconds - stats.span_s  # outside ninja (setup.py, link, zip, relabel): paid again per Python
        figures.append(Figure(
            "extra-python", (py_s + fixed) / run.cell_seconds, run.machine, source="projection (wall)",
            how=(f"({py_s:.0f} s {objects}, one job + {fixed:.0f} s of the cell outside ninja) / "
                 f"{run.cell_seconds:.0f} s cell wall; an upper bound (the {fixed:.0f} s include unpack and patch)")))
    if run.peak_mb and run.predicted_mb:
        figures.append(Figure("peak-vs-plan", run.peak_mb / run.predicted_mb, run.machine, source="recorded",
                              how=f"{run.peak_mb:,} MB sampled / {run.predicted_mb:,} MB planned"))
    return figures


# ---------------------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Options:
    work_dir: Path
    python: Path | None = None
    cuda_home: Path | None = None
    sdists: tuple[Path, ...] = ()
    skip: frozenset[str] = frozenset()
    cache: CacheTarget | None = None  # the shared cache every wheelfarm build of the bench uses (None: local)
    cache_note: str = ""  # what stands in for it ("moto's S3 server on 127.0.0.1")


@dataclass
class Measured:
    role: str  # "wheelfarm" | "upstream" | "wheelfarm+python"
    result: BuildResult
    ninja: NinjaStats | None
    settings: dict[str, Any] = field(default_factory=dict)
    cpu_s: float = 0.0  # user + system seconds of the whole build tree: the work, whatever else ran meanwhile
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after: others' work on a shared host
    ninja_log: Path | None = None  # the build's .ninja_log (build.ninja beside it)

    def to_json(self) -> dict[str, Any]:
        cores = self.result.plan.cores
        return {"role": self.role, "settings": self.settings, "cpu_s": round(self.cpu_s, 1),
                "load_before_after": [round(x, 2) for x in self.load],
                "build": self.result.to_json(), "ninja": self.ninja.to_json(cores) if self.ninja else None}


def children_cpu_s() -> float:
    """CPU seconds of every finished, waited-for descendant so far (pip → setup.py → ninja → nvcc … all are)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pick_group(cells: Sequence[Cell]) -> list[Cell]:
    """The first (torch, CUDA, ABI, archs) group of the selection, its Pythons in order."""
    if not cells:
        raise BadInput("no cell matches the selection", hint="list the cells with `wheelfarm matrix`")
    groups = sorted({c.group for c in cells})
    if len(groups) > 1:
        log.warn(f"bench measures one group; the selection has {len(groups)}: using {groups[0]}")
    return sorted((c for c in cells if c.group == groups[0]), key=lambda c: [int(p) for p in c.python.split(".")])


def _fresh(work_dir: Path, sdists: Sequence[Path]) -> BuildPaths:
    """An empty work dir (so: an empty compile cache), its sdist cache seeded so nothing is downloaded again."""
    shutil.rmtree(work_dir, ignore_errors=True)
    (work_dir / "sdists").mkdir(parents=True)
    for folder in sdists:
        for sdist in sorted(folder.glob("*.tar.gz")) if folder.is_dir() else []:
            if not (work_dir / "sdists" / sdist.name).exists():
                shutil.copy2(sdist, work_dir / "sdists" / sdist.name)
    return BuildPaths(work_dir=work_dir, wheelhouse=work_dir / "wheelhouse")


def _measure(role: str, build: Callable[[], BuildResult], paths: BuildPaths, settings: dict[str, Any]) -> Measured:
    cpu, load = children_cpu_s(), os.getloadavg()[0]
    result = build()
    cpu, load_after = children_cpu_s() - cpu, os.getloadavg()[0]
    if not result.ok:
        raise BuildFailed(f"bench: the {role} build of {result.cell.wheel} failed: {result.error}")
    ninja_log = cell_ninja_log(paths, result.cell)
    if ninja_log:  # kept beside the work dirs, with its build.ninja: a later build of the group replaces the tree's
        tag = f"{role}-cp{result.cell.python.replace('.', '')}-{time.time():.0f}"
        keep = paths.work_dir.parent / "ninja-logs" / tag
        keep.mkdir(parents=True, exist_ok=True)
        for name in (ninja_log.name, "build.ninja"):
            if (ninja_log.parent / name).exists():
                shutil.copy2(ninja_log.parent / name, keep / name)
        ninja_log = keep / ninja_log.name
    log.info(f"bench: {role} {result.cell.wheel}: {result.seconds:.1f} s wall, {cpu:.1f} s CPU, "
             f"{result.objects_compiled}/{result.objects_total} objects, load average {load:.2f} → {load_after:.2f}")
    log.info(f"bench: {role}: {result.cache.describe()}")
    return Measured(role, result, read_ninja_log(ninja_log) if ninja_log else None, settings, cpu,
                    (load, load_after), ninja_log)


@contextlib.contextmanager
def s3_stand_in() -> Iterator[CacheTarget | None]:
    """moto's S3 server on 127.0.0.1 (the real S3 wire protocol; no real S3 is reachable here) with one bucket, and
    the process's AWS settings pointed at it with dummy credentials for the duration; None without moto."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        log.warn("bench: no moto (pip install 'wheelfarm[test]') and no --cache s3://…: the second-runner figure "
                 "is not measured, the builds use a local cache")
        yield None
        return
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not one line per S3 request of sccache
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    fake = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in [*fake, "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3"]}
    try:
        for key in saved:
            os.environ.pop(key, None)
        os.environ.update(fake)
        boto3.client("s3", endpoint_url=fake["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(
            Bucket="wheelfarm-bench-cache")
        yield CacheTarget(bucket="wheelfarm-bench-cache", prefix="sccache")
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value
        server.stop()


def upstream_build(config: Config, cell: Cell, tc: toolchain.Toolchain, paths: BuildPaths) -> BuildResult:
    """The sdist's own build as upstream runs it: MAX_JOBS = cores, NVCC_THREADS=2, no cache, ninja's order."""
    cores = jobs.usable_cores()
    return build_cell(config, cell, tc, paths, max_jobs=cores, retry_oom=False, compile_cache=False, lpt=False,
                      extra_env={"MAX_JOBS": str(cores), "NVCC_THREADS": UPSTREAM_NVCC_THREADS})


def complete_mirror(config: Config, mirror: Path) -> int:
    """A local mirror holding every cell of the matrix: a stand-in file under each wheel's name (DESIGN.md layout
    ``wheels/<project>/<file>``) with a passing ``.audit.json``; ``plan`` reads only names and result files."""
    cells = expand(config)
    for cell in cells:
        wheel = mirror / "wheels" / canonicalize_name(cell.package) / cell.wheel
        wheel.parent.mkdir(parents=True, exist_ok=True)
        wheel.write_bytes(b"stand-in: plan never reads a wheel\n")
        wheel.with_name(wheel.name + ".audit.json").write_text(json.dumps({"schema": 1, "passed": True}))
    return len(cells)


def time_plan(config: Config, work_dir: Path) -> Figure:
    """``wheelfarm plan --against MIRROR`` over the whole matrix, the mirror holding every wheel: nothing missing."""
    machine = describe_machine()
    mirror = work_dir / "complete-mirror"
    shutil.rmtree(mirror, ignore_errors=True)
    cells = complete_mirror(config, mirror)
    cmd = [sys.executable, "-m", "wheelfarm", "plan", "--matrix", str(config.path), "--against", str(mirror),
           "--json"]
    start = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    try:
        missing = json.loads(out.stdout)["missing"] if out.returncode == 0 else None
    except (ValueError, KeyError):
        missing = None
    if missing != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or [""]
        return Figure("plan-seconds", None, machine,
                      f"not measured: `wheelfarm plan` exited {out.returncode}, missing={missing}: {tail[0]}")
    return Figure("plan-seconds", seconds, machine,
                  f"`wheelfarm plan --against <local mirror> --json` over all {cells} matrix cells, every wheel "
                  "present (stand-in files with passing audit results): wall time of the command, 0 missing")


@dataclass
class Report:
    machine: str
    selection: list[str]
    figures: list[Figure]
    builds: list[Measured] = field(default_factory=list)
    group: str = ""

    def to_json(self, argv: Sequence[str]) -> dict[str, Any]:
        return {"schema": SCHEMA, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(["wheelfarm", "bench", *argv]), "machine": self.machine,
                "load_average_1min_at_end": round(os.getloadavg()[0], 2),
                "selection": self.selection, "group": self.group,
                "figures": [f.to_json() for f in self.figures], "builds": [b.to_json() for b in self.builds]}

    def table(self) -> Table:
        table = Table(title="wheelfarm bench: ratios against their goals")
        for column in ("figure", "value", "goal", "met", "machine", "how"):
            table.add_column(column, overflow="fold")
        for f in self.figures:
            value = "-" if f.value is None else f.goal.show(f.value)
            met = {True: "yes", False: "NO", None: "-"}[f.met]
            table.add_row(TITLES[f.metric], value, str(f.goal), met, f.machine, f"[{f.source}] {f.how}")
        return table


def measured_figures(machine: str, first: Measured, extras: Sequence[Measured], upstream: Measured | None
                     ) -> list[Figure]:
    figures = []
    if upstream is not None:
        # the upstream method ends with pip's wheel: wheelfarm's relabel (METADATA, torch pin) is not its work
        up_s = upstream.result.seconds - upstream.result.phases.get("relabel", 0.0)
        how = (f"{first.result.seconds:.1f} s / {up_s:.1f} s ({first.result.cell.wheel}; the upstream time without "
               "wheelfarm's relabel)")
        if first.cpu_s and upstream.cpu_s:
            how += f"; CPU {first.cpu_s:.0f} / {upstream.cpu_s:.0f} s"
        if first.ninja and upstream.ninja:
            how += f"; ninja spans {first.ninja.span_s:.1f} / {upstream.ninja.span_s:.1f} s"
        figures.append(Figure("cold-vs-upstream", first.result.seconds / up_s, machine, how))
    py_objects = python_dependent_objects(first.ninja_log, first.ninja) if first.ninja and first.ninja_log else []
    for extra in extras:
        if extra.role == SECOND_RUNNER:
            continue
        how = (f"Python {extra.result.cell.python} {extra.result.seconds:.1f} s / Python {first.result.cell.python} "
               f"{first.result.seconds:.1f} s; {extra.result.cache.describe()} "
               f"({extra.result.cache.location}); ninja ran {extra.result.objects_compiled}/"
               f"{extra.result.objects_total} objects")
        if extra.role == SAME_PYTHON:
            how += ("; stand-in: the same interpreter again, its per-Python build folders deleted (one Python with "
                    "torch on this machine)")
        figures.append(Figure("extra-python", extra.result.seconds / first.result.seconds, machine, how))
    for runner in (m for m in extras if m.role == SECOND_RUNNER):
        cache = runner.result.cache
        figures.append(Figure(
            "second-runner", cache.kernel_misses, machine,
            f"{runner.result.cell.wheel} again in an emptied work dir at the same path, no local cache: "
            f"{cache.describe()}; cicc/ptxas steps {cache.device_hits} hits, {cache.device_misses} compiled; "
            f"{runner.result.seconds:.1f} s = {runner.result.seconds / first.result.seconds:.3f}× of the first "
            f"runner's cold {first.result.seconds:.1f} s; {cache.location}"))
    if first.ninja and py_objects:
        py_s = first.ninja.seconds_of(py_objects)
        fixed = first.result.seconds - first.ninja.span_s
        figures.append(Figure(
            "extra-python", (py_s + fixed) / first.result.seconds, machine, source="projection",
            how=(f"Python-dependent {'+'.join(py_objects)} {py_s:.1f} s = {py_s / first.ninja.job_s:.1%} of the "
                 f"job-seconds; ({py_s:.0f} s + {fixed:.0f} s outside ninja) / {first.result.seconds:.0f} s")))
    for m in (first, upstream):
        if m is None or m.ninja is None:
            continue
        cores, stats = m.result.plan.cores, m.ninja
        figures.append(Figure(
            "span-vs-limit", stats.efficiency(cores), machine,
            f"{m.role} order: span {stats.span_s:.1f} s / ({stats.job_s:.1f} job-s ÷ {cores}); no schedule beats "
            f"{stats.bound_s(cores) / stats.limit_s(cores):.3f}× here ({stats.objects} objects, longest "
            f"{stats.longest[0]} {stats.longest[1]:.1f} s)"))
    plan = first.result.plan
    predicted = plan.max_jobs * plan.per_job_mb
    figures.append(Figure("peak-vs-plan", first.result.peaks.total_mb / predicted, machine,
                          f"{first.result.peaks.total_mb:,} MB sampled / MAX_JOBS {plan.max_jobs} × "
                          f"{plan.per_job_mb:,} MB ({plan.per_job_source})"))
    return figures


def run_round(config: Config, group: Sequence[Cell], tcs: dict[Cell, toolchain.Toolchain], opts: Options,
              upstream_first: bool) -> tuple[Measured, Measured | None, list[Measured]]:
    """One round: the first Python cold both ways (in fresh work dirs), then each additional Python."""
    first_cell, extra_cells = group[0], group[1:]
    wf_paths = _fresh(opts.work_dir / "wheelfarm", opts.sdists)
    up_paths = _fresh(opts.work_dir / "upstream", opts.sdists)

    def wheelfarm() -> Measured:
        with log.step(f"bench: wheelfarm build, cold (empty compile cache): {first_cell.wheel}"):
            return _measure("wheelfarm", lambda: build_cell(config, first_cell, tcs[first_cell], wf_paths,
                                                            cache=opts.cache), wf_paths, settings)

    def upstream() -> Measured | None:
        if "upstream" in opts.skip:
            return None
        with log.step(f"bench: upstream method, cold: {first_cell.wheel}"):
            return _measure("upstream", lambda: upstream_build(config, first_cell, tcs[first_cell], up_paths), up_paths,
                            {"compile_cache": False, "lpt": False, "MAX_JOBS": jobs.usable_cores(),
                             "NVCC_THREADS": UPSTREAM_NVCC_THREADS})

    settings: dict[str, Any] = {"compile_cache": opts.cache.describe() if opts.cache else "local", "lpt": True,
                                "max_jobs": "planned", "cache_stand_in": opts.cache_note}
    if upstream_first:
        up, first = upstream(), wheelfarm()
    else:
        first, up = wheelfarm(), upstream()
    extras: list[Measured] = []
    if first.result.cache.writes == 0 and "extra-python" not in opts.skip:
        log.warn(f"bench: the compile cache stored no object in the cold build ({first.result.log}); an additional "
                 "Python would compile everything again: not measured")
        return first, up, extras
    for cell in extra_cells:
        with log.step(f"bench: additional Python {cell.python}, same work dir: {cell.wheel}"):
            extras.append(_measure("wheelfarm+python", functools.partial(build_cell, config, cell, tcs[cell], wf_paths,
                                                                         cache=opts.cache), wf_paths, settings))
    if not extra_cells and "extra-python" not in opts.skip:
        with log.step(f"bench: the same interpreter again as the stand-in for another Python: {first_cell.wheel}"):
            forget_python_build(wf_paths, first_cell)
            extras.append(_measure(SAME_PYTHON, functools.partial(build_cell, config, first_cell, tcs[first_cell],
                                                                  wf_paths, cache=opts.cache), wf_paths, settings))
    if opts.cache is not None and opts.cache.shared and "second-runner" not in opts.skip:
        with log.step(f"bench: a second runner (empty work dir, shared cache only): {first_cell.wheel}"):
            runner_paths = _fresh(opts.work_dir / "wheelfarm", opts.sdists)  # same path, nothing left on disk
            extras.append(_measure(SECOND_RUNNER, functools.partial(build_cell, config, first_cell, tcs[first_cell],
                                                                    runner_paths, cache=opts.cache),
                                   runner_paths, settings))
    return first, up, extras


def forget_python_build(paths: BuildPaths, cell: Cell) -> list[Path]:
    """Remove what one Python's build left in the group (its setup.py build folders, its wheel), keeping the
    group's compile cache: building the cell again then costs what another Python of the group costs — every
    object compiled anew through the cache, which serves all but the Python-dependent ones. For a machine with
    one interpreter that has torch (a GPU runner); a second real Python is preferred where there is one."""
    tag = cell.python.replace(".", "")
    removed = sorted(paths.group_dir(cell).glob(f"source/*/build/*-cpython-{tag}*"))
    for path in removed:
        shutil.rmtree(path)
    (paths.wheelhouse / cell.wheel).unlink(missing_ok=True)
    return removed


def combine(rounds: Sequence[Sequence[Figure]]) -> list[Figure]:
    """Figures of several rounds (same order each round) as one: the median value (peak: the highest)."""
    if len(rounds) == 1:
        return list(rounds[0])
    combined = []
    for same in zip(*rounds, strict=True):
        values = [f.value for f in same]
        if any(v is None for v in values):
            combined.append(same[0])
            continue
        numbers = [float(v) for v in values if v is not None]
        value = max(numbers) if same[0].metric == "peak-vs-plan" else statistics.median(numbers)
        how = f"{'highest' if same[0].metric == 'peak-vs-plan' else 'median'} of {len(numbers)} rounds " \
              f"({', '.join(f'{v:.3f}' for v in numbers)}); round 1: {same[0].how}"
        combined.append(Figure(same[0].metric, value, same[0].machine, how, same[0].source))
    return combined


def run(config: Config, cells: Sequence[Cell], selectors: Sequence[str], opts: Options, rounds: int = 1) -> Report:
    """``rounds`` rounds of: the group's first Python cold the wheelfarm way and the upstream way (their order
    alternating between rounds, so a burst of other work on a shared machine hits both), then each additional
    Python; each figure is the median over the rounds."""
    group = pick_group(cells)
    machine = describe_machine()
    log.info(f"bench on {machine}: group {group[0].group}, Pythons {[c.python for c in group]}, {rounds} round(s)")
    if "extra-python" in opts.skip:
        group = group[:1]
    tcs = {c: toolchain.prepare(config, c, python=opts.python, cuda_home=opts.cuda_home)
           for c in group}  # before any clock starts: both methods need the same toolchain
    per_round, builds = [], []
    run_id = uuid.uuid4().hex[:8]
    for index in range(rounds):
        # every round's cold build starts from an empty cache: a shared one gets a fresh prefix per round
        shared = opts.cache.scoped(f"bench-{run_id}-round{index + 1}") if opts.cache and opts.cache.shared else None
        round_opts = dataclasses.replace(opts, cache=shared or opts.cache)
        first, upstream, extras = run_round(config, group, tcs, round_opts, upstream_first=index % 2 == 1)
        per_round.append(measured_figures(machine, first, extras, upstream))
        builds += [first, *([upstream] if upstream else []), *extras]
    return Report(machine, list(selectors), combine(per_round), builds, group[0].group)


def recorded_report(root: Path, extra_logs: Sequence[RecordedRun]) -> list[Figure]:
    figures = []
    for recorded in [*recorded_runs(root), *extra_logs]:
        figures.extend(recorded_figures(recorded))
    return figures


def default_sdists(config: Config) -> tuple[Path, ...]:
    """Where sdists already lie (the farm's work dir, the shared cache): a fresh bench dir is seeded from them."""
    return (config.root / config.farm.work_dir / "sdists", cache_dir() / "sdists")


def summarise(figures: Sequence[Figure]) -> str:
    """One line: how many figures met their goal."""
    judged = [f for f in figures if f.met is not None]
    return (f"{sum(bool(f.met) for f in judged)}/{len(judged)} figures meet their goal "
            f"({len(figures) - len(judged)} not measured)")


def load_note() -> str:
    """The 1-minute load average: other work on a shared machine makes every absolute time longer."""
    return f"load average {os.getloadavg()[0]:.2f}"
