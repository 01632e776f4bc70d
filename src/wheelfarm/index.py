"""The mirror's index: the index state (what is published) and the pages computed from it, whole.

Pure functions only. ``build_pages(entries)`` returns ``{mirror path: bytes}``:

- ``<variant>/simple/...`` per local version label (``cu12torch2.8cxx11abiTRUE``): only that variant's files
  (``answers.py`` prints the lines that use it as an extra index with the whole version pinned);
- ``simple/index.html`` and ``simple/<project>/index.html`` (PEP 503), the **global index**, which lists only the
  wheels without a local label (one build per release and tag: nothing for an installer to choose wrongly between;
  the farm names every torch-extension wheel with a label). A labelled wheel (built for one torch × CUDA × C++
  ABI) is never a file there: pip and uv rank local labels by string, so a global page listing every
  variant hands an arbitrary one (a wrong ABI) to whoever points at it. Its project page links the variant pages
  instead (links pip and uv skip: they are not distribution files) and says to use one, or ``wheelfarm resolve``;
- ``index.json`` beside each page (PEP 691 JSON, api-version 1.1) for tools that read it; static hosts cannot
  negotiate content types, so pip reads the HTML;
- ``index.html`` at the root: the browsable home page (``home_page.py``), ``probe.py`` beside it.

Links carry ``#sha256=``, ``data-requires-python`` (HTML-escaped) and ``data-dist-info-metadata`` /
``data-core-metadata`` (PEP 658/714; the file is ``<wheel URL>.metadata``). They are relative
(``../../wheels/<project>/<file>``, works for file://, any static HTTP server and S3) unless an entry has an
absolute ``url`` (GitHub release assets).
"""

from __future__ import annotations

import html
import json
import posixpath
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from packaging.utils import canonicalize_name, parse_wheel_filename

from .errors import PublishFailed
from .store import STATE_NAME

STATE_FORMAT = 1
_VARIANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.]*$")


@dataclass(frozen=True)
class Entry:
    """One published wheel, as recorded in the index state."""

    file: str
    project: str  # PEP 503 normalized
    sha256: str
    requires_python: str | None
    variant: str  # the local version label ("" for wheels without one)
    metadata_sha256: str | None
    size: int | None = None
    url: str | None = None  # absolute link (GitHub assets); None: relative to the mirror root
    key: str | None = None  # where the bytes are when not at wheels/<project>/<file> (a --replace: publish.py)
    gpu_code: tuple[str, ...] | None = None  # the SASS/PTX archs its audit listed (the home page's GPU filter)

    @property
    def path(self) -> str:
        return self.key or f"wheels/{self.project}/{self.file}"

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Entry:
        return cls(
            file=str(raw["file"]),
            project=canonicalize_name(str(raw["project"])),
            sha256=str(raw["sha256"]),
            requires_python=raw.get("requires_python"),
            variant=str(raw.get("variant", "")),
            metadata_sha256=raw.get("metadata_sha256"),
            size=raw.get("size"),
            url=raw.get("url"),
            key=raw.get("key"),
            gpu_code=tuple(map(str, raw["gpu_code"])) if raw.get("gpu_code") else None,
        )


@dataclass(frozen=True)
class Replacement:
    file: str
    old_sha256: str
    new_sha256: str
    at: str


@dataclass(frozen=True)
class State:
    """The index state object: published entries (sorted by file) and the ``--replace`` log."""

    entries: tuple[Entry, ...] = ()
    replaced: tuple[Replacement, ...] = field(default=())

    def get(self, file: str) -> Entry | None:
        return next((e for e in self.entries if e.file == file), None)

    def with_entry(self, entry: Entry) -> State:
        others = [e for e in self.entries if e.file != entry.file]
        return replace(self, entries=tuple(sorted([*others, entry], key=lambda e: e.file)))

    def without(self, files: Iterable[str]) -> State:
        drop = set(files)
        return replace(self, entries=tuple(e for e in self.entries if e.file not in drop))

    def with_replacement(self, rep: Replacement) -> State:
        return replace(self, replaced=(*self.replaced, rep))

    def to_bytes(self) -> bytes:
        doc = {
            "format": STATE_FORMAT,
            "entries": [_compact(asdict(e)) for e in self.entries],
            "replaced": [asdict(r) for r in self.replaced],
        }
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes | None) -> State:
        if not data:
            return cls()
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise PublishFailed(f"the mirror's {STATE_NAME} is corrupt ({exc}); nothing was changed",
                                hint="restore it, or move it away and run `wheelfarm index --rescan` to rebuild "
                                     "it from the stored wheels") from exc
        return cls(
            entries=tuple(Entry.from_json(e) for e in doc.get("entries", [])),
            replaced=tuple(Replacement(**r) for r in doc.get("replaced", [])),
        )


