"""Hostile and broken wheels against the mirror (issue "mirror integrity"): each is refused before anything is
written, with the cause named and the exit code of its kind (2 bad input, 1 a refused publish), and each adds a
row to the fault table printed by the suite (tests/test_faults.py owns the table).

Real parts: real zip files written on the fly (wheelgen.py, then damaged the way a truncated download, a tampered
member or a zip bomb would be), the real CLI, the real local store; nothing is mocked.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from test_faults import row, table  # noqa: F401 (fixtures: the shared fault table)
from test_store_github import gh  # noqa: F401 (fixture: the GitHub releases stand-in)
from test_store_s3 import make_bucket, moto_endpoint, s3_env  # noqa: F401 (fixtures: moto's S3 server)
from wheelfarm import cli
from wheelgen import make_wheel, write_result

PY = dict(python_tag="py3", platform="any")


def _audited(path: Path) -> Path:
    write_result(path, ".audit.json", True)
    return path


def _renamed(src: Path, name: str) -> Path:
    """The same bytes under another file name (the dist-info inside keeps its own)."""
    dest = src.parent / "renamed" / name
    dest.parent.mkdir(exist_ok=True)
    shutil.copyfile(src, dest)
    return _audited(dest)


def _rewritten(src: Path, change: Callable[[str, bytes], bytes], name: str | None = None) -> Path:
    """Rewrite every member through ``change(member name, data)``, RECORD left as it was."""
    dest = src.parent / "rewritten" / (name or src.name)
    dest.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info, change(info.filename, zin.read(info)))
    return _audited(dest)


def _published(mirror: Path) -> list[str]:
    folder = mirror / "wheels"
    return sorted(p.name for p in folder.rglob("*.whl")) if folder.exists() else []


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The CLI's exit code and its error, from "wheelfarm:" on (the progress lines before it left out)."""
    code = cli.main(list(args))
    err = " ".join(capsys.readouterr().err.split())
    return code, err[err.find("wheelfarm:"):] if "wheelfarm:" in err else err


