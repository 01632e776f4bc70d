"""``wheelfarm build --backend container``: cibuildwheel builds each group of cells in a build image.

Per group (same package version, torch, CUDA, ABI, archs, platform): probe the image (glibc, Pythons,
compilers, CUDA), resolve the group's exact torch once, plan MAX_JOBS for the container's memory cap, write
cibuildwheel's configuration (``cibw.py``, pure) and run cibuildwheel under podman or docker. Its hooks install
CUDA and torch into mounted caches, its build shares .cu objects across Pythons (and runners) through sccache,
its repair step runs auditwheel in the image. Back on the host each wheel gets its upstream name and METADATA
(``wheelmeta.relabel``) and is audited against the image's glibc.

A GPU runner's own torch and CUDA can be mounted in instead of installed (``--python``: its interpreter's
site-packages becomes the group's torch folder, read-only; ``--cuda-home``: the toolkit at the same path):
wheels built against exactly the runner's torch, e.g. 2.11.0+cu130 from PyTorch's index, offline. The
``chroot`` engine (``$WHEELFARM_ENGINE=chroot``, ``$WHEELFARM_IMAGE=<root folder>``) runs the same steps
without cibuildwheel (``steps.py``) for runners with no container engine.

Images, in this order: ``$WHEELFARM_IMAGE``; the production image ``wheelfarm/manylinux_2_28_<arch>-cuda<X.Y>``
(docs/containers.md); the offline test image, when present or cached (scripts/build-test-image.sh).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import itertools
import json
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import build, cibw, jobs, log, proc, steps, toolchain
from .audit import Declared, audit_wheel
from .build import (
    BuildPaths,
    BuildResult,
    durations_file,
    knob_env,
    log_tail,
    looks_oom,
    plan_for,
    prepare_tree,
    record_durations,
    run_build,
)
from .compat import from_pypi, torch_cuda_build
from .compile_cache import CacheTarget, parse_target, sccache_binary
from .config import Config
from .container import Engine, Mount, detect_engine
from .errors import BadInput, BuildFailed
from .matrix import Cell
from .monitor import Peaks
from .paths import cache_dir
from .wheelmeta import relabel, sha256_file

TEST_IMAGE_SCRIPT = "scripts/build-test-image.sh"


@dataclass
class ContainerBuildResult(BuildResult):
    image: str = ""
    glibc: str = ""
    cost: cibw.PythonCost = field(default_factory=cibw.PythonCost)

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "backend": "container", "image": self.image, "image_glibc": self.glibc,
                "cost": self.cost.to_json()}


# ------------------------------------------------------------------------------------------ images


def find_image(engine: Engine, config: Config, cell: Cell) -> str | None:
    """The build image for ``cell`` (see the module docstring), or None."""
    explicit = os.environ.get("WHEELFARM_IMAGE")
    if explicit:
        if not engine.image_exists(explicit):
            raise BadInput(f"WHEELFARM_IMAGE={explicit} is not in {engine.name}'s images",
                           hint="build or load it (docs/containers.md)")
        return explicit
    production = f"wheelfarm/manylinux_2_28_{cell.platform.removeprefix('linux_')}-cuda{cell.cuda}"
    if engine.image_exists(production):
        return production
    return _test_image(config.root)


@functools.cache
def _test_image(root: Path) -> str | None:
    """The offline test image when present or cached (never a cold build here: that takes ~20 min)."""
    script = root / TEST_IMAGE_SCRIPT
    if not script.is_file():
        return None
    out = proc.run([str(script)], env={"WHEELFARM_NO_COLD_BUILD": "1"}, capture=True, check=False, quiet=True)
    if out.returncode != 0:
        return None
    ref = out.stdout.strip().splitlines()[-1]
    log.warn(f"building in {ref}: the OFFLINE TEST STAND-IN (Debian bullseye, glibc 2.31), not manylinux")
    return ref


CIBUILDWHEEL_HINT = "pip install cibuildwheel==4.3.5 (it needs Python 3.11+)"


def runner(engine: Engine) -> str:
    """What runs the in-container steps: cibuildwheel (podman, docker) or wheelfarm itself (chroot, steps.py)."""
    return "wheelfarm's steps (chroot)" if engine.name == "chroot" else "cibuildwheel"


def needs_cibuildwheel(engine: Engine) -> bool:
    return engine.name != "chroot" and importlib.util.find_spec("cibuildwheel") is None


def unavailable_reason(config: Config, cells: list[Cell]) -> str | None:
    """Why ``--backend auto`` cannot build ``cells`` in a container (None: it can)."""
    try:
        engine = detect_engine(os.environ.get("WHEELFARM_ENGINE"))
        if needs_cibuildwheel(engine):
            return f"cibuildwheel is not installed ({CIBUILDWHEEL_HINT})"
        for cuda in sorted({c.cuda for c in cells}):
            image = find_image(engine, config, next(c for c in cells if c.cuda == cuda))
            if image is None:
                return f"no build image for CUDA {cuda} (docs/containers.md)"
            cibw.check_cuda(probe(engine, image), config.cuda[cuda])
    except (BadInput, BuildFailed) as exc:
        return exc.message
    return None


def probe(engine: Engine, image: str) -> cibw.ImageFacts:
    out = proc.run(engine.run_args(image, ["sh", "-c", cibw.PROBE]), capture=True, check=False, quiet=True)
    if out.returncode != 0:
        raise BuildFailed(f"cannot run {image} with {engine.name}: {out.stderr.strip()[-500:]}")
    return cibw.parse_facts(image, out.stdout)


# ------------------------------------------------------------------------------------------ host side


def resolve_torch(config: Config, cell: Cell, glibc: str) -> tuple[str, str | None]:
    """The exact torch X.Y.Z the host's pip picks for the cell (its constraints apply), and the index."""
    release = config.torch[cell.torch]
    torch_cuda = torch_cuda_build(release, cell.cuda, cell.cxx11abi, cell.platform)
    assert torch_cuda is not None  # matrix.expand rejected the cell otherwise
    index = None if from_pypi(release, torch_cuda, cell.platform) else config.cuda[torch_cuda].index_url
    platforms = cibw.manylinux_platforms(glibc, cell.platform.removeprefix("linux_"))
    with tempfile.TemporaryDirectory(prefix="wheelfarm-torch-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
               "--no-deps", "--ignore-installed", "--only-binary=:all:", "--python-version", cell.python,
               "--implementation", "cp", "--abi", cell.python_tag, "--target", tmp,
               *(a for p in platforms for a in ("--platform", p)),
               *(["--index-url", index, "--extra-index-url", cibw.PYPI] if index else []), f"torch=={cell.torch}.*"]
        log.info(f"resolving torch=={cell.torch}.* for {cell.python_tag} on {platforms[0]} with this host's pip")
        out = proc.run(cmd, capture=True, check=False, quiet=True)
        if out.returncode != 0 or not report.exists():
            raise BuildFailed(f"no torch {cell.torch}.* wheel for {cell.python_tag} on {platforms[0]}: "
                              f"{out.stderr.strip()[-500:]}")
        return str(json.loads(report.read_text())["install"][0]["metadata"]["version"]), index


