"""Fault injection (issue 10): what breaks mid-build or mid-publish, what wheelfarm must do, and what it did.

Each test fills one row of a table (fault, expected, observed) printed at the end of the pytest run; set
``WHEELFARM_FAULT_TABLE=path.md`` to also write it as markdown. How each fault is made, plainly:

- kill -9 mid-build: a real ``wheelfarm build`` of the fixture cell in a fresh work dir, SIGKILLed with its whole
  session (every process of it, as a cancelled CI job or a dead container) once ninja reported [k/N] with k ≥ 2.
- out of memory: not a memory limit. The build's nvcc is a wrapper (a CUDA_HOME of symlinks with bin/nvcc replaced)
  that SIGKILLs the first real ``cicc`` of the build's session once, exactly what the kernel's OOM killer does to the
  biggest compile process (sccache, which runs cicc, then reports "Compiler killed by signal 9", as in a real OOM).
  A real ``podman run --memory`` OOM kill (exit 137) is also fed to the same detector where podman and the offline
  test image exist; the container build backend is not used.
- S3 stopped mid-upload: moto's ThreadedMotoServer on 127.0.0.1 behind a TCP relay that holds the wheel's PUT after
  half its body; the server is then stopped for real and started again on the same port (moto keeps its state in the
  process, as S3 keeps its objects).
- full disk: a 1 MiB tmpfs mounted over the wheelhouse / mirror (as root, or with ``sudo -n``; skipped otherwise).
- bad inputs (sdist pin, patch, torch version, container engine): a copy of build_matrix.toml in a temp folder,
  edited; the real CLI in a subprocess.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from farmtest import _nvcc_toolchain_available, need, run_wheelfarm
from test_publish import cli_env, linked_files, race_wheels, run_publishers, state_of
from test_source import Index, make_sdist
from test_store_s3 import make_bucket, moto_endpoint, s3_env  # noqa: F401 (fixtures)
from wheelfarm import build, source, toolchain
from wheelfarm.config import load
from wheelfarm.container import Engine
from wheelfarm.errors import BadInput
from wheelfarm.store import RetryPolicy, open_store
from wheelgen import add_member, make_wheel

ROOT = Path(__file__).resolve().parents[1]
CELL = ["--select", "package=fixture-attn", "python=3.11"]
WHEEL = "fixture_attn-0.1.0+cu13torch2.14cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"
NEEDS_NVCC = pytest.mark.skipif(not _nvcc_toolchain_available(), reason="the fixture build needs linux x86_64")


# ------------------------------------------------------------------------------------------- the table


@dataclass
class Row:
    fault: str
    expected: str
    observed: str = "did not finish"
    ok: bool = False

    def done(self, observed: str) -> None:
        self.observed, self.ok = observed, True


@dataclass(eq=False)  # a pytest plugin object must be hashable
class FaultTable:
    rows: list[Row] = field(default_factory=list)

    def markdown(self) -> str:
        lines = ["| fault | expected | observed | result |", "|---|---|---|---|"]
        lines += [f"| {r.fault} | {r.expected} | {r.observed} | {'ok' if r.ok else 'FAILED'} |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.rows:
            return
        terminalreporter.section("fault injection: fault, expected, observed")
        for r in self.rows:
            terminalreporter.write_line(f"{'ok    ' if r.ok else 'FAILED'} {r.fault}")
            terminalreporter.write_line(f"         expected: {r.expected}")
            terminalreporter.write_line(f"         observed: {r.observed}")
        if os.environ.get("WHEELFARM_FAULT_TABLE"):
            Path(os.environ["WHEELFARM_FAULT_TABLE"]).write_text(self.markdown())


@pytest.fixture(scope="module")
def table(request: pytest.FixtureRequest) -> FaultTable:
    plugins = request.config.pluginmanager
    found = plugins.get_plugin("wheelfarm-fault-table")
    if found is None:
        found = FaultTable()
        plugins.register(found, "wheelfarm-fault-table")
    return found


@pytest.fixture
def row(table: FaultTable, request: pytest.FixtureRequest) -> Callable[[str, str], Row]:
    def make(fault: str, expected: str) -> Row:
        new = Row(fault, expected)
        table.rows.append(new)
        return new

    return make


def squash(text: str) -> str:
    """rich wraps long messages; compare without line breaks."""
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------- build helpers


class Running:
    """``wheelfarm …`` as a child in a session of its own; its output is read as it comes."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "wheelfarm", *args], cwd=ROOT, env=full_env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"never saw {pattern!r} (exit {self.proc.poll()}):\n{self.output[-4000:]}")

    def finish(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        while (line := self._queue.get(timeout=30)) is not None:
            self.lines.append(line)
        return rc

    @property
    def output(self) -> str:
        return "".join(self.lines)


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``: ninja moves compile jobs to new process groups, not sessions."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def kill_session(sid: int) -> None:
    """kill -9 of everything in the session, repeated until nothing is left (children spawned meanwhile too)."""
    for _ in range(100):
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise AssertionError(f"session {sid} survived kill -9: {session_pids(sid)}")


OOM_NVCC = '''\
"""nvcc as a memory-starved machine runs it: once armed, SIGKILL the first real cicc of this build, like the kernel's
OOM killer. sccache runs nvcc's steps itself (it asks ``nvcc --dryrun`` for them, then starts cicc, ptxas... from
its server, which runs in the build's session), so the armed dry run starts a watcher that kills the first cicc of
this session: other sessions' compilers on a shared machine are never touched."""
import os, subprocess, sys

REAL, ARM = {real!r}, {arm!r}
WATCH = """
import os, sys, time
sid, deadline = int(sys.argv[1]), time.monotonic() + 600
while time.monotonic() < deadline:
    for entry in os.listdir("/proc"):
        try:
            comm = open(f"/proc/{{entry}}/comm").read().strip() if entry.isdigit() else ""
            if comm == "cicc" and os.getsid(int(entry)) == sid:
                os.kill(int(entry), 9)
                sys.exit(0)
        except OSError:
            continue
    time.sleep(0.02)
"""


def armed():
    try:
        mode = open(ARM).read().strip()
        if mode == "once":
            os.unlink(ARM)  # the first compile to get here takes it; a parallel one loses the race
        return mode
    except OSError:
        return ""


args = sys.argv[1:]
if "--dryrun" in args and "-c" in args and armed():
    # no inherited stdout/stderr: sccache reads the dry run's output until EOF
    subprocess.Popen([sys.executable, "-c", WATCH, str(os.getsid(0))], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os.execv(REAL, [REAL, *args])
'''


def oom_cuda_home(dest: Path) -> Path:
    """A CUDA_HOME of symlinks to the real one whose bin/nvcc can be armed (write once|always to ``oom-armed``)."""
    real = toolchain.ensure_cuda_home(load(ROOT / "build_matrix.toml").cuda["13.0"])
    dest.mkdir(parents=True)
    for entry in real.iterdir():
        if entry.name != "bin":
            (dest / entry.name).symlink_to(entry)
    (dest / "bin").mkdir()
    for tool in (real / "bin").iterdir():
        if tool.name != "nvcc":
            (dest / "bin" / tool.name).symlink_to(tool)
    nvcc = dest / "bin" / "nvcc"
    nvcc.write_text(f"#!{sys.executable}\n" + OOM_NVCC.format(real=str(real / "bin" / "nvcc"),
                                                              arm=str(dest / "oom-armed")))
    nvcc.chmod(0o755)
    return dest


@dataclass
class FaultBuild:
    """One fresh work dir taken through SIGTERM, kill -9, and a resume that meets an OOM kill."""

    work: Path
    wheelhouse: Path
    cuda_home: Path
    sigterm: dict = field(default_factory=dict)
    killed: dict = field(default_factory=dict)
    resumed: dict = field(default_factory=dict)

    def args(self, *extra: str) -> list[str]:
        return ["build", "--backend", "host", *CELL, "--work-dir", str(self.work), "--wheelhouse",
                str(self.wheelhouse), "--no-audit", "--cuda-home", str(self.cuda_home), *extra]

    def arm(self, mode: str) -> None:
        (self.cuda_home / "oom-armed").write_text(mode)

    def disarm(self) -> None:
        (self.cuda_home / "oom-armed").unlink(missing_ok=True)


def _compiler_running(sid: int) -> bool:
    for pid in session_pids(sid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() in ("cicc", "cc1plus", "ptxas"):
                return True
    return False


@pytest.fixture(scope="module")
def fault_build(tmp_path_factory: pytest.TempPathFactory) -> FaultBuild:
    need(_nvcc_toolchain_available(), "the fixture build needs linux x86_64 (CUDA 13 wheels from PyPI)")
    base = tmp_path_factory.mktemp("fault-build")
    fb = FaultBuild(base / "work", base / "wheelhouse", oom_cuda_home(base / "cuda"))

    # 1. SIGTERM while compilers run: wheelfarm must take its whole build tree down with it.
    run = Running(*fb.args())
    deadline = time.monotonic() + 300
    while not _compiler_running(run.proc.pid) and time.monotonic() < deadline and run.proc.poll() is None:
        time.sleep(0.2)
    before = len(session_pids(run.proc.pid))
    run.proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    rc = run.finish(timeout=60)
    time.sleep(0.5)
    fb.sigterm = {"rc": rc, "seconds": time.monotonic() - start, "processes_before": before,
                  "left": session_pids(run.proc.pid), "output": run.output}
    kill_session(run.proc.pid)  # whatever the outcome, nothing of it may disturb what follows

    # 2. kill -9 of everything once ninja has finished at least two objects.
    run = Running(*fb.args())
    step = run.wait_for(r"\[(\d+)/(\d+)\] objects", timeout=600)
    while int(step.group(1)) < 2:
        step = run.wait_for(r"\[(\d+)/(\d+)\] objects", timeout=600)
    kill_session(run.proc.pid)
    run.finish(timeout=60)
    fb.killed = {"at": step.group(0), "wheels": sorted(p.name for p in fb.wheelhouse.glob("*"))
                 if fb.wheelhouse.exists() else [], "output": run.output}

    # 3. resume in the same work dir, with the first cicc OOM-killed once.
    fb.arm("once")
    report = base / "resume.json"
    run = Running(*fb.args("--json", str(report)))
    rc = run.finish(timeout=900)
    fb.disarm()
    fb.resumed = {"rc": rc, "output": run.output, "json": json.loads(report.read_text())[0] if report.exists() else {}}
    return fb


# ------------------------------------------------------------------------------------------- build faults


@NEEDS_NVCC
def test_sigterm_mid_build_stops_every_compiler(fault_build: FaultBuild, row) -> None:
    r = row("SIGTERM to `wheelfarm build` while nvcc/cc1plus run",
            "exit 143 within seconds, no process of the build left (ninja's jobs sit in their own process groups)")
    s = fault_build.sigterm
    assert s["processes_before"] > 3, s["output"][-3000:]
    assert s["rc"] == 143, s["output"][-3000:]
    assert "terminated by SIGTERM" in s["output"]
    assert s["left"] == [], f"still running after SIGTERM: {s['left']}"
    r.done(f"exit {s['rc']} after {s['seconds']:.1f} s; {s['processes_before']} processes before, 0 after")


@NEEDS_NVCC
def test_kill_9_mid_build_then_resume_compiles_fewer_objects(fault_build: FaultBuild, row) -> None:
    r = row("kill -9 of the whole build (every process of its session) at ninja [k/N], k ≥ 2",
            "no wheel; the rerun resumes in the kept tree: objects_compiled < objects_total, wheel complete")
    assert fault_build.killed["wheels"] == [], "a killed build left something in the wheelhouse"
    res = fault_build.resumed
    assert res["rc"] == 0, res["output"][-5000:]
    result = res["json"]
    assert result["ok"] and Path(result["wheel"]).name == WHEEL
    assert 0 < result["objects_compiled"] < result["objects_total"] == 6, result
    assert "reusing" in res["output"]  # the source tree (with its build/) was kept
    with zipfile.ZipFile(result["wheel"]) as zf:
        assert zf.testzip() is None
    r.done(f"killed at {fault_build.killed['at']}; rerun compiled {result['objects_compiled']}/"
           f"{result['objects_total']} objects, wheel ok ({result['size'] / 2**20:.1f} MiB)")


@NEEDS_NVCC
def test_oom_kill_is_detected_and_retried_with_fewer_jobs(fault_build: FaultBuild, row) -> None:
    r = row("OOM kill of a compile job (cicc SIGKILLed once, as the kernel's OOM killer does)",
            "detected as OOM, retried with fewer jobs, finished objects kept, a message saying so")
    res = fault_build.resumed
    result, out = res["json"], squash(res["output"])
    assert res["rc"] == 0, res["output"][-5000:]
    assert result["attempts"] == 2 and result["plan"]["max_jobs"] == 1, result
    message = re.search(r"warning: \S+: the build was killed, most likely out of memory with MAX_JOBS=(\d+); "
                        r"retrying with MAX_JOBS=(\d+) \(finished objects are kept\)", out)
    assert message and int(message.group(2)) < int(message.group(1)), out[-3000:]
    log = Path(result["log"]).read_text()
    assert "Compiler killed by signal 9" in log and "# attempt 2: MAX_JOBS=1" in log  # sccache's words for it
    r.done(f"\"{message.group(0)[9:]}\"; attempt 2 ok")


def _podman_and_test_image(r: Row) -> tuple[Engine, str]:
    from wheelfarm.container import detect_engine

    try:
        engine = detect_engine("podman")
    except BadInput:
        r.done("skipped: no podman here")
        need(False, "no podman (scripts/setup-podman.sh)")
    images = subprocess.run([engine.executable, "images", "--format", "{{.Repository}}:{{.Tag}}"],
                            capture_output=True, text=True, check=False).stdout.split()
    image = os.environ.get("WHEELFARM_TEST_IMAGE") or next((i for i in images if "wheelfarm-testimage" in i), None)
    if image is None:
        r.done("skipped: no offline test image (scripts/build-test-image.sh)")
        need(False, "no offline test image (scripts/build-test-image.sh)")
    assert image is not None
    return engine, image


def _labelled_containers(engine: Engine) -> list[str]:
    from wheelfarm.cibw import RUN_LABEL

    return subprocess.run([engine.executable, "ps", "-aq", "--filter", f"label={RUN_LABEL}"], capture_output=True,
                          text=True, check=False).stdout.split()


@pytest.mark.container
@pytest.mark.slow
def test_sigterm_during_a_container_build_leaves_no_container(row, tmp_path: Path) -> None:
    r = row("SIGTERM to `wheelfarm build --backend container` while its container runs",
            "exit 143 and no container of the run left (cibuildwheel, killed, cannot remove its own)")
    engine, image = _podman_and_test_image(r)
    assert not _labelled_containers(engine), "a container of an earlier run is still there"
    run = Running("build", "--backend", "container", *CELL, "--work-dir", str(tmp_path / "w"),
                  "--wheelhouse", str(tmp_path / "wh"), "--no-audit", env={"WHEELFARM_IMAGE": image})
    deadline = time.monotonic() + 300
    while not _labelled_containers(engine) and time.monotonic() < deadline and run.proc.poll() is None:
        time.sleep(0.5)
    during = _labelled_containers(engine)
    time.sleep(3)  # inside it by now: cibuildwheel's hooks (CUDA, torch) or the compiles
    run.proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    rc = run.finish(timeout=120)
    seconds = time.monotonic() - start
    kill_session(run.proc.pid)
    left = _labelled_containers(engine)
    for ctr in left:  # whatever the outcome, nothing of it may disturb what follows
        subprocess.run([engine.executable, "rm", "-f", ctr], capture_output=True, check=False)
    assert during, f"the build never started its container:\n{run.output[-3000:]}"
    assert rc == 143 and not left, (rc, left, run.output[-3000:])
    assert "removed its container" in squash(run.output)
    r.done(f"exit {rc} after {seconds:.1f} s; containers during: {len(during)}, after: {len(left)}")


def test_a_real_container_oom_kill_is_recognised(row, tmp_path: Path) -> None:
    r = row("a real OOM kill: `podman run --memory=64m` allocating 512 MiB",
            "exit 137, which the build's OOM detector (build.looks_oom) reports as out of memory")
    engine, image = _podman_and_test_image(r)
    proc = engine.run(image, ["/opt/python/cp311-cp311/bin/python", "-c", "b = bytearray(512 * 2**20)"],
                      memory="64m", capture=True, check=False)
    (tmp_path / "log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 137
    assert build.looks_oom(proc.returncode, tmp_path / "log")
    r.done(f"podman exit {proc.returncode} → looks_oom = True (image {image})")


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    """A full-disk stand-in: a 1 MiB tmpfs at ``path`` (root, or passwordless sudo)."""
    path.mkdir(parents=True, exist_ok=True)
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if sudo and subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode != 0:
        need(False, "mounting a tmpfs needs root or passwordless sudo")
    opts = f"size={size},uid={os.getuid()},gid={os.getgid()}"
    mount = subprocess.run([*sudo, "mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True,
                           text=True, check=False)
    if mount.returncode != 0:
        need(False, f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run([*sudo, "umount", "-l", str(path)], check=False)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


@NEEDS_NVCC
def test_full_disk_in_the_wheelhouse(fault_build: FaultBuild, row, tmp_path: Path) -> None:
    r = row("full disk in the wheelhouse (1 MiB tmpfs; the wheel is 1.8 MiB)",
            "exit 1 naming the wheelhouse and 'No space left on device'; nothing half-written in it")
    assert fault_build.resumed["rc"] == 0
    with tiny_tmpfs(tmp_path / "full") as full:
        proc = run_wheelfarm(*fault_build.args("--wheelhouse", str(full)), timeout=600)
        left = files_under(full)
    out = squash(proc.stderr)
    assert proc.returncode == 1, out[-3000:]
    assert f"cannot write {WHEEL} into {full}: No space left on device" in out
    assert left == [], left
    r.done(f"exit 1: \"cannot write {WHEEL[:12]}… into <tmpfs>: No space left on device\"; wheelhouse empty")


@NEEDS_NVCC
def test_full_disk_in_the_mirror(fault_build: FaultBuild, row, tmp_path: Path) -> None:
    r = row("full disk in a local mirror (1 MiB tmpfs) during `wheelfarm publish`",
            "exit 1 naming 'no space left on device'; no partial file, no index entry")
    wheel = Path(fault_build.resumed["json"]["wheel"])
    with tiny_tmpfs(tmp_path / "mirror") as mirror:
        proc = run_wheelfarm("publish", str(wheel), "--to", str(mirror), "--no-audit-gate",
                             env={"WHEELFARM_MATRIX": "/nonexistent.toml"})
        left = files_under(mirror)
    out = squash(proc.stderr)
    assert proc.returncode == 1, out[-3000:]
    assert "no space left on device" in out.lower() and "Traceback" not in out
    assert [f for f in left if not f.endswith(".lock")] == [], left
    r.done("exit 1: \"no space left on device …\"; mirror holds no file")


@NEEDS_NVCC
def test_oom_even_with_one_job_fails_with_a_clear_message(fault_build: FaultBuild, row) -> None:
    r = row("OOM kill at MAX_JOBS=1 (cicc SIGKILLed every time)",
            "exit 1, no retry, the message says more memory is needed (not 'retry with --max-jobs 1')")
    tree = next((fault_build.work / "groups").glob("*/source/*"))
    shutil.rmtree(fault_build.work / "compile-cache")  # else the object comes back from the cache, no nvcc runs
    next(tree.glob("build/temp*-cpython-311/csrc/attention.o")).unlink()
    fault_build.arm("always")
    try:
        proc = run_wheelfarm(*fault_build.args("--max-jobs", "1", "--wheelhouse", str(fault_build.work / "wh1")),
                             timeout=600)
    finally:
        fault_build.disarm()
    out = squash(proc.stderr)
    assert proc.returncode == 1, out[-3000:]
    assert "most likely out of memory even with MAX_JOBS=1: give the build more memory" in out
    assert "retrying" not in out and not (fault_build.work / "wh1" / WHEEL).exists()
    r.done("exit 1: \"killed, most likely out of memory even with MAX_JOBS=1: give the build more memory …\"")


# -------------------------------------------------------------------------------------------- bad inputs


def matrix_copy(tmp: Path, edit: Callable[[str], str] = lambda text: text, fixture: Path | None = None) -> Path:
    """build_matrix.toml in ``tmp`` (its patches/ beside it), the fixture's source made absolute, then ``edit``ed."""
    text = (ROOT / "build_matrix.toml").read_text()
    text = text.replace('source = "path:tests/fixture/fixture-attn"',
                        f'source = "path:{fixture or ROOT / "tests/fixture/fixture-attn"}"')
    shutil.copytree(ROOT / "patches" / "fixture-attn", tmp / "patches" / "fixture-attn")
    (tmp / "build_matrix.toml").write_text(edit(text))
    return tmp / "build_matrix.toml"


@NEEDS_NVCC
def test_corrupted_sdist_is_refused_and_deleted(row, tmp_path: Path) -> None:
    r = row("corrupted sdist (the fixture's source changed under its sha256 pin)",
            "exit 2 naming both hashes and the toml key; no sdist, no source tree kept")
    corrupt = tmp_path / "fixture-attn"
    shutil.copytree(ROOT / "tests/fixture/fixture-attn", corrupt,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    kernel = corrupt / "csrc" / "axpy.cu"
    kernel.write_bytes(kernel.read_bytes().replace(b"a", b"b", 1))
    matrix = matrix_copy(tmp_path, fixture=corrupt)
    work = tmp_path / "work"
    proc = run_wheelfarm("build", "--backend", "host", "--matrix", str(matrix), *CELL, "--work-dir", str(work),
                         "--wheelhouse", str(tmp_path / "wh"), "--no-audit")
    out = squash(proc.stderr)
    assert proc.returncode == 2, out[-3000:]
    assert "sha256 mismatch for fixture_attn-0.1.0.tar.gz" in out
    assert 'packages.fixture-attn.versions."0.1.0".sha256 = 8064166a' in out and "the file was deleted" in out
    assert files_under(work / "sdists") == [] and not list(work.glob("groups/*/source"))
    r.done("exit 2: \"sha256 mismatch for fixture_attn-0.1.0.tar.gz … the file was deleted\"; nothing kept")


def test_corrupted_sdist_download_is_deleted(row, tmp_path: Path) -> None:
    r = row("corrupted sdist download (a PyPI-style index serving other bytes than pinned)",
            "BadInput (exit 2) naming both hashes; nothing left in the sdist cache")
    good = make_sdist("demo_pkg-1.0", {"setup.py": "print('hi')\n"})
    index = Index("demo-pkg", "demo_pkg-1.0.tar.gz", good[:-20] + b"corrupted-tail-bytes")
    try:
        with pytest.raises(BadInput) as err:
            source.fetch_sdist("demo-pkg", "1.0", hashlib.sha256(good).hexdigest(), tmp_path / "cache",
                               index_url=index.url)
    finally:
        index.close()
    assert err.value.exit_code == 2 and "sha256 mismatch" in str(err.value) and "deleted" in str(err.value)
    assert files_under(tmp_path / "cache") == []
    r.done("BadInput: \"sha256 mismatch for demo_pkg-1.0.tar.gz … the file was deleted\"; cache empty")


@NEEDS_NVCC
def test_patch_that_does_not_apply(row, tmp_path: Path) -> None:
    r = row("a patch that does not apply", "exit 2 naming the patch file and the failing hunk; tree untouched")
    matrix = matrix_copy(tmp_path)
    (tmp_path / "patches/fixture-attn/0.1.0/0002-stale.patch").write_text(
        "--- a/setup.py\n+++ b/setup.py\n@@ -1,3 +1,3 @@\n"
        " # a context line that is not in setup.py\n-PACKAGE_NAME = 'nope'\n+PACKAGE_NAME = 'still nope'\n"
        " # another one\n")
    work = tmp_path / "work"
    proc = run_wheelfarm("build", "--backend", "host", "--matrix", str(matrix), *CELL, "--work-dir", str(work),
                         "--wheelhouse", str(tmp_path / "wh"), "--no-audit")
    out = squash(proc.stderr)
    assert proc.returncode == 2, out[-3000:]
    assert "0002-stale.patch does not apply" in out and "Hunk #1 FAILED" in out
    assert not list(work.glob("groups/*/source")) and not (tmp_path / "wh").exists()
    r.done("exit 2: \"patch …/0002-stale.patch does not apply to fixture_attn-0.1.0: Hunk #1 FAILED at 1\"")


def test_unknown_torch_version_in_the_matrix(row, tmp_path: Path) -> None:
    r = row("an unknown torch version in the matrix (torch = [\"2.99\"])",
            "exit 2 naming the file, line, block and value, before anything is built")
    matrix = matrix_copy(tmp_path, lambda text: text.replace(
        'name = "fixture-host"\npackage = "fixture-attn"\nversion = ["0.1.0"]\ntorch = ["2.14"]',
        'name = "fixture-host"\npackage = "fixture-attn"\nversion = ["0.1.0"]\ntorch = ["2.99"]'))
    assert "2.99" in matrix.read_text()
    proc = run_wheelfarm("build", "--backend", "host", "--matrix", str(matrix), "--select", "package=fixture-attn",
                         "--work-dir",
                         str(tmp_path / "work"), "--wheelhouse", str(tmp_path / "wh"))
    out = squash(proc.stderr)
    assert proc.returncode == 2, out[-3000:]
    where = re.search(r"build_matrix\.toml:(\d+): fixture-host: impossible cell", out)
    assert where and "torch 2.99 is not in the [torch] table" in out
    assert not (tmp_path / "work").exists()
    r.done(f"exit 2: \"build_matrix.toml:{where.group(1)}: fixture-host: impossible cell (…): torch 2.99 is not in "
           "the [torch] table (known: …)\"")


def test_missing_container_engine(row, tmp_path: Path) -> None:
    r = row("no container engine (PATH without podman/docker), `--backend container`",
            "exit 2 naming the missing engine and `--backend host`")
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = run_wheelfarm("build", *CELL, "--backend", "container", "--work-dir", str(tmp_path / "work"),
                         "--wheelhouse", str(tmp_path / "wh"), env={"PATH": str(empty)})
    out = squash(proc.stderr)
    assert proc.returncode == 2, out[-3000:]
    assert "no container engine found (podman or docker)" in out and "--backend host" in out
    r.done("exit 2: \"no container engine found (podman or docker) hint: … or use --backend host\"")


# ------------------------------------------------------------------------------------------ publish faults


@pytest.mark.parametrize("where", ["s3", "local"])
def test_two_publishers_racing_on_one_index(where: str, row, tmp_path: Path, request: pytest.FixtureRequest
                                            ) -> None:
    r = row(f"two publishers racing on one index ({'S3 via moto' if where == 's3' else 'local mirror'}), 2 × 10 "
            "wheels", "all 20 wheels stored, in the index state and linked from the pages: nothing lost")
    batches = race_wheels(tmp_path, 2, 10)
    if where == "s3":
        endpoint = request.getfixturevalue("s3_env")
        target = f"s3://{make_bucket(endpoint)}/mirror"
        env = cli_env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    else:
        target, env = str(tmp_path / "mirror"), cli_env()
    run_publishers(batches, target, env)
    store = open_store(target, retry=RetryPolicy(attempts=3, base_s=0.01))
    names = sorted(w.name for ws in batches for w in ws)
    assert [e.file for e in state_of(store).entries] == names
    assert sorted(linked_files(store, "simple/fixture-attn/index.html")) == names
    stored = set(store.list_files("wheels/"))
    assert all(f"wheels/fixture-attn/{n}" in stored for n in names)
    r.done(f"{len(names)}/20 in the state, {len(names)}/20 linked, {len(names)}/20 stored")


class PausingRelay:
    """A TCP relay on 127.0.0.1 in front of an S3 server. The first request line ``PUT /…<match>…`` is forwarded with
    half its body; then the relay stops forwarding on that connection, sets ``paused`` and, once ``release`` is set,
    drops both sides. Every other byte is relayed as is (connections to a stopped server are refused)."""

    def __init__(self, upstream_port: int, match: bytes) -> None:
        self.upstream_port, self.match = upstream_port, match
        self.paused, self.release = threading.Event(), threading.Event()
        self._fired = threading.Lock()
        self.fired = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            client.close()  # the server is down: the client sees its connection closed
            return
        upstream.settimeout(None)
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        tail, remaining = b"", None  # remaining: body bytes of the held PUT still to forward
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if remaining is None and not self.fired:
                    seen = tail + data
                    head = re.search(rb"PUT /[^ ]*" + re.escape(self.match) + rb"[^ ]* HTTP/1\.1\r\n(.*?)\r\n\r\n",
                                     seen, re.S)
                    with self._fired:
                        if head and not self.fired:
                            self.fired = True
                            length = re.search(rb"(?i)content-length: *(\d+)", head.group(1))
                            cut = max(0, head.end() - len(tail))  # where the body starts in ``data``
                            body = int(length.group(1)) if length else 2**20
                            remaining = body // 2 - max(0, len(tail) - head.end())
                            upstream.sendall(data[:cut])
                            data = data[cut:]
                    tail = seen[-8192:]
                if remaining is None:
                    upstream.sendall(data)
                    continue
                upstream.sendall(data[: max(0, remaining)])
                remaining -= len(data)
                if remaining <= 0:
                    self.paused.set()
                    self.release.wait(120)
                    break
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def big_wheel(tmp: Path, megabytes: int) -> Path:
    """A test wheel with an incompressible payload, so its upload takes several TCP segments."""
    wheel = make_wheel(tmp / "wheelhouse", "fixture-attn", "0.1.0+cu13torch2.14cxx11abiTRUE",
                       requires_dist=["torch==2.14.*"])
    return add_member(wheel, "fixture_attn/blob.bin", os.urandom(megabytes * 2**20), zipfile.ZIP_STORED)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_s3_server_stopped_mid_upload(row, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = row("the S3 server (moto on 127.0.0.1) stopped mid-upload of the wheel, started again ~3 s later",
            "no partial object ever visible; the publisher's retries complete after the restart; index lists it")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    bucket = "mirror-stop-test"
    client.create_bucket(Bucket=bucket)
    wheel = big_wheel(tmp_path, 4)
    relay = PausingRelay(port, match=wheel.name.encode().replace(b"+", b"%2B"))
    env = {**cli_env(), "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{relay.port}",
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "WHEELFARM_RETRY_ATTEMPTS": "8", "WHEELFARM_RETRY_BASE_S": "0.5"}
    publisher = subprocess.Popen([sys.executable, "-m", "wheelfarm", "publish", str(wheel), "--to",
                                  f"s3://{bucket}/m", "--no-audit-gate"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    running, stopper = server, None
    try:
        assert relay.paused.wait(120), "the wheel's PUT never came through the relay"
        stopper = threading.Thread(target=server.stop, daemon=True)
        stopper.start()
        time.sleep(0.5)
        relay.release.set()  # the half-sent request dies with the server
        stopper.join(30)
        assert not stopper.is_alive(), "moto did not stop"
        time.sleep(3)  # the publisher meets a dead endpoint and backs off
        running = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        running.start()
        listing = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        whole = wheel.stat().st_size
        partial = [o["Key"] for o in listing if o["Key"].endswith(".whl") and o["Size"] != whole]
        _, err = publisher.communicate(timeout=120)
        assert partial == [], f"partial objects visible after the restart: {partial}"
        assert publisher.returncode == 0, err[-3000:]
        retries = re.findall(r"retry \d+/\d+", err)
        assert retries, err[-3000:]
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED",
                    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            monkeypatch.setenv(key, env[key])
        store = open_store(f"s3://{bucket}/m", endpoint_url=endpoint, retry=RetryPolicy(attempts=2, base_s=0.01))
        assert store.sha256(f"wheels/fixture-attn/{wheel.name}") == hashlib.sha256(wheel.read_bytes()).hexdigest()
        assert linked_files(store, "simple/fixture-attn/index.html") == [wheel.name]
    finally:
        relay.close()
        if publisher.poll() is None:
            publisher.kill()
        if running is not server or stopper is None:
            running.stop()
    r.done(f"{len(retries)} retries while down; 0 partial objects after the restart; published, sha256 verified, "
           "indexed")

