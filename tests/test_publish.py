"""Publishing: immutability both ways, gates, crash consistency, the 4 × 25 race on a real S3 endpoint (moto's
ThreadedMotoServer on 127.0.0.1, see test_store_s3), the GitHub stand-in, and the CLI's exit codes."""

from __future__ import annotations

import fcntl
import hashlib
import os
import posixpath
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from ghrelease_server import GitHubStandIn
from test_index import anchors
from test_store_s3 import FAST, make_bucket, moto_endpoint, s3_env  # noqa: F401 (fixtures)
from wheelfarm import cli
from wheelfarm.errors import BadInput, PublishFailed
from wheelfarm.index import State
from wheelfarm.publish import Options, publish
from wheelfarm.store import Store, open_store
from wheelfarm.store.local import LOCK_NAME, LocalStore
from wheelgen import make_wheel, write_result

SRC = str(Path(__file__).resolve().parents[1] / "src")
CU13 = "cu13torch2.14cxx11abiTRUE"
CU12 = "cu12torch2.8cxx11abiTRUE"


def wheel(
    tmp: Path, label: str = CU13, version: str = "0.1.0", salt: str = "", audit: bool | None = True
) -> Path:
    w = make_wheel(
        tmp / "wheelhouse",
        "fixture-attn",
        f"{version}+{label}",
        salt=salt,
        requires_dist=["torch>=2.14,<2.15"],
    )
    if audit is not None:
        write_result(w, ".audit.json", audit)
    return w


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def state_of(store: Store) -> State:
    return State.from_bytes(store.read_state()[0])


def linked_files(store: Store, page: str) -> list[str]:
    """The wheels a page links, through the variant pages a global page links (index.py's global rule)."""
    data = store.get(page) if not isinstance(store, LocalStore) else (store.root / page).read_bytes()
    assert data is not None, page
    files = []
    for a in anchors(data):
        href = urllib.parse.unquote((a["href"] or "").split("#")[0])
        if href.endswith("/"):  # a variant's project page
            files += linked_files(store, posixpath.normpath(posixpath.join(posixpath.dirname(page), href))
                                  + "/index.html")
        else:
            files.append(href.rsplit("/", 1)[-1])
    return files


# ------------------------------------------------------------------------------------------ immutability


def test_same_name_same_bytes_is_a_no_op(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "mirror")
    w = wheel(tmp_path)
    assert publish(store, [w], Options()) == {w.name: "published"}
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "mirror").rglob("*.whl*")}
    assert publish(store, [w], Options()) == {w.name: "unchanged"}
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "mirror").rglob("*.whl*")}
    assert [e.file for e in state_of(store).entries] == [w.name]


def test_same_name_different_bytes_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "mirror")
    publish(store, [wheel(tmp_path)], Options())
    before = snapshot(tmp_path / "mirror")
    other = wheel(tmp_path / "b", label=CU12)  # a good wheel in the same batch is not published either
    changed = wheel(tmp_path / "c", salt="rebuilt")
    with pytest.raises(PublishFailed, match=r"already published with different bytes.*nothing was changed"):
        publish(store, [other, changed], Options())
    assert snapshot(tmp_path / "mirror") == before


def test_replace_overwrites_and_logs_the_old_hash(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "mirror")
    old = wheel(tmp_path)
    publish(store, [old], Options())
    old_sha = hashlib.sha256(old.read_bytes()).hexdigest()
    new = wheel(tmp_path / "c", salt="rebuilt")
    assert publish(store, [new], Options(replace=True)) == {new.name: "replaced"}
    state = state_of(store)
    assert [(r.file, r.old_sha256) for r in state.replaced] == [(new.name, old_sha)]
    assert state.entries[0].sha256 == hashlib.sha256(new.read_bytes()).hexdigest() != old_sha
    page = (tmp_path / f"mirror/{CU13}/simple/fixture-attn/index.html").read_text()
    assert state.entries[0].sha256 in page and old_sha not in page


# ------------------------------------------------------------------------------------------------ gates