@dataclasses.dataclass(frozen=True)
class RunnerTools:
    """A runner's own torch (``--python``) and CUDA toolkit (``--cuda-home``), mounted into the build root."""

    purelib: Path | None = None  # the site-packages folder torch is imported from (and what it needs)
    torch_version: str | None = None  # exact, with its local label: "2.11.0+cu130"
    cuda_home: Path | None = None  # resolved: mounted at the same path
    cuda: str | None = None  # its nvcc's "13.0"

    @property
    def torch_lib(self) -> Path | None:
        return self.purelib / "torch" / "lib" if self.purelib else None


def runner_tools(cell: Cell, python: Path | None, cuda_home: Path | None) -> RunnerTools:
    """Check a runner's torch and CUDA against the cell (the same refusals as the host backend)."""
    if python is None and cuda_home is None:
        return RunnerTools()
    tools = RunnerTools()
    if cuda_home is not None:
        home = cuda_home.resolve()
        tools = dataclasses.replace(tools, cuda_home=home, cuda=toolchain.nvcc_version(home))
        if tools.cuda != cell.cuda:
            raise BadInput(f"--cuda-home {cuda_home} is CUDA {tools.cuda}, the cell needs CUDA {cell.cuda}")
    if python is not None:
        facts = toolchain.probe_torch(python)
        version, py_version = str(facts["torch"]), str(facts["python"])
        if py_version != cell.python:
            raise BadInput(f"--python {python} is Python {py_version}, the cell needs {cell.python}",
                           hint="add --select python=" + py_version)
        torch_cuda = toolchain.check_torch_build(cell, python, version, str(facts["cuda"] or "") or None)
        if torch_cuda.split(".")[0] != cell.cuda.split(".")[0]:
            raise BadInput(f"torch {version} in {python} is built for CUDA {torch_cuda}, "
                           f"the cell needs CUDA {cell.cuda}")
        toolchain.check_abi(cell, python, bool(facts["cxx11abi"]))
        purelib = Path(str(facts["lib"])).parent.parent  # where torch is imported from (purelib or platlib)
        tools = dataclasses.replace(tools, purelib=purelib, torch_version=version)
    return tools


