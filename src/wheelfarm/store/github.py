"""The GitHub-release mirror (``github://owner/repo@tag``) through the REST API.

- Files become release assets named by their base name (``wheels/flash-attn/x.whl`` → asset ``x.whl``, with
  ``x.whl.metadata`` and ``x.whl.audit.json`` beside it); a second upload of a name answers 422, which is what
  makes ``put_new`` create-only. Index links point at each asset's ``browser_download_url`` (PEP 658 metadata
  is then ``<that URL>.metadata``, also an asset).
- Index pages cannot live in a release: they are written to a local folder (``--pages-dir``, default
  ``./pages``) that CI publishes with GitHub Pages; consumers use
  ``https://<owner>.github.io/<repo>/<variant>/simple/``.
- Index state: generation-numbered assets ``index-state.<n>.json``; compare-and-swap = uploading generation
  n+1, which only one writer can do (422 for the others). Old generations are pruned.
- API base ``$GITHUB_API_URL`` (default https://api.github.com), token ``$GITHUB_TOKEN`` (never printed).
  Connection errors and 5xx are retried with backoff; rate limits (403/429 with ``X-RateLimit-Remaining: 0``
  or ``Retry-After``) wait for the reset when it is near, else fail clearly.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import os
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name, parse_wheel_filename

from ..errors import BadInput, PublishFailed
from . import RetryPolicy, Source, sha256_of
from .local import LocalStore

STATE_RE = re.compile(r"^index-state\.(\d+)\.json$")
MAX_RATE_WAIT_S = 90.0
MAX_PAGES = 1000  # 100 assets a page: far more than a release holds
KEEP_STATE_GENERATIONS = 3
_TARGET_RE = re.compile(r"^(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+)@(?P<tag>[^\s@]+)$")


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # handled by the caller: asset downloads must not carry the token to the CDN


@dataclass
class GitHubApi:
    """A tiny REST client: auth header, retries with backoff, rate-limit waits, ``Link`` pagination."""

    base: str
    token: str = field(repr=False)
    retry: RetryPolicy
    opener: urllib.request.OpenerDirector = field(
        default_factory=lambda: urllib.request.build_opener(_NoRedirect), repr=False
    )

    def url(self, path: str) -> str:
        return self.base.rstrip("/") + path

    def request(
        self,
        method: str,
        url: str,
        *,
        body: Source | None = None,
        auth: bool = True,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        what = f"GitHub {method} {urllib.parse.urlsplit(url).path}"
        last: BaseException | None = None
        for attempt in range(self.retry.attempts):
            try:
                reply = self._send(method, url, body, auth, headers or {})
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = exc
            else:
                wait = _rate_limit_wait(reply)
                if wait is None and reply.status < 500:
                    return reply
                if wait is not None and wait > MAX_RATE_WAIT_S:
                    raise PublishFailed(
                        f"{what}: GitHub API rate limit exhausted "
                        f"(limit {reply.headers.get('X-RateLimit-Limit')}, resets in {wait:.0f}s)",
                        hint="wait for the reset or use a token with a higher limit",
                    )
                last = PublishFailed(f"HTTP {reply.status}: {_said(reply, 200)}")
                if wait is not None:
                    time.sleep(wait)
                    continue
            if attempt + 1 < self.retry.attempts:
                time.sleep(self.retry.delay(attempt))
        raise PublishFailed(
            f"{what}: still failing after {self.retry.attempts} attempts: {last}",
            hint="check the network and GITHUB_API_URL; rerunning is safe",
        )

    def _send(self, method: str, url: str, body: Source | None, auth: bool, headers: dict[str, str]) -> Reply:
        hdrs = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "wheelfarm",
            **headers,
        }
        if auth:
            hdrs["Authorization"] = f"Bearer {self.token}"
        stream = open(body, "rb") if isinstance(body, Path) else None  # noqa: SIM115 (closed below)
        if body is not None:
            hdrs["Content-Length"] = str(body.stat().st_size if isinstance(body, Path) else len(body))
        data = stream if stream is not None else body if isinstance(body, bytes) else None
        req = urllib.request.Request(url, data=data, headers=hdrs, method=method)
        try:
            with self.opener.open(req, timeout=120) as resp:
                return Reply(resp.status, resp.headers, resp.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, exc.headers, exc.read())
        finally:
            if stream:
                stream.close()

    def paginate(self, url: str) -> list[Any]:
        """Follow ``Link: rel="next"``, at most MAX_PAGES pages and never the same URL twice."""
        items: list[Any] = []
        next_url: str | None = url
        seen: set[str] = set()
        while next_url:
            if next_url in seen or len(seen) >= MAX_PAGES:
                why = "links back to a page already read" if next_url in seen else f"goes past {MAX_PAGES} pages"
                raise PublishFailed(f"GitHub's pagination {why}: {_redact(next_url)}",
                                    hint="a proxy or API stand-in is rewriting Link headers; check GITHUB_API_URL")
            seen.add(next_url)
            reply = self.checked("GET", next_url)
            items.extend(reply.json())
            next_url = _next_link(reply.headers.get("Link", ""))
        return items

    def checked(self, method: str, url: str, ok: tuple[int, ...] = (200,), **kw: Any) -> Reply:
        return expect(self.request(method, url, **kw), method, url, ok)


def expect(reply: Reply, method: str, url: str, ok: tuple[int, ...] = (200,)) -> Reply:
    """``reply`` if its status is in ``ok``; else BadInput (401: token rejected) or PublishFailed."""
    path = urllib.parse.urlsplit(url).path
    if reply.status == 401:
        raise BadInput(
            f"GitHub answered 401 for {path}: GITHUB_TOKEN was rejected",
            hint="use a token with contents:write on the repository",
        )
    if reply.status not in ok:
        raise PublishFailed(
            f"GitHub {method} {path}: HTTP {reply.status}: {_said(reply)}"
        )
    return reply


def _said(reply: Reply, limit: int = 300) -> str:
    """The start of a reply's body, printable: decoded and redacted."""
    return _redact(reply.body[:limit].decode(errors="replace"))


