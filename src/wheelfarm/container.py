"""One small class over podman | docker | chroot: run a command in an image; check, save and load images.

``chroot`` is for machines without a container engine (a GPU runner with only unshare and chroot): the
"image" is a root folder (scripts/build-buildroot.sh makes one), entered by ``resources/chroot-run.sh`` in
fresh mount and PID namespaces. It has no memory cap and no image store; cibuildwheel cannot drive it, so
``steps.py`` runs the same in-container steps for it.

Engine quirks are commented where they are handled (``Engine.run_args``). Command lines are built by pure
methods (unit-tested without an engine) and executed through ``wheelfarm.proc``. Environment values travel as
``--env NAME`` (taken from the engine client's environment), so the echoed command line never shows them.

``memory_limit_bytes(root)`` reads the cgroup memory limit of the process that calls it (meant to run inside
a container); it is a pure function of the files under ``root``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import proc
from .errors import BadInput, BuildFailed

EngineName = Literal["podman", "docker", "chroot"]
ENGINES: tuple[EngineName, ...] = ("podman", "docker")  # auto-detected; chroot only when asked for
CHROOT_RUN = Path(__file__).with_name("resources") / "chroot-run.sh"
NO_ENGINE = "no container engine found (podman or docker)"
NO_ENGINE_HINT = "install one with scripts/setup-podman.sh or use --backend host"
# podman's OCI runtime and rlimits: crun fails on some hosts' cgroups (DESIGN.md "Containers here"), and
# `--ulimit` replaces the whole default list, so both limits are given (as scripts/setup-podman.sh does).
PODMAN_RUNTIME = "runc"
PODMAN_ULIMITS = ("nofile=1024:1024", "nproc=1024:1024")


@dataclass(frozen=True)
class Mount:
    """A bind mount: host ``source`` at ``target`` inside the container."""

    source: Path
    target: str
    read_only: bool = False

    def arg(self) -> str:
        return f"--volume={self.spec()}"

    def spec(self) -> str:
        """``source:target[:ro]`` (podman's --volume value, chroot-run.sh's -m value)."""
        if ":" in str(self.source) or ":" in self.target:
            raise BadInput(f"mount path contains ':': {self.source} -> {self.target}", hint="rename the folder")
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class Engine:
    """A container engine executable; ``runtime`` is the OCI runtime forced on podman (None: its default)."""

    name: EngineName
    executable: str
    runtime: str | None = None

    def run_args(
        self,
        image: str,
        cmd: Sequence[str],
        *,
        mounts: Sequence[Mount] = (),
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        memory: str | None = None,
        cpus: float | None = None,
        name: str | None = None,
    ) -> list[str]:
        """The full ``<engine> run …`` command line (pure). chroot: no memory/cpu cap (no cgroup of its own)."""
        if self.name == "chroot":
            return self._chroot_args(image, cmd, mounts=mounts, env=env, workdir=workdir)
        args = [
            self.executable,
            "run",
            "--rm",
            "--pull=never",
        ]  # images are built or loaded, never pulled here
        args += self._quirk_args()
        args += [f"--name={name}"] if name else []
        args += [m.arg() for m in mounts]
        args += [f"--env={key}" for key in sorted(env or {})]  # value from our environment: not echoed
        args += [f"--workdir={workdir}"] if workdir else []
        # A memory cap without swap: an over-planned build is OOM-killed instead of swapping for hours.
        args += [f"--memory={memory}", f"--memory-swap={memory}"] if memory else []
        args += [f"--cpus={cpus:g}"] if cpus else []
        return [*args, image, *cmd]

    def _chroot_args(self, image: str, cmd: Sequence[str], *, mounts: Sequence[Mount],
                     env: Mapping[str, str] | None, workdir: str | None) -> list[str]:
        args = [self.executable, str(CHROOT_RUN), image]
        args += [a for m in mounts for a in ("-m", m.spec())]
        args += [a for key in sorted(env or {}) for a in ("-e", key)]  # value from our environment: not echoed
        args += ["-w", workdir] if workdir else []
        return [*args, "--", *cmd]

    def _quirk_args(self) -> list[str]:
        if self.name != "podman":
            return []
        runtime = [f"--runtime={self.runtime}"] if self.runtime else []
        return runtime + [f"--ulimit={u}" for u in PODMAN_ULIMITS]

    def run(
        self,
        image: str,
        cmd: Sequence[str],
        *,
        mounts: Sequence[Mount] = (),
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        memory: str | None = None,
        cpus: float | None = None,
        name: str | None = None,
        capture: bool = False,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        args = self.run_args(
            image, cmd, mounts=mounts, env=env, workdir=workdir, memory=memory, cpus=cpus, name=name
        )
        return proc.run(args, env=dict(env or {}), capture=capture, check=check)

    def remove_labelled(self, label: str, value: str) -> list[str]:
        """Force-remove the containers carrying ``label=value`` (a build stopped mid-way: cibuildwheel, killed,
        cannot remove its container itself); returns their ids. chroot: nothing outlives its namespace."""
        if self.name == "chroot":
            return []
        found = proc.run([self.executable, "ps", "-aq", "--filter", f"label={label}={value}"], capture=True,
                         check=False, quiet=True).stdout.split()
        if found:
            proc.run([self.executable, "rm", "-f", *found], capture=True, check=False, quiet=True)
        return found

    def image_exists(self, image: str) -> bool:
        if self.name == "chroot":
            return (Path(image) / "bin" / "sh").exists()
        args = [self.executable, "image", "inspect", "--format={{.Id}}", image]
        return proc.run(args, capture=True, check=False, quiet=True).returncode == 0

    def load_args(self, path: Path) -> list[str]:
        # `podman load -i x.tar.gz` fails on podman 4.3: decompress into stdin instead.
        return ["bash", "-o", "pipefail", "-c", 'zcat -f "$0" | "$1" load', str(path), self.executable]

    def save_args(self, image: str, path: Path) -> list[str]:
        script = '"$1" save "$2" | gzip -1 > "$0.part" && mv "$0.part" "$0"'
        return ["bash", "-o", "pipefail", "-c", script, str(path), self.executable, image]

    def load(self, path: Path) -> None:
        """Load an image saved by ``save`` (gzip or plain tar)."""
        if not path.is_file():
            raise BadInput(f"no image archive at {path}", hint="build it with scripts/build-test-image.sh")
        try:
            proc.run(self.load_args(path))
        except subprocess.CalledProcessError as exc:
            raise BuildFailed(f"{self.name} load {path} failed (exit {exc.returncode})") from exc

    def save(self, image: str, path: Path) -> None:
        """Save ``image`` to ``path`` as a gzip-compressed archive (written atomically)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            proc.run(self.save_args(image, path))
        except subprocess.CalledProcessError as exc:
            raise BuildFailed(f"{self.name} save {image} failed (exit {exc.returncode})") from exc