def runner_mounts(tools: RunnerTools, cell: Cell) -> tuple[Mount, ...]:
    mounts = []
    if tools.purelib and tools.torch_version:
        target = cibw.TORCH / cibw.torch_dir(cell.python_tag, tools.torch_version) / "site-packages"
        mounts.append(Mount(tools.purelib, str(target), read_only=True))
    if tools.cuda_home:
        mounts.append(Mount(tools.cuda_home, str(tools.cuda_home), read_only=True))
    return tuple(mounts)


def pip_sources() -> cibw.PipSources:
    out = proc.run([sys.executable, "-m", "pip", "config", "list"], capture=True, check=False, quiet=True)
    found = cibw.parse_pip_config(out.stdout if out.returncode == 0 else "")
    return cibw.PipSources(tuple(p for p in found.find_links if Path(p).is_dir()),
                           tuple(u for u in found.extra_index_urls if Path(u.removeprefix("file://")).is_dir()))


def pip_cache_dir() -> Path | None:
    out = proc.run([sys.executable, "-m", "pip", "cache", "dir"], capture=True, check=False, quiet=True)
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def container_cache(target: CacheTarget) -> CacheTarget:
    """The cache as the container sees it: a local folder at COMPILE_CACHE, an S3 prefix as it is."""
    return target if target.shared else CacheTarget(local=Path(str(cibw.COMPILE_CACHE)))


def aws_credentials_file(folder: Path) -> Path:
    """The host's S3 credentials (the standard boto3 chain: env, profile, OIDC web identity, instance metadata) as
    an AWS credentials file for the container's sccache, mode 0600, mounted read-only: no secret ever appears in
    the cibuildwheel configuration, an environment listing or a log."""
    import boto3

    creds = boto3.Session().get_credentials()
    if creds is None:
        raise BadInput("--cache s3://…: no AWS credentials found (standard chain: environment, profile, web "
                       "identity, instance metadata)", hint="configure credentials for the cache bucket, or use a "
                                                            "local --cache folder")
    frozen = creds.get_frozen_credentials()
    lines = ["[default]", f"aws_access_key_id = {frozen.access_key}", f"aws_secret_access_key = {frozen.secret_key}"]
    lines += [f"aws_session_token = {frozen.token}"] if frozen.token else []
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "aws-credentials"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def container_memory_mb() -> int:
    """The container's memory cap: $WHEELFARM_CONTAINER_MEMORY_MB, else what is available here now."""
    explicit = os.environ.get("WHEELFARM_CONTAINER_MEMORY_MB", "")
    if not explicit:
        return jobs.available_memory().available_mb
    if not explicit.isdigit() or int(explicit) < 512:
        raise BadInput(f"WHEELFARM_CONTAINER_MEMORY_MB={explicit!r} is not a size in MB (at least 512)")
    return int(explicit)


def job_plan(config: Config, cell: Cell, memory_mb: int, max_jobs: int | None) -> jobs.JobPlan:
    """build.plan_for's per-job peak, planned for the container's memory cap instead of the host's."""
    base = plan_for(config, cell, max_jobs=max_jobs)
    return jobs.plan(cores=base.cores, memory=jobs.Memory(memory_mb, f"the container's --memory={memory_mb}m"),
                     per_job_mb=base.per_job_mb, per_job_source=base.per_job_source, archs=len(cell.archs),
                     nvcc_threads=config.packages[cell.package].nvcc_threads, max_jobs=max_jobs)


