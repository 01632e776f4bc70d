"""Build one cell on the host: the package's own setup.py through ``pip wheel --no-build-isolation``, steered by
its knobs, with a planned MAX_JOBS, ninja progress, a log per cell, resume and OOM detection; the result is
renamed to the upstream convention with consistent METADATA and moved into the wheelhouse whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from . import jobs, log, source
from .compile_cache import CacheStats, CacheTarget, Server, server
from .config import Config
from .errors import BuildFailed
from .matrix import Cell
from .monitor import Peaks, TreeMonitor
from .monitor import _tree as process_tree
from .paths import cache_dir
from .toolchain import Toolchain
from .wheelmeta import relabel, sha256_file

NINJA_STEP = re.compile(r"^\s*\[(\d+)/(\d+)\]\s")
OOM_SIGNS = ("signal 9", "Killed", "SIGKILL", "out of memory", "std::bad_alloc", "Cannot allocate memory")
REPO_ROOT_PATCHES = "patches"


@dataclass
class BuildResult:
    cell: Cell
    ok: bool
    log: Path
    seconds: float
    plan: jobs.JobPlan
    wheel: Path | None = None
    sha256: str = ""
    size: int = 0
    objects_compiled: int = 0
    objects_total: int = 0
    peaks: Peaks = field(default_factory=Peaks)
    error: str = ""
    attempts: int = 1
    cache: CacheStats = field(default_factory=CacheStats)  # sccache's statistics of this build
    phases: dict[str, float] = field(default_factory=dict)  # seconds: prepare (source tree), pip wheel, relabel

    def to_json(self) -> dict[str, object]:
        return {
            "cell": self.cell.to_json(), "ok": self.ok, "wheel": str(self.wheel) if self.wheel else None,
            "sha256": self.sha256, "size": self.size, "seconds": round(self.seconds, 1), "log": str(self.log),
            "objects_compiled": self.objects_compiled, "objects_total": self.objects_total,
            "peak_rss_mb": self.peaks.total_mb, "largest_process_mb": self.peaks.largest_mb,
            "plan": self.plan.to_json(), "error": self.error, "attempts": self.attempts,
            "compile_cache": self.cache.to_json(),
            "phases_s": {k: round(v, 1) for k, v in self.phases.items()},
        }


@dataclass(frozen=True)
class BuildPaths:
    work_dir: Path
    wheelhouse: Path

    def group_dir(self, cell: Cell) -> Path:
        return self.work_dir / "groups" / cell.group

    def log_file(self, cell: Cell) -> Path:
        return self.group_dir(cell) / "logs" / f"{cell.wheel}.log"


def torch_arch(arch: str) -> str:
    """An arch of the matrix as TORCH_CUDA_ARCH_LIST spells it: "90" -> "9.0", "90a" -> "9.0a", "100f" -> "10.0f"."""
    digits = arch.rstrip("af")
    return f"{digits[:-1]}.{digits[-1]}{arch[len(digits):]}"


def knob_env(config: Config, cell: Cell) -> dict[str, str]:
    """The package's own build switches, set from the cell (the variant's disabled features included)."""
    package = config.packages[cell.package]
    knobs = package.knobs
    env = {"TORCH_CUDA_ARCH_LIST": ";".join(torch_arch(a) for a in cell.archs)}
    env.update({package.disable_knobs[feature]: "TRUE" for feature in cell.disable})
    if knobs.force_build:
        env[knobs.force_build] = "TRUE"
    if knobs.archs:
        env[knobs.archs] = ";".join(cell.archs)
    if knobs.local_version:
        env[knobs.local_version] = cell.local_label
    if knobs.force_cxx11_abi and cell.cxx11abi:
        env[knobs.force_cxx11_abi] = "TRUE"
    return env


def patch_dirs(config: Config, cell: Cell) -> list[Path]:
    """The cell's patch folders in the order they apply: the package version's, then its variant's (which must
    hold patches: checked when a cell of the variant is built, so a matrix copied without them still loads)."""
    dirs = [config.root / REPO_ROOT_PATCHES / cell.package / cell.version]
    if cell.patches:
        folder = config.root / cell.patches
        if not source.list_patches(folder):
            raise config.error(("variants", cell.variant, "patches"), f"variants.{cell.variant}.patches = "
                               f"{cell.patches!r}: no *.patch files in {folder}",
                               hint="create the folder with the variant's patches, or remove the key")
        dirs.append(folder)
    return dirs


def cache_target(cell: Cell, paths: BuildPaths, cache: CacheTarget | None) -> CacheTarget:
    """The build's compile cache: ``--cache`` (an S3 cache under one prefix per toolkit and platform), else the
    work dir's own folder."""
    target = cache or CacheTarget(local=paths.work_dir / "compile-cache")
    return target.scoped(f"cuda-{cell.cuda}-{cell.platform}")


