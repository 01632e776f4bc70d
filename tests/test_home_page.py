"""The mirror's home page in a real browser (headless Chromium, tests/browser.py): the pickers filter the wheels
with JavaScript off (CSS only), the script fills in the mirror's address, and the screenshot is a rendered page that
changes with the choice. ``WHEELFARM_HOME_SCREENSHOT=docs/mirror-home.png`` keeps the filtered screenshot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from browser import CHROMIUM, Browser, png_facts
from farmtest import need
from test_consumer_env import write_mirror

FILES = [
    "flash_attn-2.8.3.post2+cu12torch2.6cxx11abiFALSE-cp311-cp311-manylinux_2_24_x86_64.whl",
    "flash_attn-2.8.3.post2+cu12torch2.8cxx11abiTRUE-cp312-cp312-manylinux_2_24_x86_64.whl",
    "flash_attn-2.8.3.post2+cu13torch2.11cxx11abiTRUE-cp312-cp312-manylinux_2_24_x86_64.whl",
    "flash_attn-2.8.3.post2+cu13torch2.11cxx11abiTRUE.sm90-cp312-cp312-manylinux_2_24_x86_64.whl",
    "flash_attn-2.8.3.post2+cu13torch2.14cxx11abiTRUE-cp311-cp311-manylinux_2_24_x86_64.whl",
]
VISIBLE = ("[...document.querySelectorAll('tr.w')].filter(r => getComputedStyle(r).display !== 'none')"
           ".map(r => r.dataset.file)")


def choose(b: Browser, **choice: str) -> None:
    """What a person does with the pickers (set the option; fire `change` as the browser would)."""
    for axis, value in choice.items():
        b.evaluate(f"(s => {{ s.value = {value!r}; s.dispatchEvent(new Event('change')); }})"
                   f"(document.getElementById('f-{axis}'))")


@pytest.fixture
def page(tmp_path: Path) -> str:
    need(CHROMIUM is not None, "chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return (write_mirror(tmp_path / "mirror", FILES) / "index.html").as_uri()


def test_the_pickers_filter_without_javascript(page: str, tmp_path: Path) -> None:
    with Browser() as b:
        b.open(page, javascript=False)
        assert sorted(b.evaluate(VISIBLE)) == sorted(FILES)
        choose(b, torch="2.11", gpu="sm89")  # an L4: the sm90-only variant does not run there
        assert b.evaluate(VISIBLE) == [FILES[2]]
        assert "$MIRROR/cu13torch2.11cxx11abiTRUE/simple/" in b.evaluate(
            "document.querySelector(`tr[data-file='${CSS.escape(" + repr(FILES[2]) + ")}'] code`).textContent")
        choose(b, gpu="sm90")
        assert sorted(b.evaluate(VISIBLE)) == sorted(FILES[2:4])
        assert b.evaluate("getComputedStyle(document.getElementById('unsupported')).display") == "none"
        choose(b, torch="", gpu="sm75")  # a T4: nothing runs, and the page says why
        assert b.evaluate(VISIBLE) == []
        assert b.evaluate("getComputedStyle(document.getElementById('unsupported')).display") == "block"


def test_the_script_fills_in_the_mirror_and_counts(page: str) -> None:
    with Browser() as b:
        b.open(page, javascript=True)
        choose(b, python="3.11", abi="FALSE")
        assert b.evaluate(VISIBLE) == [FILES[0]]
        assert b.evaluate("document.getElementById('count').textContent") == "1 wheel fits"
        base = page.removesuffix("/index.html")
        line = b.evaluate("[...document.querySelectorAll('tr.w code')].map(c => c.textContent)[0]")
        assert line == (f"pip install 'flash-attn==2.8.3.post2+cu12torch2.6cxx11abiFALSE' "
                        f"--extra-index-url {base}/cu12torch2.6cxx11abiFALSE/simple/")
        choose(b, torch="2.14")
        assert b.evaluate("document.getElementById('count').textContent").startswith("0 wheels fit: none")


def test_screenshot_is_a_rendered_page_that_follows_the_choice(page: str, tmp_path: Path) -> None:
    with Browser() as b:
        b.open(page, javascript=True)
        everything = b.screenshot(tmp_path / "all.png")
        tall = b.evaluate("document.documentElement.scrollHeight")
        choose(b, torch="2.11", python="3.12", gpu="sm90")
        filtered = b.screenshot(tmp_path / "filtered.png")
        assert b.evaluate("document.documentElement.scrollHeight") < tall  # three rows fewer: a shorter page
    width, height, shades = png_facts(everything)
    assert width >= 1000 and height >= 400 and shades > 16  # text, tables and colours, not a blank frame
    assert everything.read_bytes() != filtered.read_bytes()
    if keep := os.environ.get("WHEELFARM_HOME_SCREENSHOT"):
        shutil.copyfile(filtered, keep)


def test_the_gpu_filter_follows_the_audited_gpu_code() -> None:
    """A variant whose name says nothing of its archs (sm90lite) is offered only where its audited code runs."""
    from wheelfarm.home_page import render
    from wheelfarm.index import Entry

    lite = FILES[3].replace(".sm90-", ".sm90lite-")
    page = render([Entry(lite, "flash-attn", "0" * 64, None, "cu13torch2.11cxx11abiTRUE.sm90lite", None,
                         gpu_code=("sm_90",)),
                   Entry(FILES[2], "flash-attn", "0" * 64, None, "cu13torch2.11cxx11abiTRUE", None,
                         gpu_code=("sm_80", "sm_90", "sm_100", "sm_120", "compute_120"))]).decode()
    assert f'data-gpu="sm90" data-platform="manylinux_2_24_x86_64" data-variant="sm90lite" data-file="{lite}"' in page
    assert 'data-gpu="sm80 sm86 sm89 sm90 sm100 sm103 sm120 sm121"' in page