def host_dirs(paths: BuildPaths, cell: Cell, facts: cibw.ImageFacts, tools: RunnerTools, cache: CacheTarget,
              cxx: str) -> cibw.HostDirs:
    base = cache_dir() / "container" / f"glibc-{facts.glibc}"  # CUDA/torch wheels chosen for this glibc
    group = paths.group_dir(cell)
    durations = durations_file(cell)
    torch = base / "torch"
    if tools.torch_version:  # the runner's torch is mounted over <torch>/torch-<ver>/<tag>/site-packages: ready
        torch = group / "runner-torch"
        ready = torch / cibw.torch_dir(cell.python_tag, tools.torch_version)
        (ready / "site-packages").mkdir(parents=True, exist_ok=True)
        (ready / ".ready").touch()
    dirs = cibw.HostDirs(lib=Path(__file__).resolve().parent, compile_cache=cache.local, sccache=sccache_binary(),
                         cuda=base / "cuda", torch=torch, logs=group / "logs" / "container",
                         pip_cache=pip_cache_dir(), shims=group / "bin" if durations.exists() else None,
                         durations=durations if durations.exists() else None,
                         aws_credentials=aws_credentials_file(group / "private") if cache.shared else None,
                         cxx_wrapper=group / "cxx", run=group / "run")
    shutil.rmtree(group / "run", ignore_errors=True)  # a killed run's socket and link
    for folder in (dirs.compile_cache, dirs.cuda, dirs.torch, dirs.logs, dirs.pip_cache, dirs.shims, dirs.cxx_wrapper,
                   dirs.run):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    assert dirs.cxx_wrapper is not None
    wrapper = dirs.cxx_wrapper / cxx
    wrapper.write_text(cibw.cxx_wrapper_script())
    wrapper.chmod(0o755)
    if dirs.shims is not None:
        (dirs.shims / "ninja").write_text(cibw.ninja_shim(facts.utility_python))
        (dirs.shims / "ninja").chmod(0o755)
    return dirs


# ------------------------------------------------------------------------------------------ build


def plan_group(config: Config, cells: list[Cell], engine: Engine, image: str, paths: BuildPaths,
               max_jobs: int | None, tools: RunnerTools | None = None, cache: CacheTarget | None = None
               ) -> cibw.GroupPlan:
    first = cells[0]
    tools = tools or RunnerTools()
    facts = probe(engine, image)
    if tools.cuda_home:  # the runner's toolkit, mounted at its own path, is the image's CUDA for this build
        facts = dataclasses.replace(facts, cuda_home=str(tools.cuda_home), cuda=tools.cuda)
    missing = cibw.missing_pythons(cells, facts)
    if missing:
        raise BadInput(f"image {image} has no /opt/python for Python {', '.join(missing)} "
                       f"(it has {', '.join(facts.pythons)})", hint="build an image with them (docs/containers.md)")
    if tools.torch_version and len(cells) > 1:
        raise BadInput("--python mounts one interpreter's torch: select one Python per group",
                       hint=f"add --select python={first.python}")
    cuda = config.cuda[first.cuda]
    cibw.check_cuda(facts, cuda)
    torch_version, index = (tools.torch_version, None) if tools.torch_version else \
        resolve_torch(config, first, facts.glibc)
    memory_mb = container_memory_mb()
    target = build.cache_target(first, paths, cache)
    compiler = cibw.choose_compiler(facts, config.torch[first.torch].cxx_std, cuda)
    return cibw.GroupPlan(
        cells=tuple(cells), image=facts, engine=engine, torch_version=torch_version, torch_index=index, cuda=cuda,
        compiler=compiler, jobs=job_plan(config, first, memory_mb, max_jobs), memory_mb=memory_mb,
        knobs=knob_env(config, first), cache_env=container_cache(target).env(),
        dirs=host_dirs(paths, first, facts, tools, target, compiler["CXX"]),
        pip=pip_sources(), extra_mounts=runner_mounts(tools, first), run_id=uuid.uuid4().hex[:12])


