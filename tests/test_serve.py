"""PEP 691 for real: `wheelfarm serve` negotiates JSON or HTML per request, and pip and uv use the JSON API.

Real parts: a real local mirror (publish), the real server as a subprocess on 127.0.0.1, real pip and uv
installing into fresh venvs; the wheel is the small pure-Python stand-in of wheelgen.py (its payload is not the
point, the index API is).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import venv
from pathlib import Path

import pytest

from farmtest import need
from test_consumers import UV, installer_env
from test_faults import row, table  # noqa: F401 (fixtures: the shared fault table)
from wheelfarm import cli
from wheelfarm.serve import HTML_V1, JSON, negotiate
from wheelgen import make_wheel, write_result

LABEL = "cu13torch2.14cxx11abiTRUE"


@pytest.mark.parametrize(("accept", "want"), [
    (None, "text/html"),
    ("", "text/html"),
    ("*/*", JSON),
    (f"{JSON}, {HTML_V1};q=0.1, text/html;q=0.01", JSON),  # what pip sends
    (f"{JSON};q=0.2, text/html;q=0.9", "text/html"),
    (f"{HTML_V1}", HTML_V1),
    ("text/*;q=0.5", "text/html"),
    ("application/json", None),
    (f"{JSON};q=0", None),
    (f"{JSON};q=0, */*", HTML_V1),  # an explicit q=0 beats the wildcard (RFC 9110: the most specific range)
])
def test_negotiation_follows_pep_691(accept, want):
    assert negotiate(accept) == want


@pytest.fixture
def served(tmp_path: Path):
    wheel = make_wheel(tmp_path / "w", "fixture-attn", f"0.1.0+{LABEL}")
    write_result(wheel, ".audit.json", True)
    mirror = tmp_path / "mirror"
    assert cli.main(["publish", str(wheel), "--to", str(mirror)]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "wheelfarm", "serve", str(mirror), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    try:
        yield url.rstrip("/"), proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _get(url: str, accept: str | None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), b""


def test_the_same_url_serves_json_or_html_by_accept(row, served):  # noqa: F811
    r = row("PEP 691 from the local mirror (`wheelfarm serve`): one project URL, asked for JSON, HTML, text/plain",
            "JSON (application/vnd.pypi.simple.v1+json) with the sha256, HTML, 406")
    base, _ = served
    page = f"{base}/{LABEL}/simple/fixture-attn/"
    status, ctype, body = _get(page, JSON)
    assert (status, ctype) == (200, JSON)
    files = json.loads(body)["files"]
    assert len(files) == 1 and files[0]["hashes"]["sha256"] and files[0]["filename"].endswith(".whl")
    status, ctype, body = _get(page, None)
    assert status == 200 and ctype.startswith("text/html") and b"#sha256=" in body
    assert _get(page, "text/plain")[0] == 406
    status, ctype, body = _get(f"{base}/", JSON)  # the home page has no JSON form: HTML, not a dropped connection
    assert status == 200 and ctype.startswith("text/html") and b"simple/" in body
    r.done("JSON 200 (1 file, sha256), HTML 200, 406; the home page HTML even when JSON is preferred")


def _fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(path)
    return path / "bin" / "python"


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_pip_and_uv_install_through_the_json_api(row, served, tmp_path, installer):  # noqa: F811
    r = row(f"{installer} install from the served variant index", "installed; the server answered it with JSON")
    if installer == "uv":
        need(UV, "uv is not installed (pip install uv; .ci/run installs it)")
    base, proc = served
    python = _fresh_venv(tmp_path / "venv")
    index = f"{base}/{LABEL}/simple"
    cmd = ([str(python), "-m", "pip", "install", "--no-cache-dir", "--index-url", index] if installer == "pip"
           else [str(UV), "pip", "install", "--no-cache", "--python", str(python), "--index-url", index])
    done = subprocess.run([*cmd, f"fixture-attn==0.1.0+{LABEL}"], capture_output=True, text=True,
                          env=installer_env(), timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    shown = subprocess.run([str(python), "-c", "import fixture_attn; print(fixture_attn.__version__)"],
                           capture_output=True, text=True)
    assert shown.stdout.strip() == f"0.1.0+{LABEL}"
    proc.terminate()
    log = proc.communicate(timeout=10)[1]
    time.sleep(0.1)
    answered = [ln for ln in log.splitlines() if "/fixture-attn/" in ln and "->" in ln]
    assert answered and all(ln.endswith(JSON) for ln in answered), log[-2000:]
    r.done(f"installed; {len(answered)} project page request(s), all answered with JSON")
