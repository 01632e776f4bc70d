"""The S3 store against a REAL HTTP S3 endpoint: moto's ThreadedMotoServer bound to 127.0.0.1.

Every call goes over the S3 wire protocol (boto3 → HTTP → moto's server): conditional writes (``IfNoneMatch``,
``IfMatch`` → 412), checksums and listing are moto's implementation of the S3 API, not an in-process mock.
``FlakyProxy`` sits between boto3 and moto to break connections half-way through uploads.
"""

from __future__ import annotations

import http.client
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from test_store_local import WHEEL, check_contract
from wheelfarm.errors import BadInput, PublishFailed
from wheelfarm.store import RetryPolicy, open_store
from wheelfarm.store.s3 import S3Store

FAST = RetryPolicy(attempts=3, base_s=0.01, cap_s=0.05)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A real HTTP S3 endpoint on 127.0.0.1 (moto's ThreadedMotoServer; its default bind is 0.0.0.0)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Static test credentials in the environment (the standard boto3 chain), nothing read from ~/.aws."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return moto_endpoint


def make_bucket(endpoint: str) -> str:
    name = f"mirror-{uuid.uuid4().hex[:12]}"
    client(endpoint).create_bucket(Bucket=name)
    return name


def client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def bucket(s3_env: str) -> str:
    return make_bucket(s3_env)


def test_contract(bucket: str, s3_env: str, tmp_path: Path) -> None:
    store = open_store(f"s3://{bucket}/flash-attn", retry=FAST)
    check_contract(store, tmp_path)
    keys = {o["Key"] for o in client(s3_env).list_objects_v2(Bucket=bucket)["Contents"]}
    # each page also lives under its directory key: S3's REST endpoint has no index documents
    assert {"flash-attn/simple/demo/index.html", "flash-attn/simple/demo/"} <= keys
    assert "flash-attn/" + WHEEL in keys
    assert store.url_for(WHEEL) == f"{s3_env}/{bucket}/flash-attn/{WHEEL}"


def test_s3_itself_verifies_and_reports_sha256(bucket: str, s3_env: str) -> None:
    store = open_store(f"s3://{bucket}", retry=FAST)
    store.put_new("a+b.whl", b"payload", "application/octet-stream")
    head = client(s3_env).head_object(Bucket=bucket, Key="a+b.whl", ChecksumMode="ENABLED")
    # S3 checks the bytes against the sha256 we send and keeps it (moto keeps it without checking)
    assert head["ChecksumSHA256"]
    assert store.sha256("a+b.whl") == "239f59ed55e737c77147cf55ad0c1b030b6d7ee748a7426952f9b852d5a935e5"


def test_missing_bucket_is_bad_input(s3_env: str) -> None:
    with pytest.raises(BadInput, match="bucket 'no-such-bucket-x' does not exist"):
        open_store("s3://no-such-bucket-x/prefix", retry=FAST)


def test_missing_credentials_is_bad_input(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(BadInput, match="no AWS credentials found") as info:
        open_store(f"s3://{bucket}/x", retry=FAST)
    assert "testing" not in str(info.value)


def test_unreachable_endpoint_retries_then_fails_clearly(s3_env: str) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(PublishFailed, match="still failing after 3 attempts") as info:
        open_store("s3://mirror-x/p", endpoint_url=dead, retry=FAST)
    assert "check the network" in str(info.value)


# --------------------------------------------------------------------------------- broken connections


class FlakyProxy:
    """An HTTP proxy on 127.0.0.1 in front of moto that breaks the first ``drop`` PUTs whose path contains
    ``match``: it reads half of the body, then closes the connection without answering."""

    def __init__(self, upstream: str, match: str, drop: int) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.match, self.drop, self.dropped, self.forwarded = match, drop, 0, 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                with proxy.lock:
                    drop = self.command == "PUT" and proxy.match in self.path and proxy.dropped < proxy.drop
                    proxy.dropped += drop
                if drop:
                    self.rfile.read(length // 2)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                body = self.rfile.read(length)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                with proxy.lock:
                    proxy.forwarded += 1
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _relay

        return Handler


def test_upload_broken_mid_body_is_retried(bucket: str, s3_env: str, tmp_path: Path) -> None:
    proxy = FlakyProxy(s3_env, match="/x.whl", drop=2)
    try:
        store = open_store(f"s3://{bucket}/p", endpoint_url=proxy.url, retry=FAST)
        src = tmp_path / "x.whl"
        src.write_bytes(b"w" * 200_000)
        assert store.put_new("wheels/x/x.whl", src, "application/octet-stream") is True
        assert proxy.dropped == 2
        assert (
            client(s3_env).get_object(Bucket=bucket, Key="p/wheels/x/x.whl")["Body"].read()
            == src.read_bytes()
        )
    finally:
        proxy.close()


def test_upload_that_keeps_breaking_fails_clearly(bucket: str, s3_env: str) -> None:
    proxy = FlakyProxy(s3_env, match="/x.whl", drop=99)
    try:
        store = open_store(f"s3://{bucket}/p", endpoint_url=proxy.url, retry=FAST)
        with pytest.raises(PublishFailed, match=r"upload wheels/x/x.whl .*still failing after 3 attempts"):
            store.put_new("wheels/x/x.whl", b"w" * 100_000, "application/octet-stream")
        assert isinstance(store, S3Store) and store.sha256("wheels/x/x.whl") is None  # nothing half-written
    finally:
        proxy.close()


def test_objects_without_a_stored_checksum_are_hashed(bucket: str, s3_env: str) -> None:
    """Objects put by other tools (or stores without checksums): the stored bytes are streamed and hashed."""
    client(s3_env).put_object(Bucket=bucket, Key="p/plain.whl", Body=b"payload")
    store = open_store(f"s3://{bucket}/p", retry=FAST)
    assert store.sha256("plain.whl") == "239f59ed55e737c77147cf55ad0c1b030b6d7ee748a7426952f9b852d5a935e5"
