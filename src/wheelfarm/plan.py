"""Plan what a mirror lacks: matrix cells × the wheels the mirror holds → build jobs for a CI matrix.

Two halves, kept apart:

- **Pure planning** (``plan``): the missing cells, grouped into one job per build group (``Cell.group``: package,
  version, torch, CUDA, ABI, archs, variant) and platform, all of a group's missing Pythons together so they share
  its compiles; each job carries ``--select`` arguments that pick exactly its missing cells and the runner label
  of its platform (``[platforms]``: aarch64 jobs go to arm runners); jobs are cut into chunks of at most 256
  (GitHub Actions' limit for one ``strategy.matrix``).
- **Reading a mirror** (``holding``): which cells' wheels count as present. A wheel is present when the mirror
  stores the file and its ``.audit.json`` says ``"passed": true`` (and, with ``require_gpu``, its ``.gpu.json``
  too). Only names are listed and only the small result files are read, never a wheel, so a plan over a complete
  mirror takes seconds. A wheel stored *without* a passing result is reported as *incomplete*: it is planned
  like a missing one, but publishing a rebuild of it needs ``publish --replace`` (published files are
  immutable).

Mirrors are read through the store layer (a directory, ``s3://``, ``github://``) or, for ``http(s)://`` URLs,
as a served mirror: the PEP 503 project pages list the wheels and the result files are fetched beside them.
That needs no credentials, so a CI plan job can read a public mirror without any secret.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from packaging.utils import canonicalize_name

from . import mirror_read
from .config import DEFAULT_PLATFORM, DEFAULT_PLATFORMS
from .errors import BadInput
from .matrix import Cell
from .store import RetryPolicy, Store, with_retries

MATRIX_LIMIT = 256  # jobs in one GitHub Actions strategy.matrix
READERS = 8  # result files read in parallel
AUDIT, GPU = ".audit.json", ".gpu.json"


# ------------------------------------------------------------------------------------------------- planning


def _exact(value: str) -> str:
    """A ``--select`` glob matching ``value`` only (fnmatch's ``*?[`` made literal)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in value)


@dataclass(frozen=True)
class Job:
    """One build job: the missing cells of one build group on one platform, and the CI runner it runs on."""

    group: str
    platform: str
    cells: tuple[Cell, ...]
    runner: str = DEFAULT_PLATFORMS[DEFAULT_PLATFORM].runner

    @property
    def pythons(self) -> tuple[str, ...]:
        return tuple(c.python for c in self.cells)

    @property
    def select(self) -> tuple[str, ...]:
        """``--select`` arguments that pick exactly this job's cells from the matrix."""
        return (f"group={_exact(self.group)}", f"platform={_exact(self.platform)}",
                *(f"python={_exact(p)}" for p in self.pythons))

    def to_json(self) -> dict[str, Any]:
        """One ``include`` entry of a GitHub Actions matrix (the keys the farm workflow's build job reads)."""
        return {"group": self.group, "platform": self.platform, "runner": self.runner,
                "select": " ".join(self.select), "pythons": list(self.pythons), "cells": len(self.cells)}


@dataclass(frozen=True)
class Plan:
    total: int  # cells considered
    missing: tuple[Cell, ...]
    jobs: tuple[Job, ...]
    chunk_size: int = MATRIX_LIMIT
    incomplete: tuple[str, ...] = ()  # wheels stored without a passing result (planned, need --replace)
    forced: bool = False

    @property
    def chunks(self) -> list[tuple[Job, ...]]:
        n = self.chunk_size
        return [self.jobs[i:i + n] for i in range(0, len(self.jobs), n)]

    def matrices(self) -> list[dict[str, Any]]:
        """One ``strategy.matrix`` object (``{"include": [...]}``) per chunk; none when nothing is missing."""
        return [{"include": [job.to_json() for job in chunk]} for chunk in self.chunks]

    def to_json(self, target: str) -> dict[str, Any]:
        return {"target": target, "cells": self.total, "present": self.total - len(self.missing),
                "missing": len(self.missing), "forced": self.forced, "incomplete": list(self.incomplete),
                "jobs": len(self.jobs), "chunks": self.matrices()}


def plan(cells: Sequence[Cell], present: Collection[str], *, force: bool = False,
         chunk_size: int = MATRIX_LIMIT, incomplete: Iterable[str] = (),
         runners: Mapping[str, str] | None = None) -> Plan:
    """Group the cells whose wheel is not in ``present`` (every cell with ``force``) into build jobs.

    ``runners`` maps a wheel platform to the runner label of its jobs (``[platforms]`` of the matrix file;
    default: linux_x86_64 only). One matrix holds both platforms' jobs, each naming its runner, chunked at
    256 jobs: the shipped FA2 matrix plans far fewer jobs than that (tests/test_plan.py), and a run that had
    more builds the first chunk and leaves the rest to the next run's plan."""
    runners = dict(runners) if runners is not None else {p: v.runner for p, v in DEFAULT_PLATFORMS.items()}
    if not 1 <= chunk_size <= MATRIX_LIMIT:
        raise BadInput(f"--max-jobs {chunk_size}: must be between 1 and {MATRIX_LIMIT} "
                       "(GitHub Actions runs at most 256 jobs from one matrix)")
    missing = sorted({c for c in cells if force or c.wheel not in present},
                     key=lambda c: (c.group, c.platform, _python_key(c.python)))
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in missing:
        groups.setdefault((cell.group, cell.platform), []).append(cell)
    unknown = sorted({platform for _, platform in groups} - set(runners))
    if unknown:
        raise BadInput(f"no CI runner for platform {', '.join(unknown)}",
                       hint="add [platforms.<tag>] runner = \"…\" to the matrix file")
    jobs = tuple(Job(group, platform, tuple(members), runners[platform])
                 for (group, platform), members in groups.items())
    wanted = {c.wheel for c in missing}
    return Plan(total=len(set(cells)), missing=tuple(missing), jobs=jobs, chunk_size=chunk_size,
                incomplete=tuple(sorted(w for w in incomplete if w in wanted)), forced=force)


def _python_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


# --------------------------------------------------------------------------------------- what a mirror holds


def wheel_path(cell: Cell) -> str:
    """Where the mirror stores a cell's wheel (``wheels/<project>/<file>``, as ``publish`` writes it)."""
    return f"wheels/{canonicalize_name(cell.package)}/{cell.wheel}"


class MirrorReader(Protocol):
    """Read-only view of a mirror for planning: names of stored wheels, and small files beside them."""

    description: str

    def wheel_names(self, project: str) -> set[str]:
        """Mirror paths (``wheels/<project>/<file>.whl``) of the project's stored wheels."""
        ...

    def read(self, name: str) -> bytes | None:
        """A small file (a ``.audit.json`` / ``.gpu.json``), or None when the mirror has no such file."""
        ...


@dataclass(frozen=True)
class Holding:
    present: frozenset[str]  # wheel file names that count as present
    incomplete: dict[str, str] = field(default_factory=dict)  # stored wheel file → why it does not count


def _passed(data: bytes | None) -> bool | None:
    """True/False from a result file's ``passed``; None when there is no (readable) result."""
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return doc.get("passed") is True if isinstance(doc, dict) else False


def _verdict(path: str, reader: MirrorReader, require_gpu: bool) -> str | None:  # require_gpu: for this wheel
    """None when the stored wheel at ``path`` counts as present, else the reason it does not."""
    checks = [(AUDIT, "audit")] + ([(GPU, "GPU test")] if require_gpu else [])
    for suffix, what in checks:
        passed = _passed(reader.read(path + suffix))
        if passed is None:
            return f"no {what} result ({suffix} missing)"
        if not passed:
            return f"the {what} did not pass ({suffix})"
    return None


def holding(cells: Iterable[Cell], reader: MirrorReader, *, require_gpu: bool = False,
            gpu_untested: Sequence[str] = ()) -> Holding:
    """Which of the cells' wheels the mirror holds, complete with passing results (a GPU result too with
    ``require_gpu``, except for wheels of the ``gpu_untested`` architectures: publish's rule)."""
    from .publish import gpu_exempt

    by_path = {wheel_path(c): c.wheel for c in cells}
    stored: set[str] = set()
    for project in sorted({p.split("/")[1] for p in by_path}):
        stored |= reader.wheel_names(project)
    candidates = sorted(set(by_path) & stored)
    with concurrent.futures.ThreadPoolExecutor(max_workers=READERS) as pool:
        verdicts = dict(zip(candidates, pool.map(
            lambda p: _verdict(p, reader, require_gpu and not gpu_exempt(p, gpu_untested)), candidates), strict=True))
    present = frozenset(by_path[p] for p, v in verdicts.items() if v is None)
    incomplete = {by_path[p]: v for p, v in verdicts.items() if v is not None}
    return Holding(present, incomplete)


class StoreReader:
    """A mirror read through the store layer: one listing per project, result files only where listed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.description = store.description
        self._listed: set[str] = set()

    def wheel_names(self, project: str) -> set[str]:
        names = set(self.store.list_files(f"wheels/{project}/"))
        self._listed |= names
        return {n for n in names if n.endswith(".whl")}

    def read(self, name: str) -> bytes | None:
        return self.store.get(name) if name in self._listed else None


class HttpReader:
    """A served mirror (``https://host/prefix``): the PEP 503 project pages list the wheels, whose result files
    lie beside them (relative links inside the mirror, or absolute links such as GitHub release assets)."""

    def __init__(self, url: str, *, timeout: float = 30, retry: RetryPolicy | None = None) -> None:
        self.base = url.rstrip("/") + "/"
        self.description = url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy.from_env()
        self._urls: dict[str, str] = {}  # mirror path of a wheel → its URL (without the #sha256 fragment)

    def _get(self, url: str) -> bytes | None:
        def attempt() -> bytes | None:
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as reply:  # http(s) only: open_reader
                    return bytes(reply.read())
            except urllib.error.HTTPError as exc:
                if exc.code in (403, 404):  # S3 answers 403 for a missing key without list permission
                    return None
                raise

        return with_retries(f"GET {url}", attempt, self.retry, _transient_http)

    def wheel_names(self, project: str) -> set[str]:
        found = mirror_read.project_wheels(self.base, project, self._get) or {}
        names = set()
        for file, url in found.items():
            name = f"wheels/{project}/{file}"
            self._urls[name] = url
            names.add(name)
        return names

    def read(self, name: str) -> bytes | None:
        wheel = name[:name.find(".whl") + 4] if ".whl" in name else name
        url = self._urls.get(wheel)
        if url is not None:  # beside the wheel's link target, wherever that is
            return self._get(url + name[len(wheel):])
        return self._get(urllib.parse.urljoin(self.base, urllib.parse.quote(name)))


def _transient_http(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code == 429
    return isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError))


def open_reader(target: str, open_store: Callable[[str], Store]) -> MirrorReader:
    """``http(s)://`` → a served mirror; anything else → the store layer (``open_store(target)``)."""
    if target.startswith(("http://", "https://")):
        return HttpReader(target)
    return StoreReader(open_store(target))


def plan_against(cells: Sequence[Cell], reader: MirrorReader | None, *, force: bool = False,
                 require_gpu: bool = False, gpu_untested: Sequence[str] = (), chunk_size: int = MATRIX_LIMIT,
                 runners: Mapping[str, str] | None = None) -> tuple[Plan, float]:
    """Read the mirror (not at all with ``force``) and plan; returns the plan and the seconds it took."""
    start = time.monotonic()
    held = (Holding(frozenset()) if force or reader is None
            else holding(cells, reader, require_gpu=require_gpu, gpu_untested=gpu_untested))
    result = plan(cells, held.present, force=force, chunk_size=chunk_size, incomplete=held.incomplete,
                  runners=runners)
    return result, time.monotonic() - start