@pytest.mark.parametrize(
    ("audit", "gpu", "opts", "error"),
    [
        (None, None, Options(), "no audit result"),
        (False, None, Options(), "the audit did not pass"),
        (None, None, Options(audit_gate=False), None),
        (True, None, Options(require_gpu_result=True), "no GPU test result"),
        (True, False, Options(require_gpu_result=True), "the GPU test did not pass"),
        (True, True, Options(require_gpu_result=True), None),
        # wheels of an architecture with no GPU runner: audit alone; another architecture's still need the result
        (True, None, Options(require_gpu_result=True, gpu_untested=("x86_64",)), None),
        (True, None, Options(require_gpu_result=True, gpu_untested=("aarch64",)), "no GPU test result"),
    ],
)
def test_gates(
    tmp_path: Path, audit: bool | None, gpu: bool | None, opts: Options, error: str | None
) -> None:
    store = LocalStore(tmp_path / "mirror")
    w = wheel(tmp_path, audit=audit)
    if gpu is not None:
        write_result(w, ".gpu.json", gpu)
    if error:
        with pytest.raises(PublishFailed, match=error):
            publish(store, [w], opts)
        assert not (tmp_path / "mirror").exists()
        return
    publish(store, [w], opts)
    stored = {p.name for p in (tmp_path / "mirror/wheels/fixture-attn").iterdir()}
    assert {w.name, w.name + ".metadata"} <= stored
    assert (w.name + ".gpu.json" in stored) == (gpu is True)


def test_audit_of_other_bytes_or_newer_schema_is_refused(tmp_path: Path) -> None:
    w = wheel(tmp_path, audit=None)
    write_result(w, ".audit.json", True, sha256="0" * 64)
    with pytest.raises(PublishFailed, match="is for other bytes"):
        publish(LocalStore(tmp_path / "mirror"), [w], Options())
    w.with_name(w.name + ".audit.json").write_text('{"schema": 2, "passed": true}')
    with pytest.raises(PublishFailed, match="has schema 2"):
        publish(LocalStore(tmp_path / "mirror"), [w], Options())


def test_wheel_whose_metadata_lacks_the_local_label_is_refused(tmp_path: Path) -> None:
    w = make_wheel(tmp_path, "fixture-attn", f"0.1.0+{CU13}", metadata_version="0.1.0")  # upstream's mistake
    write_result(w, ".audit.json", True)
    with pytest.raises(BadInput, match="inconsistent version"):  # bad input: exit 2, nothing written
        publish(LocalStore(tmp_path / "mirror"), [w], Options())
    assert not (tmp_path / "mirror").exists()


# ----------------------------------------------------------------------------------- crash consistency


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    return {**env, "PYTHONPATH": SRC, "WHEELFARM_MATRIX": "/nonexistent.toml", **extra}