def _publish(wheel: Path, mirror: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    return _cli(capsys, "publish", str(wheel), "--to", str(mirror))


# ------------------------------------------------------------------------------- identity (defect 1)


@pytest.mark.parametrize(("name", "code", "said"), [
    ("Flash.Attn-2.0-py3-py3-any.whl", 2, "not in normalized form"),
    ("FLASH_ATTN-2.0-py3-py3-any.whl", 2, "not in normalized form"),
    ("flash_attn-2.00-py3-py3-any.whl", 2, "not in normalized form"),
    ("flash_attn-v2.0-py3-py3-any.whl", 2, "not in normalized form"),
    ("flash_attn-2.0.0-py3-py3-any.whl", 1, "is the same release"),
])
def test_another_spelling_of_a_published_release_is_refused(row, tmp_path, capsys, name, code, said):  # noqa: F811
    r = row(f"publish {name} after flash_attn-2.0-py3-py3-any.whl (other bytes)",
            f"exit {code}: {said}; simple/flash-attn/ still lists one file")
    mirror = tmp_path / "mirror"
    first = _audited(make_wheel(tmp_path / "a", "flash-attn", "2.0", **PY))
    assert _publish(first, mirror, capsys)[0] == 0
    other = make_wheel(tmp_path / "b", "flash-attn", "2.0.0" if "2.0.0" in name else "2.0", salt="impostor", **PY)
    got, err = _publish(_renamed(other, name), mirror, capsys)
    assert (got, said in err) == (code, True), err
    assert _published(mirror) == [first.name]
    page = (mirror / "simple/flash-attn/index.html").read_text()
    assert page.count(".whl#sha256=") == 1 and first.name in page
    r.done(f"exit {got}: \"{err[:110]}…\"; 1 file listed")


# ------------------------------------------------------------------------- labels (defects 3 and 8)


def test_a_label_that_pep440_normalizes_is_refused_and_the_index_stays_usable(row, tmp_path, capsys):  # noqa: F811
    r = row("a local label with '_' (1.0+cu12_torch28: valid PEP 440, normalized to cu12.torch28)",
            "exit 2 (not in normalized form) before the state changes; later publishes and `index` still work")
    mirror = tmp_path / "mirror"
    odd = _renamed(make_wheel(tmp_path / "a", "fixture-attn", "1.0+cu12.torch28", **PY),
                   "fixture_attn-1.0+cu12_torch28-py3-py3-any.whl")
    got, err = _publish(odd, mirror, capsys)
    assert got == 2 and "not in normalized form" in err and "1.0+cu12.torch28" in err, err
    fine = _audited(make_wheel(tmp_path / "b", "fixture-attn", "1.0+cu12.torch28", **PY))
    assert _publish(fine, mirror, capsys)[0] == 0
    assert cli.main(["index", "--to", str(mirror)]) == 0
    assert (mirror / "cu12.torch28/simple/fixture-attn/index.html").is_file()
    r.done(f"exit 2: \"{err[:90]}…\"; the normalized wheel then published and indexed")


@pytest.mark.parametrize("label", ["simple", "index.html"])
def test_a_label_named_like_a_mirror_folder_is_refused(row, tmp_path, capsys, label):  # noqa: F811
    r = row(f"local label {label!r} (its variant folder would be {label}/ at the mirror's top level)",
            "exit 2, nothing written")
    got, err = _publish(_audited(make_wheel(tmp_path, "fixture-attn", f"1.0+{label}", **PY)), tmp_path / "m", capsys)
    assert got == 2 and "folder of the mirror" in err, err
    assert not (tmp_path / "m").exists()
    r.done(f"exit 2: \"{err[:80]}…\"")


# ---------------------------------------------------------------------------------- bad input (defect 4)


def _empty(w: Path) -> Path:
    w.write_bytes(b"")
    return w


def _truncated(w: Path) -> Path:
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return w


def _not_a_zip(w: Path) -> Path:
    w.write_text("<html>404 Not Found</html>\n")
    return w


def _bad_crc(w: Path) -> Path:
    """One byte of a member's stored (uncompressed) data flipped: only its CRC can tell."""
    data = bytearray(w.read_bytes())
    at = data.index(b"Pure-Python stand-in payload")
    data[at] ^= 0x20
    w.write_bytes(bytes(data))
    return w


def _stored(w: Path) -> Path:
    """The same wheel with ZIP_STORED members (so _bad_crc finds the payload's bytes)."""
    with zipfile.ZipFile(w) as zin:
        members = [(i, zin.read(i)) for i in zin.infolist()]
    with zipfile.ZipFile(w, "w", zipfile.ZIP_STORED) as zout:
        for info, data in members:
            info.compress_type = zipfile.ZIP_STORED
            zout.writestr(info, data)
    return w


def _bad_deflate(w: Path) -> Path:
    """Bytes in the middle of a compressed member overwritten: zlib fails (or the CRC does), never a traceback."""
    with zipfile.ZipFile(w) as zf:
        info = max(zf.infolist(), key=lambda i: i.compress_size)
    data = bytearray(w.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 2: start + 2 + 8] = b"\xff" * 8
    w.write_bytes(bytes(data))
    return w


def _record_mismatch(w: Path) -> Path:
    return _rewritten(w, lambda name, data: data.replace(b"stand-in payload", b"swapped payload!") if
                      name.endswith("__init__.py") else data)


def _other_project(w: Path) -> Path:
    other = make_wheel(w.parent / "other", "other-project", "0.1.0", **PY)
    return _renamed(other, w.name)


def _zip_bomb(w: Path) -> Path:
    """A 64 MiB member of zeros in ~64 KB: refused from the zip headers, before anything is inflated."""
    def change(name: str, data: bytes) -> bytes:
        return data

    bomb = _rewritten(w, change)
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fixture_attn/zeros.bin", b"\0" * (64 * 2**20))
    return _audited(bomb)


def _huge_metadata(w: Path) -> Path:
    noise = os.urandom(2**20).hex().encode()  # 2 MiB that do not compress: not a zip bomb, just too big
    return _rewritten(w, lambda name, data: data + b"Description: " + noise + b"\n"
                      if name.endswith("/METADATA") else data)


@pytest.mark.parametrize(("fault", "damage", "said"), [
    ("an empty .whl file", _empty, "not a valid zip file"),
    ("a truncated download (half the bytes)", _truncated, "not a valid zip file"),
    ("an HTML error page saved as .whl", _not_a_zip, "not a valid zip file"),
    ("a member with a bad CRC (stored, one byte flipped)", lambda w: _bad_crc(_stored(w)), "fails its CRC check"),
    ("a member whose deflate stream is damaged", _bad_deflate, "refused fixture_attn-0.1.0-py3-py3-any.whl"),
    ("a member whose bytes differ from RECORD", _record_mismatch, "does not match its RECORD entry"),
    ("the dist-info of another project under this name", _other_project, "dist-info"),
    ("a zip bomb (64 MiB of zeros in one member)", _zip_bomb, "zip bomb"),
    ("a 2 MiB METADATA", _huge_metadata, "METADATA is"),
])
def test_broken_or_hostile_wheels_are_bad_input(row, tmp_path, capsys, fault, damage, said):  # noqa: F811
    r = row(f"publish {fault}", f"exit 2 naming the cause ({said}); nothing written")
    wheel = damage(make_wheel(tmp_path / "w", "fixture-attn", "0.1.0", **PY))
    if not wheel.with_name(wheel.name + ".audit.json").exists():
        wheel.with_name(wheel.name + ".audit.json").write_text('{"passed": true}')  # the gate is not the point
    got, err = _publish(wheel, tmp_path / "mirror", capsys)
    assert got == 2 and said in err, err
    assert not (tmp_path / "mirror").exists()
    r.done(f"exit 2: \"{err[:100]}…\"")


@pytest.mark.parametrize("name", ["..-1.0-py3-none-any.whl", "a.-1.0-py3-none-any.whl"])
def test_invalid_project_names_are_refused(row, tmp_path, capsys, name):  # noqa: F811
    r = row(f"a wheel named {name}", "exit 2: not a valid project name / wheel name")
    wheel = _renamed(make_wheel(tmp_path, "a", "1.0", **PY), name)
    got, err = _publish(wheel, tmp_path / "mirror", capsys)
    assert got == 2 and ("not a valid project name" in err or "not a wheel file name" in err), err
    assert not (tmp_path / "mirror").exists()
    r.done(f"exit 2: \"{err[:90]}…\"")


# --------------------------------------------------------------------------------- smaller (defect 8)


def test_an_audit_result_not_tied_to_the_bytes_is_refused(row, tmp_path, capsys):  # noqa: F811
    r = row('an audit result {"passed": true} without sha256 or wheel name', "exit 1: not tied to the bytes")
    wheel = make_wheel(tmp_path, "fixture-attn", "0.1.0", **PY)
    wheel.with_name(wheel.name + ".audit.json").write_text(json.dumps({"passed": True}))
    got, err = _publish(wheel, tmp_path / "mirror", capsys)
    assert got == 1 and "tied to the bytes" in err, err
    assert not (tmp_path / "mirror").exists()
    r.done(f"exit 1: \"{err[:90]}…\"")


def test_a_corrupt_index_state_is_named_not_a_traceback(row, tmp_path, capsys):  # noqa: F811
    r = row("a corrupt index-state.json in the mirror", "exit 1 naming the file and how to rebuild it")
    mirror = tmp_path / "mirror"
    assert _publish(_audited(make_wheel(tmp_path / "a", "fixture-attn", "0.1.0", **PY)), mirror, capsys)[0] == 0
    (mirror / "index-state.json").write_text('{"entries": [')
    got, err = _publish(_audited(make_wheel(tmp_path / "b", "fixture-attn", "0.2.0", **PY)), mirror, capsys)
    assert got == 1 and "index-state.json is corrupt" in err and "--rescan" in err, err
    assert "Traceback" not in err
    r.done(f"exit 1: \"{err[:100]}…\"")


# ------------------------------------------------------------------- the local mirror's folder (defects 6, 7, 8)


def test_a_symlinked_folder_inside_the_mirror_is_not_written_through(row, tmp_path, capsys):  # noqa: F811
    r = row("wheels/<project> inside the local mirror is a symlink to a folder outside it",
            "exit 1 naming the link; nothing written outside the mirror")
    mirror, outside = tmp_path / "mirror", tmp_path / "outside"
    (mirror / "wheels").mkdir(parents=True)
    outside.mkdir()
    (mirror / "wheels" / "fixture-attn").symlink_to(outside)
    got, err = _publish(_audited(make_wheel(tmp_path / "w", "fixture-attn", "0.1.0", **PY)), mirror, capsys)
    assert got == 1 and "symlink" in err, err
    assert list(outside.iterdir()) == []
    r.done(f"exit 1: \"{err[:100]}…\"; the outside folder is still empty")


def test_a_symlinked_lock_file_is_not_followed(row, tmp_path, capsys):  # noqa: F811
    r = row("the mirror's lock file is a symlink to a path outside it", "exit 1; the link's target is never created")
    mirror, target = tmp_path / "mirror", tmp_path / "elsewhere" / "created-by-publish"
    mirror.mkdir()
    (mirror / ".index-state.lock").symlink_to(target)
    got, err = _publish(_audited(make_wheel(tmp_path / "w", "fixture-attn", "0.1.0", **PY)), mirror, capsys)
    assert got == 1 and "symlink" in err, err
    assert not target.exists() and not target.parent.exists()
    r.done(f"exit 1: \"{err[:100]}…\"; target not created")


def test_a_stopped_publisher_holding_the_lock_is_named_after_the_timeout(row, tmp_path, capsys, monkeypatch):  # noqa: F811
    r = row("another publisher holds the mirror's lock and never lets go (stopped with SIGSTOP)",
            "exit 1 after WHEELFARM_LOCK_TIMEOUT_S, naming the lock file and the holder's pid")
    import subprocess
    import sys

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(mirror / '.index-state.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0)\n"
        "print('locked', flush=True); time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        monkeypatch.setenv("WHEELFARM_LOCK_TIMEOUT_S", "1")
        got, err = _publish(_audited(make_wheel(tmp_path / "w", "fixture-attn", "0.1.0", **PY)), mirror, capsys)
    finally:
        holder.kill()
        holder.wait()
    assert got == 1 and f"still locked after 1 s by pid {holder.pid}" in err, err
    r.done(f"exit 1: \"{err[:110]}…\"")


def test_temporary_files_of_killed_publishers_are_cleaned(row, tmp_path, capsys):  # noqa: F811
    r = row("a temporary file left by a publisher killed mid-copy (2 h old) and one being written now",
            "the old one removed by the next publish into that folder, the fresh one left alone; neither listed")
    mirror = tmp_path / "mirror"
    folder = mirror / "wheels" / "fixture-attn"
    folder.mkdir(parents=True)
    old, fresh = folder / ".a.whl.tmp-old", folder / ".b.whl.tmp-new"
    old.write_bytes(b"half a wheel")
    fresh.write_bytes(b"a copy in progress")
    os.utime(old, (0, os.path.getmtime(old) - 7200))
    assert _publish(_audited(make_wheel(tmp_path / "w", "fixture-attn", "0.1.0", **PY)), mirror, capsys)[0] == 0
    assert not old.exists() and fresh.exists()
    assert ".tmp-" not in (mirror / "simple/fixture-attn/index.html").read_text()
    r.done("old temporary removed, fresh one kept, index unaffected")


# ------------------------------------------------------------- GitHub releases (defects 7 and 8), the stand-in


def _gh_publish(tmp_path: Path, capsys: pytest.CaptureFixture[str], tag: str = "v1") -> tuple[int, str]:
    wheel = _audited(make_wheel(tmp_path / "w", "fixture-attn", "0.1.0", **PY))
    return _cli(capsys, "publish", str(wheel), "--to", f"github://acme/wheels@{tag}",
                "--pages-dir", str(tmp_path / "p"))


def test_github_pagination_that_loops_is_stopped(row, gh, tmp_path, capsys):  # noqa: F811
    r = row("GitHub's asset list answers with Link: rel=\"next\" pointing at itself",
            "exit 1 at once, naming the URL (it was followed 5,029 times in 15 s)")
    gh.state.self_link = True
    got, err = _gh_publish(tmp_path, capsys)
    assert got == 1 and "links back to a page already read" in err, err
    lists = [p for m, p, _ in gh.state.log if m == "GET" and "/assets" in p and "releases/assets/" not in p]
    assert len(lists) <= 2, lists
    r.done(f"exit 1 after {len(lists)} list request(s): \"{err[:90]}…\"")


def test_github_retry_after_as_an_http_date_is_waited_for(row, gh, tmp_path, capsys):  # noqa: F811
    r = row("GitHub answers 429 with Retry-After as an HTTP-date (RFC 9110), twice",
            "waited for (no ValueError), then published")
    gh.state.retry_after_date = 2
    got, err = _gh_publish(tmp_path, capsys)
    assert got == 0, err
    assert [s for _, _, s in gh.state.log].count(429) == 2
    r.done("exit 0 after two dated 429s")


def test_github_refusing_to_create_the_release_says_why(row, gh, tmp_path, capsys):  # noqa: F811
    r = row("GitHub refuses to create the release (422: the tag name is invalid)",
            "exit 1 with GitHub's reason, not a 404 from the lookup that follows")
    gh.state.refuse_release = "tag_name is not a valid tag"
    got, err = _gh_publish(tmp_path, capsys, tag="bad..tag")
    assert got == 1 and "HTTP 422" in err and "tag_name is not a valid tag" in err, err
    r.done(f"exit 1: \"{err[:110]}…\"")


def test_an_error_body_that_echoes_the_token_is_redacted(row, gh, tmp_path, capsys):  # noqa: F811
    r = row("a server whose error bodies echo the request headers (Authorization: Bearer <token>)",
            "the token never printed: '***' in its place")
    gh.state.echo_headers = True
    gh.state.refuse_release = "no"
    got, err = _gh_publish(tmp_path, capsys)
    assert got == 1 and "request_headers" in err, err
    assert os.environ["GITHUB_TOKEN"] not in err and "***" in err
    r.done(f"exit 1, token redacted: \"…{err[err.find('Authorization'):][:60]}…\"")


# ------------------------------------------------------------------------------------ S3 refusals (defect 5)


class _RefusingS3(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint on 127.0.0.1 that refuses the way AWS does: moto's server enforces no bucket policies and
    no session tokens, so this small stand-in answers S3's documented error forms (XML bodies; a HEAD has none)."""

    head_status = 200  # HeadBucket
    put_status, put_code = 403, "AccessDenied"

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, code: str = "", message: str = "") -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
                f"<RequestId>stand-in</RequestId></Error>").encode() if code and self.command != "HEAD" else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        bucket_only = self.path.strip("/").count("/") == 0
        self._reply(self.head_status if bucket_only else 404)

    def do_GET(self) -> None:
        self._reply(404, "NoSuchKey", "The specified key does not exist.")

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._reply(self.put_status, self.put_code, "Access Denied")


@pytest.mark.parametrize(("fault", "head", "said", "hint"), [
    ("S3 refuses PutObject (403 AccessDenied: the policy lacks s3:PutObject)", 200, "HTTP 403 AccessDenied",
     "s3:PutObject"),
    ("S3 answers 400 to HeadBucket (an invalid or expired session token)", 400, "HTTP 400", "invalid or expired"),
])
def test_s3_refusals_give_the_cause_and_a_hint(row, tmp_path, capsys, monkeypatch, fault, head, said, hint):  # noqa: F811
    r = row(fault, "exit 1 with S3's answer and what to check (credentials, policy); no traceback")
    handler = type("Handler", (_RefusingS3,), {"head_status": head})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}",
                           "AWS_DEFAULT_REGION": "us-east-1", "WHEELFARM_RETRY_ATTEMPTS": "1"}.items():
            monkeypatch.setenv(key, value)
        wheel = _audited(make_wheel(tmp_path / "w", "fixture-attn", "0.1.0", **PY))
        code = cli.main(["publish", str(wheel), "--to", "s3://mirror/prefix"])
        err = " ".join(capsys.readouterr().err.split())
    finally:
        server.shutdown()
    assert code == 1 and said in err and hint in err, err
    assert "Traceback" not in err and "botocore" not in err
    r.done(f"exit 1: \"{err[err.find('wheelfarm:'):][:120]}…\"")