def _collect(plan: cibw.GroupPlan, cell: Cell, out: Path, paths: BuildPaths, logfile: Path, rc: int,
             costs: dict[str, cibw.PythonCost], audit: bool, torch_lib_of: Path | None = None,
             peaks: Peaks | None = None) -> ContainerBuildResult:
    cost = costs.get(cibw.identifier(cell), cibw.PythonCost())
    result = ContainerBuildResult(cell, False, logfile, cost.build_s or 0.0, plan.jobs, image=plan.image.ref,
                                  glibc=plan.image.glibc, cost=cost, cache=cost.cache, objects_compiled=cost.objects,
                                  objects_total=cost.objects, peaks=peaks or Peaks())
    built = [w for w in out.glob("*.whl") if f"-{cell.python_tag}-{cell.python_tag}-" in w.name]
    if rc != 0 or len(built) != 1:
        why = "killed, most likely out of memory: retry with a smaller --max-jobs" if looks_oom(rc, logfile) \
            else f"{runner(plan.engine)} exit code {rc}, wheels {[w.name for w in built]}"
        result.error = f"container build failed: {why}; log: {logfile}\n{log_tail(logfile)}"
        return result
    paths.wheelhouse.mkdir(parents=True, exist_ok=True)
    final = relabel(built[0], paths.wheelhouse / cell.wheel, pins={"torch": f"=={cell.torch}.*"})
    result.ok, result.wheel, result.sha256, result.size = True, final, sha256_file(final), final.stat().st_size
    if audit:
        torch_lib = torch_lib_of or \
            plan.dirs.torch / cibw.torch_dir(cell.python_tag, plan.torch_version) / "site-packages/torch/lib"
        declared = Declared(archs=cell.archs, torch=cell.torch, max_glibc=plan.image.glibc)
        report = audit_wheel(final, declared=declared, torch_lib_dir=torch_lib)
        if not report.passed:
            result.ok = False
            result.error = "audit failed: " + "; ".join(f"{c.name}: {c.detail}" for c in report.failed)
    return result


def _share(value: float | None, first: float | None) -> str:
    return f" ({value / first:.0%} of the first Python's)" if value is not None and first else ""


def _report(results: list[ContainerBuildResult]) -> None:
    one = results[0].cost
    for r in results:
        c, extra = r.cost, r is not results[0]
        log.info(f"  {r.cell.python_tag}: torch setup {c.torch_s or 0:.0f}s, build {c.build_s or 0:.0f}s"
                 f"{_share(c.build_s, one.build_s) if extra else ''}, compile work {c.compile_job_s or 0:.0f} job-s"
                 f"{_share(c.compile_job_s, one.compile_job_s) if extra else ''}, repair {c.repair_s or 0:.0f}s; "
                 f"{c.cache.describe()}")


def read_costs(plan: cibw.GroupPlan) -> dict[str, cibw.PythonCost]:
    """Each Python's costs from the files the hooks left in the logs mount; its ninja log also feeds the
    per-object durations that order the next build (LPT)."""
    logs = plan.dirs.logs
    ninja = {}
    for cell in plan.cells:
        kept = logs / cibw.NINJA_LOGS.name / cibw.identifier(cell)
        if (kept / "build/temp/.ninja_log").exists():
            ninja[cibw.identifier(cell)] = (kept / "build/temp/.ninja_log").read_text()
            record_durations(kept, cell)
    marks = (logs / cibw.MARKS.name).read_text() if (logs / cibw.MARKS.name).exists() else ""
    stats = {p.stem: p.read_text() for p in sorted((logs / cibw.CACHE_STATS.name).glob("*.json"))}
    return cibw.parse_costs(marks, stats, ninja)


def _steps_command(plan: cibw.GroupPlan, group: Path, tree: Path, out: Path) -> list[str]:
    """The chroot engine's command line: ``steps.script`` run in the root with the plan's mounts, the source
    tree at /project and the output folder at /output (cibuildwheel copies /project in; a mount also resumes)."""
    script = group / "steps.sh"
    script.write_text(steps.script(plan))
    out.mkdir(parents=True, exist_ok=True)
    mounts = [*plan.mounts(), Mount(tree, steps.PROJECT), Mount(out, steps.OUTPUT),
              Mount(script, "/wf/steps.sh", read_only=True)]
    return plan.engine.run_args(plan.image.ref, steps.command(), mounts=mounts)


