"""The S3 mirror (``s3://bucket/prefix``), any S3-compatible endpoint, through boto3.

- New files: ``PutObject`` with ``IfNoneMatch="*"`` (412 = the name exists) and ``ChecksumSHA256``, so S3
  itself verifies the bytes; ``sha256()`` reads that checksum back (``HeadObject`` with ``ChecksumMode``).
- Index state: ``PutObject`` with ``IfMatch=<ETag>`` (or ``IfNoneMatch="*"`` for the first one); 412 = lost
  race.
- Pages: S3's REST endpoint has no index documents, so each ``…/index.html`` is also written under its
  directory key (``…/simple/flash-attn/``): pip then works against
  ``<endpoint>/<bucket>/<prefix>/<variant>/simple/`` given anonymous read (a bucket policy allowing
  ``s3:GetObject`` on the prefix) as well as via a website endpoint or CloudFront.
- Credentials come from the standard boto3 chain and are never printed. Transient network errors and 5xx
  answers are retried with backoff (``RetryPolicy``), then reported as ``PublishFailed``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError

from ..errors import BadInput, PublishFailed
from . import STATE_NAME, RetryPolicy, Source, sha256_of, with_retries

T = TypeVar("T")
_TRANSIENT_CODES = {
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "ConditionalRequestConflict",
}
PAGE_CACHE = "no-cache"
FILE_CACHE = "public, max-age=31536000, immutable"


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (HTTPClientError, BotoConnectionError)):  # refused/reset/closed, timeouts
        return True
    return isinstance(exc, ClientError) and (_status(exc) >= 500 or _code(exc) in _TRANSIENT_CODES)


class S3Store:
    absolute_links = False
    flat_names = False

    def __init__(self, bucket: str, prefix: str, client: Any, retry: RetryPolicy) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.retry = retry
        self.description = f"s3://{bucket}/{self.prefix}"

    @classmethod
    def from_target(cls, rest: str, *, endpoint_url: str | None, retry: RetryPolicy) -> S3Store:
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise BadInput("--to s3://: no bucket given", hint="use s3://bucket/prefix")
        config = Config(
            retries={"total_max_attempts": 1},
            connect_timeout=10,
            read_timeout=120,
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        session = boto3.session.Session()  # a fresh credential chain per store, no process-wide cache
        client = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        store = cls(bucket, prefix, client, retry)
        store._check_bucket()
        return store

    # ------------------------------------------------------------------------------------------ plumbing

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return with_retries(f"{what} ({self.description})", fn, self.retry, _transient)
        except NoCredentialsError as exc:
            raise BadInput(
                f"{self.description}: no AWS credentials found",
                hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role "
                "(the standard boto3 chain)",
            ) from exc
        except ClientError as exc:  # what S3 refused (not transient): its reason and what to check, no traceback
            raise self._refused(what, exc) from exc

    def _refused(self, what: str, exc: ClientError) -> Exception:
        status, code = _status(exc), _code(exc)
        code = "" if code == str(status) else code
        message = str(exc.response.get("Error", {}).get("Message", "")) or "(no message: a HEAD has no body)"
        said = f"{self.description}: {what}: S3 answered HTTP {status}{' ' + code if code else ''}: {message}"
        if what == "check bucket" and status == 404:
            return BadInput(f"{self.description}: bucket {self.bucket!r} does not exist at "
                            f"{self.client.meta.endpoint_url}",
                            hint="create it, or fix --to / --endpoint-url / AWS_ENDPOINT_URL")
        if status == 403:
            return PublishFailed(said, hint="the credentials lack a permission: the policy must allow s3:ListBucket on "
                                            "the bucket and s3:GetObject/s3:PutObject on the prefix")
        if status in (400, 401) or code in ("InvalidToken", "ExpiredToken", "InvalidAccessKeyId",
                                            "SignatureDoesNotMatch"):
            return PublishFailed(said, hint="the credentials are invalid or expired (AWS_SESSION_TOKEN, "
                                            "AWS_ACCESS_KEY_ID, AWS_PROFILE): refresh them")
        return PublishFailed(said, hint="see S3's error above; rerunning is safe")

    def _check_bucket(self) -> None:
        self._call("check bucket", lambda: self.client.head_bucket(Bucket=self.bucket))

    def _put(self, name: str, src: Source, content_type: str, **conditions: str) -> bool:
        """PutObject with S3-verified sha256; False on 412 (a condition did not hold)."""
        digest = bytes.fromhex(sha256_of(src))
        cache = PAGE_CACHE if content_type.startswith("text/html") else FILE_CACHE

        def attempt() -> bool:
            body = src if isinstance(src, bytes) else open(src, "rb")  # noqa: SIM115 (closed below)
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self._key(name),
                    Body=body,
                    ContentType=content_type,
                    CacheControl=cache,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=base64.b64encode(digest).decode(),
                    Metadata={"sha256": digest.hex()},
                    **conditions,
                )
            except ClientError as exc:
                if _status(exc) == 412:
                    return False
                raise
            finally:
                if not isinstance(body, bytes):
                    body.close()
            return True

        return self._call(f"upload {name}", attempt)

    # ----------------------------------------------------------------------------------------- protocol

    def list_files(self, prefix: str = "") -> list[str]:
        def attempt() -> list[str]:
            out: list[str] = []
            strip = len(self._key(""))
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            )
            for page in pages:
                out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
            return sorted(n for n in out if n and not n.endswith("/"))

        return self._call("list", attempt)

    def get(self, name: str) -> bytes:
        def attempt() -> bytes:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read())

        return self._call(f"download {name}", attempt)

    def put_new(self, name: str, src: Source, content_type: str) -> bool:
        return self._put(name, src, content_type, IfNoneMatch="*")

    def overwrite(self, name: str, src: Source, content_type: str) -> None:
        self._put(name, src, content_type)

    def write_page(self, name: str, data: bytes, content_type: str) -> None:
        self._put(name, data, content_type)
        if name.endswith("/index.html"):
            self._put(name[: -len("index.html")], data, content_type)

    def list_pages(self) -> list[str]:
        return self.list_files("")

    def delete_page(self, name: str) -> None:
        keys = [self._key(name)] + ([self._key(name[: -len("index.html")])] if name.endswith("/index.html") else [])
        for key in keys:
            self._call(f"delete {name}", functools.partial(self.client.delete_object, Bucket=self.bucket, Key=key))

    def sha256(self, name: str) -> str | None:
        def attempt() -> str | None:
            try:
                head = self.client.head_object(
                    Bucket=self.bucket, Key=self._key(name), ChecksumMode="ENABLED"
                )
            except ClientError as exc:
                if _status(exc) == 404:
                    return None
                raise
            checksum = head.get("ChecksumSHA256")
            if checksum and "-" not in checksum:  # a whole-object checksum, not a multipart composite
                return base64.b64decode(checksum).hex()
            return ""  # the store keeps no sha256 for this object

        found = self._call(f"stat {name}", attempt)
        return self._hash_stored(name) if found == "" else found

    def _hash_stored(self, name: str) -> str:
        """sha256 of the stored bytes, streamed (for stores that keep no checksum)."""

        def attempt() -> str:
            h = hashlib.sha256()
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
            for chunk in body.iter_chunks(1 << 20):
                h.update(chunk)
            return h.hexdigest()

        return self._call(f"hash {name}", attempt)

    def read_state(self) -> tuple[bytes | None, str | None]:
        def attempt() -> tuple[bytes | None, str | None]:
            try:
                obj = self.client.get_object(Bucket=self.bucket, Key=self._key(STATE_NAME))
            except ClientError as exc:
                if _status(exc) == 404 or _code(exc) == "NoSuchKey":
                    return None, None
                raise
            return bytes(obj["Body"].read()), str(obj["ETag"])

        return self._call("read index state", attempt)

    def cas_state(self, data: bytes, token: str | None) -> bool:
        condition = {"IfMatch": token} if token else {"IfNoneMatch": "*"}
        return self._put(STATE_NAME, data, "application/json", **condition)

    def url_for(self, name: str) -> str:
        key = urllib.parse.quote(self._key(name), safe="/")
        endpoint = str(self.client.meta.endpoint_url).rstrip("/")
        return f"{endpoint}/{self.bucket}/{key}"