# ------------------------------------------------------------------------------- --replace (defect 2)


def _page_and_file_agree(mirror: Path) -> bool | None:
    """The project page's sha256 for the wheel against the bytes its link points at (None: no page yet)."""
    page = mirror / "simple/fixture-attn/index.html"
    try:
        text = page.read_text()
    except FileNotFoundError:
        return None
    import hashlib
    import re

    m = re.search(r'href="([^"#]+\.whl)#sha256=([0-9a-f]{64})"', text)
    assert m, text
    target = (page.parent / m.group(1)).resolve()
    return hashlib.sha256(target.read_bytes()).hexdigest() == m.group(2)


def test_replace_is_invisible_until_complete_even_when_killed(row, tmp_path):  # noqa: F811
    """A 24 MB wheel replaced under polling and under kill -9 at six points: the page always names the sha256 of
    the file it links, before, during and after, and a rerun completes the replacement."""
    import random
    import subprocess
    import sys
    import time

    from wheelgen import add_member

    r = row("`publish --replace` of a 24 MB wheel, polled, and kill -9'd at 6 random points",
            "the page's sha256 always matches the linked file (was: 37 of 38 polls disagreed); a rerun completes")
    mirror = tmp_path / "mirror"

    def big(salt: str) -> Path:
        w = make_wheel(tmp_path / salt, "fixture-attn", "0.1.0", salt=salt, **PY)
        return _audited(add_member(w, "fixture_attn/blob.bin", os.urandom(24 * 2**20), zipfile.ZIP_STORED))

    first = big("one")
    assert cli.main(["publish", str(first), "--to", str(mirror)]) == 0
    cmd = [sys.executable, "-m", "wheelfarm", "publish", "--replace", "--to", str(mirror)]
    start = time.monotonic()
    assert subprocess.run([*cmd, str(big("timed"))], capture_output=True).returncode == 0
    took = time.monotonic() - start  # one whole replace, start-up included: the kills land inside it
    polls = disagreements = kills = 0
    for attempt in range(6):
        proc = subprocess.Popen([*cmd, str(big(f"kill{attempt}"))], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + random.uniform(0.3, 0.85) * took
        while time.monotonic() < deadline and proc.poll() is None:
            polls += 1
            disagreements += _page_and_file_agree(mirror) is False
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
        polls += 1
        disagreements += _page_and_file_agree(mirror) is False
    last = big("final")
    done = subprocess.run([*cmd, str(last)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _page_and_file_agree(mirror) is True and disagreements == 0, (polls, disagreements)
    assert kills >= 2, f"only {kills} of 6 publishers were still running when killed (a replace took {took:.2f} s)"
    import hashlib

    page = (mirror / "simple/fixture-attn/index.html").read_text()
    assert hashlib.sha256(last.read_bytes()).hexdigest() in page
    assert (mirror / "wheels/fixture-attn" / first.name).read_bytes() == first.read_bytes()  # never overwritten
    r.done(f"{polls} polls, {disagreements} disagreements, {kills} of 6 publishers killed mid-replace (one "
           f"takes {took:.1f} s); the rerun replaced it")


# --------------------------------------------------------------------- pages of vanished wheels (defect 8)


def test_rescan_removes_the_pages_of_vanished_wheels(row, tmp_path, capsys):  # noqa: F811
    r = row("the wheels of one project and variant vanish from the mirror, then `index --rescan`",
            "their project and variant pages are deleted; the other project's stay; no wheel is touched")
    mirror = tmp_path / "mirror"
    keep = _audited(make_wheel(tmp_path / "a", "fixture-attn", "0.1.0+cu13.keep", **PY))
    gone = _audited(make_wheel(tmp_path / "b", "other-attn", "0.1.0+cu12.gone", **PY))
    assert cli.main(["publish", str(keep), str(gone), "--to", str(mirror)]) == 0
    assert (mirror / "cu12.gone/simple/other-attn/index.html").is_file()
    for f in (mirror / "wheels/other-attn").iterdir():
        f.unlink()
    assert cli.main(["index", "--to", str(mirror), "--rescan"]) == 0
    capsys.readouterr()
    left = sorted(p.relative_to(mirror).as_posix() for p in mirror.rglob("*") if p.is_file())
    assert not [p for p in left if "other-attn" in p or "cu12.gone" in p], left
    assert "cu13.keep/simple/fixture-attn/index.html" in left and f"wheels/fixture-attn/{keep.name}" in left
    assert "cu12.gone" not in (mirror / "index.html").read_text()
    r.done(f"{len(left)} files left, none of the vanished project's or variant's")


def test_rescan_removes_stale_pages_on_s3_too(row, s3_env, tmp_path, capsys):  # noqa: F811
    import boto3

    r = row("the same on S3 (moto on 127.0.0.1): a vanished project's wheels, then `index --rescan`",
            "its page objects (index.html, index.json and the directory key) are deleted")
    bucket = make_bucket(s3_env)
    target = f"s3://{bucket}/m"
    gone = _audited(make_wheel(tmp_path / "b", "other-attn", "0.1.0", **PY))
    keep = _audited(make_wheel(tmp_path / "a", "fixture-attn", "0.1.0", **PY))
    assert cli.main(["publish", str(keep), str(gone), "--to", target]) == 0
    s3 = boto3.client("s3", endpoint_url=s3_env)
    for key in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="m/wheels/other-attn/")["Contents"]]:
        s3.delete_object(Bucket=bucket, Key=key)
    assert cli.main(["index", "--to", target, "--rescan"]) == 0
    capsys.readouterr()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="m/").get("Contents", [])]
    assert not [k for k in keys if "other-attn" in k], keys
    assert "m/simple/fixture-attn/index.html" in keys
    r.done(f"{len(keys)} objects left, none of other-attn's")