def build_group(config: Config, cells: list[Cell], engine: Engine, image: str, paths: BuildPaths,
                args: argparse.Namespace) -> list[ContainerBuildResult]:
    tools = runner_tools(cells[0], args.python, args.cuda_home)
    cache = parse_target(getattr(args, "cache", None), paths.work_dir / "compile-cache")
    plan = plan_group(config, cells, engine, image, paths, args.max_jobs, tools, cache)
    log.info(f"job plan: {plan.jobs.describe()}; compiler {plan.compiler['CXX']}; torch {plan.torch_version}")
    tree = prepare_tree(config, cells[0], paths)
    group = paths.group_dir(cells[0])
    toml = group / "cibuildwheel.toml"
    toml.write_text(cibw.to_toml(plan.table()))
    out, logfile = group / "cibw-out", group / "logs" / "cibuildwheel.log"
    shutil.rmtree(out, ignore_errors=True)
    (plan.dirs.logs / cibw.MARKS.name).unlink(missing_ok=True)
    for name in (cibw.CACHE_STATS.name, cibw.NINJA_LOGS.name):
        shutil.rmtree(plan.dirs.logs / name, ignore_errors=True)
    logfile.write_text(f"# wheelfarm: cibuildwheel --config-file {toml}\n")
    cmd = [sys.executable, "-m", "cibuildwheel", "--platform", "linux", "--config-file", str(toml),
           "--output-dir", str(out), "."]
    if engine.name == "chroot":
        cmd = _steps_command(plan, group, tree, out)
    log.info(f"$ {' '.join(cmd)} (in {tree}; log: {logfile})")
    try:
        rc, _, _, peaks = run_build(cmd, {}, tree, logfile, cells[0].group)
    except BaseException:  # stopped (Ctrl-C, SIGTERM): run_build took its process tree down, not the container
        gone = engine.remove_labelled(cibw.RUN_LABEL, plan.run_id)
        if gone:
            log.warn(f"build stopped: removed its container {', '.join(gone)}")
        raise
    # the chroot engine's processes are this process's descendants, so their memory is measured; a podman or docker
    # container's are not (they run under the engine's monitor): no figure rather than a wrong one
    measured = peaks if engine.name == "chroot" else None
    if plan.dirs.aws_credentials is not None:
        plan.dirs.aws_credentials.unlink(missing_ok=True)
    costs = read_costs(plan)
    (group / "costs.json").write_text(json.dumps({k: v.to_json() for k, v in costs.items()}, indent=1))
    results = [_collect(plan, c, out, paths, logfile, rc, costs, not args.no_audit, tools.torch_lib, measured)
               for c in cells]
    _report(results)
    return results


def build_in_container(config: Config, cells: list[Cell], args: argparse.Namespace) -> list[BuildResult]:
    """Build ``cells`` group by group, each group by one cibuildwheel run in one container."""
    engine = detect_engine(os.environ.get("WHEELFARM_ENGINE"))
    if needs_cibuildwheel(engine):
        raise BadInput("--backend container needs cibuildwheel", hint=CIBUILDWHEEL_HINT)
    work = (args.work_dir or config.root / config.farm.work_dir).resolve()
    # Own trees and caches: a host build's build/ folder must never be copied into the container.
    paths = BuildPaths(work_dir=work / "container",
                       wheelhouse=(args.wheelhouse or config.root / config.farm.wheelhouse).resolve())
    results: list[BuildResult] = []
    ordered = sorted(cells, key=lambda c: (c.group, c.platform, c.python))
    for _, group in itertools.groupby(ordered, key=lambda c: (c.group, c.platform)):
        members = list(group)
        image = find_image(engine, config, members[0])
        if image is None:
            cell = members[0]
            raise BadInput(f"no build image for {cell.group} ({cell.platform}, CUDA {cell.cuda})",
                           hint="build one (docs/containers.md), set WHEELFARM_IMAGE, or use --backend host")
        names = ", ".join(c.python for c in members)
        with log.step(f"{members[0].group}: Python {names} by {runner(engine)} in {image}"):
            results += build_group(config, members, engine, image, paths, args)
    return results
