"""The local-directory store, and the Store contract every backend must keep (``check_contract``)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from wheelfarm.errors import BadInput
from wheelfarm.index import Entry
from wheelfarm.publish import update_state
from wheelfarm.store import Store, open_store
from wheelfarm.store.local import LocalStore

WHEEL = "wheels/demo/demo-1.0-py3-none-any.whl"


def check_contract(store: Store, tmp_path: Path) -> None:
    """What publish/index rely on; run against every backend."""
    assert isinstance(store, Store)
    assert store.sha256(WHEEL) is None
    assert store.put_new(WHEEL, b"first", "application/octet-stream") is True
    assert store.put_new(WHEEL, b"second", "application/octet-stream") is False  # never overwrites
    assert store.get(WHEEL) == b"first"
    assert store.sha256(WHEEL) == "a7937b64b8caa58f03721bb6bacf5c78cb235febe0e70b1b84cd99541461a08e"
    src = tmp_path / "payload.bin"
    src.write_bytes(b"from a file" * 1000)
    assert store.put_new(WHEEL + ".metadata", src, "text/plain") is True
    assert store.get(WHEEL + ".metadata") == src.read_bytes()
    assert store.list_files("wheels/") == [WHEEL, WHEEL + ".metadata"]
    assert store.url_for(WHEEL)

    assert store.read_state() == (None, None)
    assert store.cas_state(b'{"n": 1}', None) is True
    assert store.cas_state(b'{"n": "lost"}', None) is False  # someone created it first
    data, token = store.read_state()
    assert data == b'{"n": 1}' and token
    assert store.cas_state(b'{"n": 2}', token) is True
    assert store.cas_state(b'{"n": "stale"}', token) is False  # token is no longer current
    assert store.read_state()[0] == b'{"n": 2}'

    store.write_page("simple/demo/index.html", b"<html>1</html>", "text/html")
    store.write_page("simple/demo/index.html", b"<html>2</html>", "text/html")


def test_contract(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "mirror")
    check_contract(store, tmp_path)
    assert (tmp_path / "mirror/simple/demo/index.html").read_bytes() == b"<html>2</html>"
    leftovers = [p for p in (tmp_path / "mirror").rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
    assert (tmp_path / "mirror" / WHEEL).stat().st_mode & 0o777 == 0o644  # servable


def test_open_store_parses_targets(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    with pytest.raises(BadInput, match="unknown target scheme 'ftp'"):
        open_store("ftp://example/x")


def test_put_new_race_has_one_winner(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(store.put_new(WHEEL, b"x%d" % i, "x")))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert store.get(WHEEL) in {b"x%d" % i for i in range(8)}


def test_state_updates_under_the_lock_lose_nothing(tmp_path: Path) -> None:
    """8 writers × 10 compare-and-swap updates, each through its own open file description of the lock."""

    def writer(w: int) -> None:
        store = LocalStore(tmp_path)  # separate objects, like separate processes
        for i in range(10):
            e = Entry(f"demo-{w}.{i}-py3-none-any.whl", "demo", "0" * 64, None, "", None)
            update_state(store, lambda s, e=e: s.with_entry(e))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    from wheelfarm.index import State

    assert len(State.from_bytes(LocalStore(tmp_path).read_state()[0]).entries) == 80