def test_github_replace_uploads_before_it_deletes(row, gh, tmp_path, capsys):  # noqa: F811
    r = row("`publish --replace` to a GitHub release", "the new asset is uploaded under a staging name first, then "
            "the old one deleted and the new one renamed (PATCH): no window of a whole upload with no asset")
    first = _audited(make_wheel(tmp_path / "a", "fixture-attn", "0.1.0", **PY))
    target = ["--to", "github://acme/wheels@v1", "--pages-dir", str(tmp_path / "p")]
    assert cli.main(["publish", str(first), *target]) == 0
    second = _audited(make_wheel(tmp_path / "b", "fixture-attn", "0.1.0", salt="new bytes", **PY))
    start = len(gh.state.log)
    assert cli.main(["publish", "--replace", str(second), *target]) == 0, capsys.readouterr().err
    order = [m for m, _, s in gh.state.log[start:] if m != "GET" and s < 300]
    wheel_upload = next(i for i, (m, p, _) in enumerate(gh.state.log[start:]) if m == "POST"
                        and "replacing" in p)
    first_delete = next(i for i, (m, _, _) in enumerate(gh.state.log[start:]) if m == "DELETE")
    assert wheel_upload < first_delete and "PATCH" in order
    names = gh.asset_names()
    assert second.name in names and not [n for n in names if "replacing" in n], names
    page = (tmp_path / "p/simple/fixture-attn/index.html").read_text()
    import hashlib

    assert hashlib.sha256(second.read_bytes()).hexdigest() in page
    r.done(f"upload (staging) before delete, then rename; {len(names)} assets, none left staging")