def detect_engine(preferred: str | None = None) -> Engine:
    """``preferred`` podman | docker | chroot | None/"auto" (podman, then docker with a reachable daemon)."""
    if preferred == "chroot":
        return _chroot_engine()
    if preferred not in (None, "auto", *ENGINES):
        raise BadInput(f"unknown container engine {preferred!r}", hint="choose podman, docker, chroot or auto")
    candidates: tuple[str, ...] = ENGINES if preferred in (None, "auto") or preferred is None else (preferred,)
    for name in candidates:
        engine = _usable(name)
        if engine is not None:
            return engine
    raise BadInput(
        NO_ENGINE if preferred in (None, "auto") else f"{NO_ENGINE}: {preferred} is not usable",
        hint=NO_ENGINE_HINT,
    )


def _chroot_engine() -> Engine:
    missing = [tool for tool in ("unshare", "chroot", "mount") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        why = f"{', '.join(missing)} not found" if missing else "it needs root (mount namespaces, chroot)"
        raise BadInput(f"the chroot engine is not usable here: {why}", hint=NO_ENGINE_HINT)
    return Engine("chroot", shutil.which("bash") or "/bin/bash")


def _usable(name: str) -> Engine | None:
    executable = shutil.which(name)
    if executable is None:
        return None
    if name == "podman":
        return Engine("podman", executable, PODMAN_RUNTIME if shutil.which(PODMAN_RUNTIME) else None)
    # The docker CLI exists without a daemon (this machine has one): ask the server for its version.
    probe = proc.run(
        [executable, "version", "--format={{.Server.Version}}"], capture=True, check=False, quiet=True
    )
    return Engine("docker", executable) if probe.returncode == 0 else None


# ------------------------------------------------------------------------------------ cgroup memory limit

UNLIMITED_V1 = 2**60  # cgroup v1 reports "no limit" as a huge page-rounded number (e.g. 9223372036854771712)


def memory_limit_bytes(root: Path = Path("/")) -> int | None:
    """This process's cgroup memory limit in bytes (v2 memory.max, v1 memory.limit_in_bytes); None: no limit.

    Inside a container the cgroup root is the container's own; on a host, /proc/self/cgroup names the nested
    cgroup, which is tried first.
    """
    cgroup = root / "sys/fs/cgroup"
    for own in _own_cgroups(root):
        rel = own.lstrip("/")
        for path in (cgroup / rel / "memory.max", cgroup / "memory" / rel / "memory.limit_in_bytes"):
            value = _read(path)
            if value is not None:
                return _parse_limit(value)
    return None


def _own_cgroups(root: Path) -> list[str]:
    """Cgroup paths to try: this process's own (v2 "0::" line or v1 memory controller), then the root."""
    own = []
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "" or "memory" in controllers.split(","):
            own.append(path)
    return [*own, "/"]


def _parse_limit(value: str) -> int | None:
    if value == "max":
        return None
    limit = int(value)
    return None if limit >= UNLIMITED_V1 else limit


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