def test_killed_between_upload_and_index_leaves_a_consistent_index(tmp_path: Path) -> None:
    """A real SIGKILL: the publisher is held on the state lock after uploading, then killed."""
    mirror = tmp_path / "mirror"
    store = LocalStore(mirror)
    first, second = wheel(tmp_path / "a", label=CU12), wheel(tmp_path / "b")
    publish(store, [first], Options())
    mirror_pages = snapshot(mirror)
    with open(mirror / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the publisher will block right before its index update
        proc = subprocess.Popen(
            [sys.executable, "-m", "wheelfarm", "publish", str(second), "--to", str(mirror)],
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        orphan = mirror / "wheels/fixture-attn" / (second.name + ".audit.json")
        deadline = time.monotonic() + 60
        while not orphan.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # let it reach the lock
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert (mirror / "wheels/fixture-attn" / second.name).exists()  # uploaded...
    assert [e.file for e in state_of(store).entries] == [first.name]  # ...but not indexed
    for page in (
        "simple/fixture-attn/index.html",
        "simple/index.html",
        f"{CU12}/simple/fixture-attn/index.html",
    ):
        assert (mirror / page).read_bytes() == mirror_pages[page]
    assert linked_files(store, "simple/fixture-attn/index.html") == [first.name]
    # a rerun completes: identical files are no-ops, the entry and pages appear
    assert publish(store, [second], Options()) == {second.name: "published"}
    assert sorted(linked_files(store, "simple/fixture-attn/index.html")) == sorted([first.name, second.name])


class Crash(BaseException):
    """Stands in for the process dying at one step."""


class CrashingStore:
    """Delegates to a real store, dying at the first call matching (method, name suffix)."""

    def __init__(self, inner: Store, method: str, suffix: str = "") -> None:
        self.inner, self.method, self.suffix = inner, method, suffix

    def __getattr__(self, attr: str) -> object:
        real = getattr(self.inner, attr)
        if attr != self.method:
            return real

        def dying(*args: object, **kw: object) -> object:
            if not args or str(args[0]).endswith(self.suffix):
                raise Crash(f"{attr} {args[:1]}")
            return real(*args, **kw)

        return dying


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("put_new", ".metadata"),  # after the wheel, before its metadata
        ("put_new", ".audit.json"),  # after wheel and metadata
        ("cas_state", ""),  # after upload and verification, before the index state
        ("write_page", "index.html"),  # after the state, before the pages
    ],
)
def test_crash_at_each_step_on_s3(s3_env: str, tmp_path: Path, method: str, suffix: str) -> None:  # noqa: F811
    bucket = make_bucket(s3_env)
    store = open_store(f"s3://{bucket}/m", retry=FAST)
    first, second = wheel(tmp_path / "a", label=CU12), wheel(tmp_path / "b")
    publish(store, [first], Options())
    with pytest.raises(Crash):
        publish(CrashingStore(store, method, suffix), [second], Options())  # type: ignore[arg-type]
    stored = set(store.list_files())
    for e in state_of(store).entries:  # never an entry without its files
        assert {e.path, e.path + ".metadata"} <= stored
    for f in linked_files(store, "simple/fixture-attn/index.html"):
        assert f"wheels/fixture-attn/{f}" in stored
    assert publish(store, [second], Options())[second.name] in ("published", "unchanged")
    assert sorted(linked_files(store, "simple/fixture-attn/index.html")) == sorted([first.name, second.name])


def test_index_rescan_adopts_orphans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = LocalStore(tmp_path / "mirror")
    w = wheel(tmp_path)
    with pytest.raises(Crash):
        publish(CrashingStore(store, "cas_state"), [w], Options())  # type: ignore[arg-type]
    assert state_of(store).entries == ()
    assert cli.main(["index", "--to", str(tmp_path / "mirror"), "--rescan"]) == 0
    assert [e.file for e in state_of(store).entries] == [w.name]
    assert linked_files(store, f"{CU13}/simple/fixture-attn/index.html") == [w.name]


# ----------------------------------------------------------------------------------------------- races


def run_publishers(targets: list[list[Path]], to: str, env: dict[str, str]) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "wheelfarm", "publish", *map(str, ws), "--to", to, "--no-audit-gate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for ws in targets
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]


def race_wheels(tmp_path: Path, procs: int, each: int) -> list[list[Path]]:
    return [
        [
            wheel(tmp_path / f"p{p}", label=CU13 if i % 2 else CU12, version=f"0.{p}.{i}", audit=None)
            for i in range(each)
        ]
        for p in range(procs)
    ]


