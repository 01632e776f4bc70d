"""Index pages as pure functions of the index state: PEP 503 HTML, PEP 658/714 attributes, PEP 691 JSON."""

from __future__ import annotations

import html.parser
import json
import posixpath
import urllib.parse

from wheelfarm.index import Entry, State, build_pages, href

CU12 = "flash_attn-2.8.3.post2+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"
CU13 = "flash_attn-2.8.3.post2+cu13torch2.14cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"
PLAIN = "einops_stub-0.1-py3-none-any.whl"


def entry(file: str, variant: str, **kw: object) -> Entry:
    project = "flash-attn" if file.startswith("flash") else "einops-stub"
    return Entry(
        file=file,
        project=project,
        sha256="a" * 64,
        requires_python=">=3.9,<4",
        variant=variant,
        metadata_sha256="b" * 64,
        size=123,
        **kw,
    )  # type: ignore[arg-type]


ENTRIES = [
    entry(CU12, "cu12torch2.8cxx11abiTRUE"),
    entry(CU13, "cu13torch2.14cxx11abiTRUE"),
    entry(PLAIN, ""),
]


class Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(dict(attrs))


def anchors(page: bytes) -> list[dict[str, str | None]]:
    p = Anchors()
    p.feed(page.decode())
    return p.anchors


def test_page_set_global_and_per_variant() -> None:
    pages = build_pages(ENTRIES)
    assert set(pages) == {
        "index.html",
        "probe.py",
        "simple/index.html",
        "simple/index.json",
        "simple/flash-attn/index.html",
        "simple/flash-attn/index.json",
        "simple/einops-stub/index.html",
        "simple/einops-stub/index.json",
        "cu12torch2.8cxx11abiTRUE/simple/index.html",
        "cu12torch2.8cxx11abiTRUE/simple/index.json",
        "cu12torch2.8cxx11abiTRUE/simple/flash-attn/index.html",
        "cu12torch2.8cxx11abiTRUE/simple/flash-attn/index.json",
        "cu13torch2.14cxx11abiTRUE/simple/index.html",
        "cu13torch2.14cxx11abiTRUE/simple/index.json",
        "cu13torch2.14cxx11abiTRUE/simple/flash-attn/index.html",
        "cu13torch2.14cxx11abiTRUE/simple/flash-attn/index.json",
    }
    variant = anchors(pages["cu12torch2.8cxx11abiTRUE/simple/flash-attn/index.html"])
    assert [a["href"].split("#")[0].rsplit("/", 1)[-1] for a in variant] == [urllib.parse.quote(CU12)]  # type: ignore[union-attr]
    assert [a["href"] for a in anchors(pages["simple/index.html"])] == ["einops-stub/", "flash-attn/"]


def test_the_global_index_lists_only_unlabelled_wheels_and_links_the_variants() -> None:
    """The global rule (index.py): a wheel built for one torch/CUDA/ABI is never a file of simple/<project>/, whose
    page sends people to the variant pages instead; a wheel without a label stays."""
    pages = build_pages(ENTRIES)
    hrefs = [a["href"] or "" for a in anchors(pages["simple/flash-attn/index.html"])]
    assert hrefs == ["../../cu12torch2.8cxx11abiTRUE/simple/flash-attn/",
                     "../../cu13torch2.14cxx11abiTRUE/simple/flash-attn/"]
    assert b"lists no wheel built for one torch/CUDA/C++ ABI" in pages["simple/flash-attn/index.html"]
    assert json.loads(pages["simple/flash-attn/index.json"])["files"] == []
    (plain,) = anchors(pages["simple/einops-stub/index.html"])
    assert (plain["href"] or "").split("#")[0].endswith(PLAIN)
    assert b"lists no wheel" not in pages["simple/einops-stub/index.html"]


def test_links_carry_hash_metadata_and_escaped_requires_python() -> None:
    page = build_pages(ENTRIES)["cu12torch2.8cxx11abiTRUE/simple/flash-attn/index.html"]
    assert b'data-requires-python="&gt;=3.9,&lt;4"' in page
    (a,) = anchors(page)
    assert a["href"] and a["href"].endswith("#sha256=" + "a" * 64)
    assert a["data-dist-info-metadata"] == a["data-core-metadata"] == "sha256=" + "b" * 64
    assert a["data-requires-python"] == ">=3.9,<4"


def test_relative_links_resolve_to_the_wheel_from_every_page() -> None:
    pages = build_pages(ENTRIES)
    for page in ("cu12torch2.8cxx11abiTRUE/simple/flash-attn/index.html",
                 "cu13torch2.14cxx11abiTRUE/simple/flash-attn/index.html"):
        for a in anchors(pages[page]):
            base = "https://mirror.example/root/" + page
            url = urllib.parse.urljoin(base, a["href"] or "")
            path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
            assert path.startswith("/root/wheels/flash-attn/flash_attn-")
            assert "%2B" in (a["href"] or "")  # '+' is encoded: S3 would read a bare '+' as a space


def test_absolute_urls_for_release_assets() -> None:
    url = "https://github.com/acme/wheels/releases/download/v1/" + CU12
    e = entry(CU12, "cu12torch2.8cxx11abiTRUE", url=url)
    assert href(e, "simple/flash-attn/index.html") == url
    (a,) = anchors(build_pages([e])["cu12torch2.8cxx11abiTRUE/simple/flash-attn/index.html"])
    assert a["href"] == f"{url}#sha256={'a' * 64}"


def test_pep691_json() -> None:
    doc = json.loads(build_pages(ENTRIES)["cu12torch2.8cxx11abiTRUE/simple/flash-attn/index.json"])
    assert doc["meta"] == {"api-version": "1.1"}
    assert doc["name"] == "flash-attn"
    assert doc["versions"] == ["2.8.3.post2+cu12torch2.8cxx11abitrue"]
    f = doc["files"][0]
    assert f["hashes"] == {"sha256": "a" * 64} and f["core-metadata"] == {"sha256": "b" * 64}
    assert f["requires-python"] == ">=3.9,<4" and f["size"] == 123
    joined = posixpath.normpath(posixpath.join("cu12torch2.8cxx11abiTRUE/simple/flash-attn",
                                               urllib.parse.unquote(f["url"])))
    assert joined == "wheels/flash-attn/" + CU12


def test_pages_are_deterministic_and_empty_state_is_valid() -> None:
    assert build_pages(ENTRIES) == build_pages(list(reversed(ENTRIES)))
    empty = build_pages([])
    assert set(empty) == {"index.html", "probe.py", "simple/index.html", "simple/index.json"}


def test_state_roundtrip_and_replacement_log() -> None:
    from wheelfarm.index import Replacement

    state = State()
    for e in ENTRIES:
        state = state.with_entry(e)
    state = state.with_replacement(Replacement(CU12, "0" * 64, "a" * 64, "2026-01-01T00:00:00+00:00"))
    again = State.from_bytes(state.to_bytes())
    assert again == state
    assert [e.file for e in again.entries] == sorted(e.file for e in ENTRIES)
    assert again.with_entry(ENTRIES[0]) == again  # re-adding is a no-op
    assert State.from_bytes(None) == State()