def _script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        path.chmod(0o755)
    return path


def compile_cache_env(cell: Cell, tc: Toolchain, paths: BuildPaths, srv: Server) -> dict[str, str]:
    """torch's nvcc calls through nvcc_shim.py (torch's headers at one path per group) into sccache, and its host
    compiler (``CXX``) through sccache too; a wrapper named like the compiler keeps torch's compiler checks happy."""
    bin_dir = paths.work_dir / "bin" / "sccache" / cell.python_tag
    shim = Path(__file__).with_name("nvcc_shim.py")
    nvcc = _script(bin_dir / "nvcc", f'#!/bin/sh\nexec "{tc.python}" "{shim}" "$@"\n')
    env = {**srv.env, "PYTORCH_NVCC": str(nvcc), "WHEELFARM_SCCACHE": str(srv.binary),
           "WHEELFARM_REAL_NVCC": str(tc.cuda_home / "bin" / "nvcc"),
           "WHEELFARM_TORCH_LINK": str(paths.group_dir(cell) / "torch-site")}
    path = tc.env()["PATH"]
    real_cxx = shutil.which(tc.compiler or "c++", path=path)
    if real_cxx:  # CXX keeps the compiler's name (torch picks gcc's or clang's version bounds by it); PATH finds ours
        name = Path(tc.compiler or "c++").name
        _script(bin_dir / name, f'#!/bin/sh\nexec "{srv.binary}" "{real_cxx}" "$@"\n')
        env |= {"CXX": name, "PATH": f"{bin_dir}{os.pathsep}{path}"}
    return env


def durations_file(cell: Cell) -> Path:
    """Per-object compile seconds of earlier builds of this package/version/archs (seeded from data/; a patched
    variant without its own seed starts from the plain build's durations: the same objects, for the order)."""
    path = cache_dir() / "durations" / f"{cell.cost_key}.json"
    seeds = Path(__file__).with_name("data") / "durations"
    plain = f"{replace(cell, patches='').cost_key}.json"
    seed = next((s for s in (seeds / path.name, seeds / plain) if s.exists()), seeds / path.name)
    if not path.exists() and seed.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seed, path)
    return path


def lpt_env(cell: Cell, paths: BuildPaths, python: Path, path_var: str) -> dict[str, str]:
    """Put the ninja shim first on PATH so the longest objects start first (see ninja_order.py)."""
    shim_dir = paths.work_dir / "bin" / "lpt"
    shim_dir.mkdir(parents=True, exist_ok=True)
    shim = shim_dir / "ninja"
    text = f'#!/bin/sh\nexec "{python}" "{Path(__file__).with_name("ninja_order.py")}" "$@"\n'
    if not shim.exists() or shim.read_text() != text:
        shim.write_text(text)
        shim.chmod(0o755)
    real = shutil.which("ninja", path=path_var)
    if real is None:
        raise BuildFailed("no ninja found on PATH", hint="pip install ninja into the build environment")
    return {"PATH": f"{shim_dir}{os.pathsep}{path_var}", "WHEELFARM_REAL_NINJA": real,
            "WHEELFARM_DURATIONS": str(durations_file(cell))}