def test_four_publishers_race_on_one_bucket(s3_env: str, tmp_path: Path) -> None:  # noqa: F811
    """4 processes × 25 wheels against one moto bucket: all 100 entries, all linked, nothing lost."""
    bucket = make_bucket(s3_env)
    batches = race_wheels(tmp_path, 4, 25)
    run_publishers(
        batches,
        f"s3://{bucket}/mirror",
        cli_env(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing"),
    )
    store = open_store(f"s3://{bucket}/mirror", retry=FAST)
    names = sorted(w.name for ws in batches for w in ws)
    assert [e.file for e in state_of(store).entries] == names
    assert sorted(linked_files(store, "simple/fixture-attn/index.html")) == names
    cu13 = [n for n in names if CU13 in n]
    assert sorted(linked_files(store, f"{CU13}/simple/fixture-attn/index.html")) == cu13
    assert len(linked_files(store, f"{CU12}/simple/fixture-attn/")) == 100 - len(
        cu13
    )  # directory key, as pip asks
    stored = set(store.list_files("wheels/"))
    assert all(
        f"wheels/fixture-attn/{n}" in stored and f"wheels/fixture-attn/{n}.metadata" in stored for n in names
    )


def test_four_publishers_race_on_a_local_mirror(tmp_path: Path) -> None:
    batches = race_wheels(tmp_path, 4, 5)
    run_publishers(batches, str(tmp_path / "mirror"), cli_env())
    store = LocalStore(tmp_path / "mirror")
    assert len(state_of(store).entries) == 20
    assert len(linked_files(store, "simple/fixture-attn/index.html")) == 20


# ---------------------------------------------------------------------------------------------- GitHub


@pytest.fixture
def gh(monkeypatch: pytest.MonkeyPatch) -> Iterator[GitHubStandIn]:
    with GitHubStandIn(token="t0ken", repos={"acme/wheels"}) as server:
        monkeypatch.setenv("GITHUB_API_URL", server.base)
        monkeypatch.setenv("GITHUB_TOKEN", "t0ken")
        yield server


def test_publish_to_a_github_release(gh: GitHubStandIn, tmp_path: Path) -> None:
    pages = tmp_path / "pages"
    store = open_store("github://acme/wheels@fa-0.1.0", pages_dir=str(pages), retry=FAST)
    a, b = wheel(tmp_path / "a", label=CU12), wheel(tmp_path / "b")
    assert set(publish(store, [a, b], Options()).values()) == {"published"}
    assert {a.name, a.name + ".metadata", a.name + ".audit.json"} <= set(gh.asset_names())
    (link,) = anchors((pages / f"{CU13}/simple/fixture-attn/index.html").read_bytes())
    assert (link["href"] or "").startswith(f"{gh.base}/acme/wheels/releases/download/fa-0.1.0/fixture_attn-")
    assert publish(store, [a], Options()) == {a.name: "unchanged"}
    with pytest.raises(PublishFailed, match="different bytes"):
        publish(store, [wheel(tmp_path / "c", label=CU12, salt="x")], Options())


# ------------------------------------------------------------------------------------- CLI exit codes


def test_cli_exit_codes(
    tmp_path: Path,
    s3_env: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("WHEELFARM_MATRIX", "/nonexistent.toml")
    monkeypatch.setenv("WHEELFARM_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("WHEELFARM_RETRY_BASE_S", "0.01")
    w = wheel(tmp_path)
    mirror = str(tmp_path / "mirror")
    assert cli.main(["publish", str(w), "--to", "ftp://host/x"]) == 2
    assert "unknown target scheme" in capsys.readouterr().err
    assert cli.main(["publish", str(w), "--to", "s3://no-such-bucket-y/p"]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    assert cli.main(["publish", str(w), "--to", "github://acme/wheels@v1"]) == 2
    assert "GITHUB_TOKEN is not set" in capsys.readouterr().err
    assert cli.main(["publish", str(tmp_path / "missing.whl"), "--to", mirror]) == 2
    assert cli.main(["publish", str(w.parent), "--to", mirror]) == 0  # a folder: wheelhouse/
    assert f"published\t{w.name}" in capsys.readouterr().out
    assert cli.main(["publish", str(wheel(tmp_path / "c", salt="x")), "--to", mirror]) == 1
    assert "different bytes" in capsys.readouterr().err
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert cli.main(["publish", str(w), "--to", "s3://mirror-z/p"]) == 1
    assert "still failing after 2 attempts" in capsys.readouterr().err
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    assert cli.main(["publish", str(w), "--to", f"s3://{make_bucket(s3_env)}/p"]) == 2
    assert "no AWS credentials" in capsys.readouterr().err