def test_a_record_with_sha512_is_accepted(tmp_path, capsys):
    """The wheel spec allows any hash "sha256 or better" in RECORD: a sha512 RECORD is a good wheel."""
    import base64
    import hashlib

    w = make_wheel(tmp_path / "w", "fixture-attn", "0.1.0", **PY)

    def to_sha512(name: str, data: bytes) -> bytes:
        if not name.endswith("/RECORD"):
            return data
        with zipfile.ZipFile(w) as zf:
            members = {i.filename: zf.read(i) for i in zf.infolist()}
        rows = []
        for line in data.decode().splitlines():
            path, _, _ = line.split(",")
            if path == name:
                rows.append(line)
                continue
            digest = base64.urlsafe_b64encode(hashlib.sha512(members[path]).digest()).rstrip(b"=").decode()
            rows.append(f"{path},sha512={digest},{len(members[path])}")
        return ("\n".join(rows) + "\n").encode()

    assert _publish(_rewritten(w, to_sha512), tmp_path / "mirror", capsys)[0] == 0


def test_rescan_keeps_a_replacement(tmp_path, capsys):
    """`index --rescan` after a keyed --replace: the original bytes at wheels/<p>/<file> are not a new wheel."""
    mirror = tmp_path / "mirror"
    first = _audited(make_wheel(tmp_path / "a", "fixture-attn", "0.1.0", **PY))
    second = _audited(make_wheel(tmp_path / "b", "fixture-attn", "0.1.0", salt="new", **PY))
    assert cli.main(["publish", str(first), "--to", str(mirror)]) == 0
    assert cli.main(["publish", "--replace", str(second), "--to", str(mirror)]) == 0
    assert cli.main(["index", "--to", str(mirror), "--rescan"]) == 0
    capsys.readouterr()
    import hashlib

    state = json.loads((mirror / "index-state.json").read_text())
    (entry,) = state["entries"]
    assert entry["sha256"] == hashlib.sha256(second.read_bytes()).hexdigest() and "/replaced/" in entry["key"]