def record_durations(tree: Path, cell: Cell) -> None:
    """Fold this build's .ninja_log into the durations file: a compile's seconds are averaged with the recorded ones
    (one run's noise, ±20 % per object between two H100 runs, moves the order less); cache hits (under 2 s) don't
    replace compiles."""
    path = durations_file(cell)
    known: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
    for ninja_log in tree.glob("build/temp*/.ninja_log"):
        for line in ninja_log.read_text().splitlines()[1:]:
            fields = line.split("\t")
            if len(fields) < 4:
                continue
            seconds = (int(fields[1]) - int(fields[0])) / 1000
            name = Path(fields[3]).name
            if name not in known or (seconds >= 2 and known[name] < 2):
                known[name] = round(seconds, 1)
            elif seconds >= 2:
                known[name] = round((known[name] + seconds) / 2, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(known.items(), key=lambda kv: -kv[1])), indent=1) + "\n")


def plan_for(config: Config, cell: Cell, *, max_jobs: int | None = None) -> jobs.JobPlan:
    package = config.packages[cell.package]
    key = jobs.peak_key(cell)
    recorded = jobs.recorded_peak_mb(key)
    per_job, origin = (recorded, "a recorded build") if recorded else (package.job_peak_mb, "build_matrix.toml")
    return jobs.plan(cores=jobs.usable_cores(), memory=jobs.available_memory(), per_job_mb=per_job,
                     per_job_source=origin, archs=len(cell.archs), nvcc_threads=package.nvcc_threads,
                     max_jobs=max_jobs)


def prepare_tree(config: Config, cell: Cell, paths: BuildPaths) -> Path:
    """The folder with the setup.py of the cell's patched source tree (kept between runs so a killed build
    resumes): the sdist's root, or its ``subdir`` for a package that another project's sdist holds (FA3: the
    ``hopper/`` of flash-attn's, whose setup.py reads ``../csrc``, so the whole sdist is unpacked)."""
    package = config.packages[cell.package]
    pin = package.versions[cell.version]
    src = package.source
    if src.startswith("path:"):
        src = "path:" + str((config.root / src[5:]).resolve())
    root = source.prepare_source(package.sdist_project, pin.sdist, pin.sha256, src, patch_dirs(config, cell),
                                 paths.work_dir / "sdists", paths.group_dir(cell),
                                 pin=source.pin_key(cell.package, cell.version))
    if not package.subdir:
        return root
    setup_dir = root / package.subdir
    if not (setup_dir / "setup.py").is_file():
        raise config.error(("packages", cell.package, "subdir"), f"packages.{cell.package}.subdir = "
                           f"{package.subdir!r}: {setup_dir} has no setup.py",
                           hint=f"name the folder of {package.sdist_project} {pin.sdist}'s sdist that holds it")
    return setup_dir


def _stream(proc: subprocess.Popen[str], logfile: Path, label: str) -> Iterator[tuple[int, int]]:
    """Copy the build output to its log; yield ninja's (done, total) steps as they appear."""
    assert proc.stdout is not None
    with logfile.open("a", encoding="utf-8") as out:
        for line in proc.stdout:
            out.write(line)
            match = NINJA_STEP.match(line)
            if match:
                yield int(match.group(1)), int(match.group(2))