def _compact(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


# ------------------------------------------------------------------------------------------------- pages


def build_pages(entries: Sequence[Entry]) -> dict[str, bytes]:
    """Every index page of the mirror, from the entries alone."""
    from . import home_page  # the home page reads wheel names through naming: import it only here

    pages: dict[str, bytes] = {}
    pages.update(_simple_tree("simple", entries, global_index=True))
    variants = sorted({e.variant for e in entries if e.variant})
    for variant in variants:
        if not _VARIANT_RE.match(variant):
            raise ValueError(f"variant label {variant!r} is not a safe directory name")
        pages.update(_simple_tree(f"{variant}/simple", [e for e in entries if e.variant == variant]))
    pages["index.html"] = home_page.render(entries)
    pages[PROBE_PAGE] = home_page.probe_bytes()
    return pages


PROBE_PAGE = "probe.py"
GLOBAL_NOTE = (
    "This global index lists no wheel built for one torch/CUDA/C++ ABI: installing from here could pick the wrong "
    "one. Use the variant index that fits your environment (below, or the mirror's home page), or run "
    "`wheelfarm resolve --index-url <mirror>`."
)


def _simple_tree(root: str, entries: Sequence[Entry], *, global_index: bool = False) -> dict[str, bytes]:
    by_project: dict[str, list[Entry]] = {}
    for e in entries:
        by_project.setdefault(e.project, []).append(e)
    projects = sorted(by_project)
    out = {
        f"{root}/index.html": _page("Simple index", [_anchor(f"{p}/", p) for p in projects]),
        f"{root}/index.json": _json(
            {"meta": {"api-version": "1.1"}, "projects": [{"name": p} for p in projects]}
        ),
    }
    for project, files in by_project.items():
        page = f"{root}/{project}/index.html"
        files = sorted(files, key=lambda e: e.file)
        safe = [e for e in files if not (global_index and e.variant)]
        anchors = [_file_anchor(e, page) for e in safe]
        note = ""
        if len(safe) < len(files):
            labels = sorted({e.variant for e in files if e.variant})
            anchors += [_anchor(f"../../{v}/simple/{project}/", f"{v}/simple/{project}/") for v in labels]
            note = GLOBAL_NOTE
        out[page] = _page(f"Links for {project}", anchors, note=note)
        out[f"{root}/{project}/index.json"] = _json(_project_json(project, safe, page))
    return out


def href(entry: Entry, page: str) -> str:
    """The link from ``page`` (a mirror path) to the entry's wheel, without fragment."""
    if entry.url:
        return entry.url
    rel = posixpath.relpath(entry.path, posixpath.dirname(page))
    return urllib.parse.quote(rel, safe="/")


def _file_anchor(e: Entry, page: str) -> str:
    attrs = ""
    if e.requires_python:
        attrs += f' data-requires-python="{html.escape(e.requires_python)}"'
    if e.metadata_sha256:
        attrs += f' data-dist-info-metadata="sha256={e.metadata_sha256}"'
        attrs += f' data-core-metadata="sha256={e.metadata_sha256}"'
    url = html.escape(f"{href(e, page)}#sha256={e.sha256}")
    return f'<a href="{url}"{attrs}>{html.escape(e.file)}</a>'


def _anchor(url: str, text: str) -> str:
    return f'<a href="{html.escape(url)}">{html.escape(text)}</a>'


def _page(title: str, anchors: list[str], *, note: str = "") -> bytes:
    body = "\n".join(f"    {a}<br/>" for a in anchors)
    para = f"    <p>{html.escape(note)}</p>\n" if note else ""
    return (
        f'<!DOCTYPE html>\n<html>\n  <head>\n    <meta name="pypi:repository-version" content="1.1">\n'
        f"    <title>{html.escape(title)}</title>\n  </head>\n  <body>\n    <h1>{html.escape(title)}</h1>\n"
        f"{para}{body}\n  </body>\n</html>\n"
    ).encode()


def _project_json(project: str, files: Sequence[Entry], page: str) -> dict[str, Any]:
    def one(e: Entry) -> dict[str, Any]:
        meta: dict[str, str] | bool = {"sha256": e.metadata_sha256} if e.metadata_sha256 else False
        d: dict[str, Any] = {
            "filename": e.file,
            "url": href(e, page),
            "hashes": {"sha256": e.sha256},
            "core-metadata": meta,
            "dist-info-metadata": meta,
        }
        if e.requires_python:
            d["requires-python"] = e.requires_python
        if e.size is not None:
            d["size"] = e.size
        return d

    versions = sorted({str(parse_wheel_filename(e.file)[1]) for e in files})
    return {
        "meta": {"api-version": "1.1"},
        "name": project,
        "versions": versions,
        "files": [one(e) for e in files],
    }


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def content_type(path: str) -> str:
    """What a store labels a page with (S3 serves objects with their stored type: the JSON pages say PEP 691's)."""
    if path.endswith("index.json"):
        return "application/vnd.pypi.simple.v1+json"
    if path.endswith(".py"):
        return "text/x-python; charset=utf-8"
    return "application/json" if path.endswith(".json") else "text/html; charset=utf-8"
