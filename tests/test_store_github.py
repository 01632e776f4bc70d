"""The GitHub-release store against ``ghrelease_server``: a CONTRACT STAND-IN for GitHub's REST API on
127.0.0.1 (create/get release by tag, paginated asset lists, uploads with 422 on duplicates, rate-limit
headers)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ghrelease_server import GitHubStandIn
from test_store_local import WHEEL, check_contract
from wheelfarm.errors import BadInput, PublishFailed
from wheelfarm.index import State
from wheelfarm.publish import update_state
from wheelfarm.store import RetryPolicy, open_store
from wheelfarm.store.github import GitHubStore

FAST = RetryPolicy(attempts=3, base_s=0.01, cap_s=0.05)
TOKEN = "ghp_secret_test_token"


@pytest.fixture
def gh(monkeypatch: pytest.MonkeyPatch) -> Iterator[GitHubStandIn]:
    with GitHubStandIn(token=TOKEN, repos={"acme/wheels"}, per_page_max=2) as server:  # 2/page: paginate
        monkeypatch.setenv("GITHUB_API_URL", server.base)
        monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
        yield server


def open_gh(tmp_path: Path, tag: str = "flash-attn-2.8.3") -> GitHubStore:
    store = open_store(f"github://acme/wheels@{tag}", pages_dir=str(tmp_path / "pages"), retry=FAST)
    assert isinstance(store, GitHubStore)
    return store


def test_contract(gh: GitHubStandIn, tmp_path: Path) -> None:
    store = open_gh(tmp_path)
    check_contract(store, tmp_path)
    assert (
        tmp_path / "pages/simple/demo/index.html"
    ).read_bytes() == b"<html>2</html>"  # pages go to the folder
    assert (
        store.url_for(WHEEL) == f"{gh.base}/acme/wheels/releases/download/flash-attn-2.8.3/"
        "demo-1.0-py3-none-any.whl"
    )
    assert any("page=2" in path for _, path, _ in gh.state.log)  # the asset list was paginated
    assert "demo-1.0-py3-none-any.whl" in gh.asset_names()


def test_release_is_created_once_then_reused(gh: GitHubStandIn, tmp_path: Path) -> None:
    a, b = open_gh(tmp_path), open_gh(tmp_path)
    assert a.release["id"] == b.release["id"]
    assert sum(1 for m, p, s in gh.state.log if m == "POST" and p.endswith("/releases") and s == 201) == 1


def test_duplicate_asset_answers_422_and_put_new_reports_it(gh: GitHubStandIn, tmp_path: Path) -> None:
    store = open_gh(tmp_path)
    assert store.put_new("wheels/demo/x-1.0-py3-none-any.whl", b"1", "application/octet-stream")
    assert not store.put_new("wheels/demo/x-1.0-py3-none-any.whl", b"2", "application/octet-stream")
    assert ("POST", next(p for m, p, s in gh.state.log if s == 422), 422) in gh.state.log
    assert store.get("wheels/demo/x-1.0-py3-none-any.whl") == b"1"


def test_state_cas_uses_generation_assets_and_prunes(gh: GitHubStandIn, tmp_path: Path) -> None:
    from wheelfarm.index import Entry

    store = open_gh(tmp_path)
    for i in range(6):
        e = Entry(f"demo-1.{i}-py3-none-any.whl", "demo", "0" * 64, None, "", None)
        update_state(store, lambda s, e=e: s.with_entry(e))
    states = [n for n in gh.asset_names() if n.startswith("index-state.")]
    assert states == ["index-state.00000004.json", "index-state.00000005.json", "index-state.00000006.json"]
    assert len(State.from_bytes(store.read_state()[0]).entries) == 6


def test_missing_token_is_bad_input(
    gh: GitHubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_TOKEN")
    with pytest.raises(BadInput, match="GITHUB_TOKEN is not set"):
        open_gh(tmp_path)


def test_rejected_token_is_bad_input_and_never_printed(
    gh: GitHubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "wrong-secret")
    with pytest.raises(BadInput, match="401") as info:
        open_gh(tmp_path)
    assert "wrong-secret" not in str(info.value)


def test_unknown_repo_and_bad_target(gh: GitHubStandIn, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="repository not found"):
        open_store("github://acme/nope@v1", pages_dir=str(tmp_path), retry=FAST)
    with pytest.raises(BadInput, match="owner/repo@tag"):
        open_store("github://acme-wheels", retry=FAST)


def test_rate_limit_waits_for_the_reset(gh: GitHubStandIn, tmp_path: Path) -> None:
    store = open_gh(tmp_path)
    gh.state.rate_limited = 1  # the next API call answers 403, X-RateLimit-Remaining: 0, reset in ≤1 s
    start = time.monotonic()
    assert store.put_new("wheels/demo/y-1.0-py3-none-any.whl", b"y", "application/octet-stream")
    assert time.monotonic() - start >= 0.4
    assert any(s == 403 for _, _, s in gh.state.log)


def test_upload_broken_half_way_is_retried(gh: GitHubStandIn, tmp_path: Path) -> None:
    store = open_gh(tmp_path)
    gh.state.drop_uploads = 1  # connection closed mid-body; GitHub leaves a "starter" asset holding the name
    name = "wheels/demo/z-1.0-py3-none-any.whl"
    assert store.put_new(name, b"z" * 100_000, "application/octet-stream")
    assert store.get(name) == b"z" * 100_000
    assert store.sha256(name) is not None


def test_upload_that_keeps_breaking_fails_clearly(gh: GitHubStandIn, tmp_path: Path) -> None:
    store = open_gh(tmp_path)
    gh.state.drop_uploads = 99
    with pytest.raises(PublishFailed, match="still failing after 3 attempts"):
        store.put_new("wheels/demo/w-1.0-py3-none-any.whl", b"w" * 10_000, "application/octet-stream")
    assert json.dumps(gh.asset_names())  # the stand-in still answers