def run_build(cmd: list[str], env: dict[str, str], cwd: Path, logfile: Path, label: str
               ) -> tuple[int, int, int, Peaks]:
    """Run the build with a progress bar; returns (returncode, objects compiled, objects total, peaks)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    done = total = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    try:
        with TreeMonitor(proc.pid) as monitor, Progress(*columns, console=log.console, transient=False) as bar:
            task = bar.add_task(label, total=None)
            last_tenth = -1
            for done, total in _stream(proc, logfile, label):
                bar.update(task, completed=done, total=total)
                if not log.console.is_terminal and done * 10 // total != last_tenth:
                    last_tenth = done * 10 // total
                    log.info(f"  {label}: [{done}/{total}] objects")
            proc.wait()
    except BaseException:  # Ctrl-C, SIGTERM (the CLI turns it into SystemExit): no compiler may outlive us
        stop_tree(proc)
        raise
    return proc.returncode, done, total, monitor.peaks


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_tree(proc: subprocess.Popen[str], grace_s: float = 10.0) -> None:
    """SIGTERM the build's whole process tree, then SIGKILL what is left after ``grace_s``. The tree is walked by
    parent pid, not process group: ninja starts every compile job in a process group of its own."""
    victims = set(process_tree(proc.pid))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            proc.poll()  # reap our own child so it does not linger as a zombie
            victims = {pid for pid in victims | set(process_tree(proc.pid)) if _alive(pid)}
            if not victims:
                return
            time.sleep(0.1)


def objects_in_manifest(tree: Path, cell: Cell) -> int:
    """The objects of the cell's extension(s) in torch's build.ninja: ninja's [n/N] counts only the steps it had to
    run this time, so after a resume N is smaller than the extension."""
    count = 0
    for manifest in tree.glob(f"build/temp*-cpython-{cell.python.replace('.', '')}*/build.ninja"):
        for line in manifest.read_text(errors="replace").splitlines():
            outputs = re.split(r"(?<!\$):", line[len("build "):], maxsplit=1)[0] if line.startswith("build ") else ""
            count += outputs.strip().endswith(".o")
    return count


def looks_oom(returncode: int, logfile: Path) -> bool:
    if returncode in (-9, 137):
        return True
    tail = logfile.read_text(encoding="utf-8", errors="replace")[-20000:]
    return any(sign in tail for sign in OOM_SIGNS)


def log_tail(logfile: Path, lines: int = 25) -> str:
    return "\n".join(logfile.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def build_cell(config: Config, cell: Cell, tc: Toolchain, paths: BuildPaths, *, max_jobs: int | None = None,
               retry_oom: bool = True, compile_cache: bool = True, cache: CacheTarget | None = None,
               lpt: bool = True, extra_env: dict[str, str] | None = None) -> BuildResult:
    """Build ``cell`` with toolchain ``tc`` into ``paths.wheelhouse``; never leaves a partial wheel there. With
    ``compile_cache`` its compiles go through a private sccache server for ``cache`` (default: the work dir's
    folder), whose statistics land in the result."""
    if not compile_cache:
        return _build_cell(config, cell, tc, paths, {}, max_jobs=max_jobs, retry_oom=retry_oom, lpt=lpt,
                           extra_env=extra_env)
    paths.log_file(cell).parent.mkdir(parents=True, exist_ok=True)
    with server(cache_target(cell, paths, cache), log_file=paths.log_file(cell).with_suffix(".sccache.log")) as srv:
        result = _build_cell(config, cell, tc, paths, compile_cache_env(cell, tc, paths, srv), max_jobs=max_jobs,
                             retry_oom=retry_oom, lpt=lpt, extra_env=extra_env)
    result.cache = srv.stats or CacheStats()
    log.info(f"{cell.wheel}: {result.cache.describe()}")
    return result


def _build_cell(config: Config, cell: Cell, tc: Toolchain, paths: BuildPaths, cache_env: dict[str, str], *,
                max_jobs: int | None, retry_oom: bool, lpt: bool, extra_env: dict[str, str] | None) -> BuildResult:
    plan = plan_for(config, cell, max_jobs=max_jobs)
    log.info(f"job plan: {plan.describe()}")
    start = time.monotonic()
    tree = prepare_tree(config, cell, paths)
    phases = {"prepare": time.monotonic() - start}
    logfile = paths.log_file(cell)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    logfile.write_text(f"# wheelfarm build of {cell.wheel}\n# plan: {plan.describe()}\n")
    attempts = 0
    outdir = Path(tempfile.mkdtemp(prefix="out-", dir=paths.group_dir(cell)))
    try:
        while True:
            attempts += 1
            base = tc.env()
            path = cache_env.get("PATH", base["PATH"])  # the compiler wrapper's folder first, then the ninja shim's
            env = {**base, **plan.env(), **knob_env(config, cell), **cache_env,
                   **(lpt_env(cell, paths, tc.python, path) if lpt else {}), **(extra_env or {})}
            cmd = [str(tc.python), "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-v",
                   "--disable-pip-version-check", "-w", str(outdir), str(tree)]
            with logfile.open("a") as f:
                f.write(f"# attempt {attempts}: MAX_JOBS={plan.max_jobs}\n")
            pip_start = time.monotonic()
            rc, done, total, peaks = run_build(cmd, env, tree, logfile, cell.wheel)
            phases["pip wheel"] = phases.get("pip wheel", 0.0) + time.monotonic() - pip_start
            if rc == 0:
                break
            if looks_oom(rc, logfile) and retry_oom and plan.max_jobs > 1:
                fewer = max(1, plan.max_jobs // 2)
                log.warn(f"{cell.wheel}: the build was killed, most likely out of memory with "
                         f"MAX_JOBS={plan.max_jobs}; retrying with MAX_JOBS={fewer} (finished objects are kept)")
                plan = jobs.plan(cores=plan.cores, memory=plan.memory, per_job_mb=plan.per_job_mb,
                                 per_job_source=plan.per_job_source, archs=len(cell.archs),
                                 nvcc_threads=plan.nvcc_threads, max_jobs=fewer)
                continue
            oom = looks_oom(rc, logfile)
            if oom and plan.max_jobs > 1:
                why = (f"killed, most likely out of memory (MAX_JOBS={plan.max_jobs}); retry with --max-jobs "
                       f"{max(1, plan.max_jobs // 2)}")
            elif oom:
                why = ("killed, most likely out of memory even with MAX_JOBS=1: give the build more memory (a larger "
                       "machine, or a higher container memory limit)")
            else:
                why = f"exit code {rc}"
            return BuildResult(cell, False, logfile, time.monotonic() - start, plan, objects_compiled=done,
                               objects_total=max(total, objects_in_manifest(tree, cell)), peaks=peaks,
                               attempts=attempts,
                               error=f"build failed: {why}; log: {logfile}\n{log_tail(logfile)}")
        built = sorted(outdir.glob("*.whl"))
        if len(built) != 1:
            raise BuildFailed(f"expected one wheel from the build, found {[p.name for p in built]}; log: {logfile}")
        relabel_start = time.monotonic()
        try:
            paths.wheelhouse.mkdir(parents=True, exist_ok=True)
            final = relabel(built[0], paths.wheelhouse / cell.wheel, pins={"torch": f"=={cell.torch}.*"})
        except OSError as exc:  # a full disk (ENOSPC), a read-only or foreign wheelhouse
            raise BuildFailed(f"cannot write {cell.wheel} into {paths.wheelhouse}: {exc.strerror or exc}",
                              hint="free space there or pass --wheelhouse on another disk; the wheelhouse holds "
                                   "no partial file") from exc
        if done and peaks.total_mb:
            per_job = max(peaks.largest_mb, peaks.total_mb // max(1, min(plan.max_jobs, done)))
            jobs.record_peak(jobs.peak_key(cell), per_job, peaks.largest_mb)
        phases["relabel"] = time.monotonic() - relabel_start
        record_durations(tree, cell)
        return BuildResult(cell, True, logfile, time.monotonic() - start, plan, wheel=final,
                           sha256=sha256_file(final), size=final.stat().st_size, objects_compiled=done,
                           objects_total=max(total, objects_in_manifest(tree, cell)), peaks=peaks, attempts=attempts,
                           phases=phases)
    finally:
        shutil.rmtree(outdir, ignore_errors=True)