def _redact(text: str) -> str:
    """Error bodies and URLs as printed: the token (and any credential-looking header value) replaced."""
    token = os.environ.get("GITHUB_TOKEN", "")
    if token:
        text = text.replace(token, "***")
    return re.sub(r"(?i)\b(authorization|bearer|token)([\"':=\s]+)([A-Za-z0-9_\-.]{8,})", r"\1\2***", text)


def _retry_after(value: str) -> float:
    """``Retry-After``: delta-seconds or an HTTP-date (RFC 9110 10.2.3); unreadable: a short wait."""
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 1.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


def _rate_limit_wait(reply: Reply) -> float | None:
    if reply.status not in (403, 429):
        return None
    if reply.headers.get("Retry-After"):
        return _retry_after(reply.headers["Retry-After"])
    if reply.headers.get("X-RateLimit-Remaining") == "0":
        return max(0.0, float(reply.headers.get("X-RateLimit-Reset", "0")) - time.time()) + 0.5
    return None


def _next_link(link: str) -> str | None:
    for part in link.split(","):
        m = re.search(r'<([^>]+)>\s*;\s*rel="next"', part)
        if m:
            return m.group(1)
    return None


def _asset_name(name: str) -> str:
    return name.rsplit("/", 1)[-1]


class GitHubStore:
    absolute_links = True
    flat_names = True

    def __init__(self, api: GitHubApi, owner: str, repo: str, tag: str, pages: LocalStore) -> None:
        self.api, self.owner, self.repo, self.tag, self.pages = api, owner, repo, tag, pages
        self.description = f"github://{owner}/{repo}@{tag} (pages: {pages.root})"
        self.release = self._get_or_create_release()

    @classmethod
    def from_target(cls, rest: str, *, pages_dir: Path, retry: RetryPolicy) -> GitHubStore:
        m = _TARGET_RE.match(rest)
        if not m:
            raise BadInput(f"--to github://{rest}: expected github://owner/repo@tag")
        token = os.environ.get("GITHUB_TOKEN", "")
        if not token:
            raise BadInput(
                "GITHUB_TOKEN is not set: publishing to a GitHub release needs a token",
                hint="export GITHUB_TOKEN (in Actions: ${{ secrets.GITHUB_TOKEN }}, contents: write)",
            )
        api = GitHubApi(os.environ.get("GITHUB_API_URL") or "https://api.github.com", token, retry)
        return cls(api, m["owner"], m["repo"], m["tag"], LocalStore(pages_dir))

    # ------------------------------------------------------------------------------------------ plumbing

    def _repo_path(self, rest: str) -> str:
        return self.api.url(f"/repos/{self.owner}/{self.repo}{rest}")

    def _get_or_create_release(self) -> dict[str, Any]:
        by_tag = self._repo_path(f"/releases/tags/{urllib.parse.quote(self.tag)}")
        reply = self.api.request("GET", by_tag)
        if reply.status == 200:
            return dict(reply.json())
        if reply.status == 401:
            expect(reply, "GET", by_tag)
        body = json.dumps({"tag_name": self.tag, "name": self.tag}).encode()
        created = self.api.request(
            "POST", self._repo_path("/releases"), body=body, headers={"Content-Type": "application/json"}
        )
        if created.status == 201:
            return dict(created.json())
        if created.status == 404:
            raise BadInput(
                f"github://{self.owner}/{self.repo}: repository not found or the token cannot see it"
            )
        expect(created, "POST", self._repo_path("/releases"), (422,))  # anything else: say what GitHub said
        again = self.api.request("GET", by_tag)  # 422: created by a racing publisher, or refused for a reason
        if again.status == 200:
            return dict(again.json())
        raise PublishFailed(f"GitHub refused to create release {self.tag!r} in {self.owner}/{self.repo} (HTTP 422): "
                            f"{_said(created)}",
                            hint="a tag name GitHub accepts, and a token with contents:write")

    def _assets(self) -> dict[str, dict[str, Any]]:
        url = self._repo_path(f"/releases/{self.release['id']}/assets?per_page=100")
        return {a["name"]: a for a in self.api.paginate(url)}

    def _asset(self, name: str) -> dict[str, Any] | None:
        return self._assets().get(_asset_name(name))

    def _upload(self, asset_name: str, src: Source, content_type: str) -> bool:
        """Upload one asset; False when the name is taken by a complete asset (HTTP 422)."""
        base = re.sub(r"\{.*\}$", "", self.release["upload_url"])
        url = f"{base}?name={urllib.parse.quote(asset_name)}"
        for _ in range(2):
            reply = self.api.request("POST", url, body=src, headers={"Content-Type": content_type})
            if reply.status == 201:
                return True
            if reply.status != 422:
                expect(reply, "POST", url, (201,))
            stale = self._assets().get(asset_name)
            if stale is None or stale.get("state") == "uploaded":
                return False
            self._delete(stale)  # a broken earlier upload left a non-"uploaded" asset holding the name
        return False

    def _delete(self, asset: dict[str, Any]) -> None:
        self.api.checked("DELETE", self._repo_path(f"/releases/assets/{asset['id']}"), ok=(204, 404))

    def _download(self, asset: dict[str, Any]) -> bytes:
        url = self._repo_path(f"/releases/assets/{asset['id']}")
        reply = self.api.checked("GET", url, ok=(200, 302), headers={"Accept": "application/octet-stream"})
        if reply.status == 302:  # follow to the CDN without the token
            reply = self.api.checked("GET", reply.headers["Location"], auth=False)
        return reply.body

    # ----------------------------------------------------------------------------------------- protocol

    def list_files(self, prefix: str = "") -> list[str]:
        out = []
        for name, asset in self._assets().items():
            wheel = name.split(".whl", 1)[0] + ".whl"
            if ".whl" not in name or asset.get("state", "uploaded") != "uploaded":
                continue
            project = canonicalize_name(parse_wheel_filename(wheel)[0])
            path = f"wheels/{project}/{name}"
            if path.startswith(prefix):
                out.append(path)
        return sorted(out)

    def get(self, name: str) -> bytes:
        asset = self._asset(name)
        if asset is None:
            raise PublishFailed(f"{self.description}: no asset {_asset_name(name)!r}")
        return self._download(asset)

    def put_new(self, name: str, src: Source, content_type: str) -> bool:
        return self._upload(_asset_name(name), src, content_type)

    def overwrite(self, name: str, src: Source, content_type: str) -> None:
        """Upload the new bytes under a staging name, delete the old asset, rename the new one into its place
        (PATCH). Release assets cannot be swapped in one step: the asset link fails only between the delete and
        the rename, but the Pages index names the old sha256 until the reindex that follows the state update (a
        kill in between leaves that mismatch until the publish is rerun). A failed step is an error, never ignored;
        staging assets of earlier, killed attempts are removed first. (The local and S3 stores replace under a
        new key instead: no window at all.)"""
        final = _asset_name(name)
        for leftover, asset in self._assets().items():
            if leftover.startswith(f"{final}.replacing-"):
                self._delete(asset)
        staging = f"{final}.replacing-{secrets.token_hex(4)}"
        if not self._upload(staging, src, content_type):
            raise PublishFailed(f"{self.description}: could not upload the replacement of {final}",
                                hint="rerun the same publish --replace")
        assets = self._assets()
        if final in assets:
            self._delete(assets[final])
        renamed = self.api.request("PATCH", self._repo_path(f"/releases/assets/{assets[staging]['id']}"),
                                   body=json.dumps({"name": final}).encode(),
                                   headers={"Content-Type": "application/json"})
        expect(renamed, "PATCH", self._repo_path("/releases/assets/…"), (200,))

    def sha256(self, name: str) -> str | None:
        asset = self._asset(name)
        if asset is None or asset.get("state", "uploaded") != "uploaded":
            return None
        digest = str(asset.get("digest") or "")
        return (
            digest.removeprefix("sha256:")
            if digest.startswith("sha256:")
            else sha256_of(self._download(asset))
        )

    def read_state(self) -> tuple[bytes | None, str | None]:
        states = sorted(
            (int(m[1]), a)
            for n, a in self._assets().items()
            if (m := STATE_RE.match(n)) and a.get("state", "uploaded") == "uploaded"
        )
        if not states:
            return None, None
        gen, asset = states[-1]
        return self._download(asset), str(gen)

    def cas_state(self, data: bytes, token: str | None) -> bool:
        gen = int(token) + 1 if token else 1
        if not self._upload(f"index-state.{gen:08d}.json", data, "application/json"):
            return False
        for name, asset in self._assets().items():
            m = STATE_RE.match(name)
            if m and int(m[1]) <= gen - KEEP_STATE_GENERATIONS:
                self._delete(asset)
        return True

    def write_page(self, name: str, data: bytes, content_type: str) -> None:
        self.pages.write_page(name, data, content_type)

    def list_pages(self) -> list[str]:
        return self.pages.list_pages()

    def delete_page(self, name: str) -> None:
        self.pages.delete_page(name)

    def url_for(self, name: str) -> str:
        asset = self._asset(name)
        if asset is not None:
            return str(asset["browser_download_url"])
        return self.pages.url_for(name)
