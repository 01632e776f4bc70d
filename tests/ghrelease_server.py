"""A CONTRACT STAND-IN for GitHub's release REST API (it is not GitHub), served on 127.0.0.1 for tests.

It implements the documented behaviour wheelfarm relies on
(https://docs.github.com/en/rest/releases/releases, .../releases/assets):

- ``GET /repos/{owner}/{repo}/releases/tags/{tag}`` (404 when absent), ``POST /repos/{owner}/{repo}/releases``
  (201; 422 ``already_exists`` for a taken tag);
- ``GET /repos/{owner}/{repo}/releases/{id}/assets?per_page=&page=`` with ``Link`` pagination headers
  (``per_page`` capped at ``per_page_max``, default 30 like GitHub);
- uploads to the release's ``upload_url`` (``{base}/uploads/…/assets{?name,label}``): 201, or 422
  ``already_exists`` on a duplicate asset name; assets carry ``state``, ``size``, ``digest`` ("sha256:…") and
  ``browser_download_url``;
- ``GET /repos/{owner}/{repo}/releases/assets/{id}`` (JSON, or 302 to the download URL with
  ``Accept: application/octet-stream``), ``DELETE`` (204);
- ``GET /{owner}/{repo}/releases/download/{tag}/{name}`` (the browser download, no auth);
- ``Authorization: Bearer|token <token>`` (401 "Bad credentials" otherwise) and ``X-RateLimit-*`` headers on
  every API answer.

Fault injection for tests: ``drop_uploads`` (close the connection half-way through an upload, leaving a
``starter`` asset as GitHub does), ``rate_limited`` (answer 403 with ``X-RateLimit-Remaining: 0`` and a reset
1 s ahead).
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Asset:
    id: int
    release_id: int
    name: str
    content_type: str
    data: bytes
    state: str = "uploaded"


@dataclass
class StandInState:
    token: str
    repos: set[str]
    per_page_max: int = 30
    rate_limit: int = 5000
    drop_uploads: int = 0
    rate_limited: int = 0
    # misbehaviours for the fault suite (a broken proxy, a hostile server, GitHub's own refusals)
    self_link: bool = False  # the asset list's Link: rel="next" points at the page itself
    retry_after_date: int = 0  # this many requests get 429 with Retry-After as an HTTP-date (RFC 9110)
    echo_headers: bool = False  # error bodies echo the request's headers, Authorization included
    refuse_release: str = ""  # creating a release answers 422 with this validation message
    releases: dict[int, dict[str, Any]] = field(default_factory=dict)
    assets: dict[int, Asset] = field(default_factory=dict)
    log: list[tuple[str, str, int]] = field(default_factory=list)
    used: int = 0
    next_id: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id


class GitHubStandIn:
    """``with GitHubStandIn(repos={"acme/wheels"}) as gh: gh.base`` → ``http://127.0.0.1:<port>``."""

    def __init__(self, *, token: str = "test-token", repos: set[str] | None = None, per_page_max: int = 30):
        self.state = StandInState(token=token, repos=repos or {"acme/wheels"}, per_page_max=per_page_max)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.state.releases = {}
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> GitHubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def asset_names(self) -> list[str]:
        with self.state.lock:
            return sorted(a.name for a in self.state.assets.values())


def _handler(state: StandInState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        # ------------------------------------------------------------------------------- responses

        def _send(
            self,
            status: int,
            body: bytes = b"",
            *,
            ctype: str = "application/json",
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            with state.lock:
                state.log.append((self.command, self.path, status))

        def _json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(doc).encode(), headers={**self._rate_headers(), **(headers or {})})

        def _rate_headers(self, remaining: int | None = None) -> dict[str, str]:
            with state.lock:
                state.used += 1
                left = max(0, state.rate_limit - state.used) if remaining is None else remaining
            return {
                "X-RateLimit-Limit": str(state.rate_limit),
                "X-RateLimit-Remaining": str(left),
                "X-RateLimit-Used": str(state.used),
                "X-RateLimit-Reset": str(int(time.time()) + 3600),
                "X-RateLimit-Resource": "core",
            }

        def _error(self, status: int, message: str, errors: list[dict[str, str]] | None = None) -> None:
            doc: dict[str, Any] = {
                "message": message,
                "documentation_url": "https://docs.github.com/rest",
                "status": str(status),
            }
            if errors:
                doc["errors"] = errors
            if state.echo_headers:  # first, as a server that dumps the request would
                doc = {"request_headers": {"Authorization": self.headers.get("Authorization", "")}, **doc}
            self._json(status, doc)

        # ---------------------------------------------------------------------------------- helpers

        def _base(self) -> str:
            return f"http://127.0.0.1:{self.server.server_address[1]}"

        def _authorized(self) -> bool:
            auth = self.headers.get("Authorization", "")
            if auth in (f"Bearer {state.token}", f"token {state.token}"):
                return True
            self._error(401, "Bad credentials")
            return False

        def _rate_limited(self) -> bool:
            with state.lock:
                dated = state.retry_after_date > 0
                state.retry_after_date -= dated
            if dated:
                when = email.utils.formatdate(time.time() + 1, usegmt=True)
                self._send(429, b'{"message": "slow down"}', headers={"Retry-After": when})
                return True
            with state.lock:
                if state.rate_limited <= 0:
                    return False
                state.rate_limited -= 1
            headers = self._rate_headers(remaining=0)
            headers["X-RateLimit-Reset"] = str(int(time.time()) + 1)
            self._send(403, json.dumps({"message": "API rate limit exceeded"}).encode(), headers=headers)
            return True

        def _release_json(self, rel: dict[str, Any]) -> dict[str, Any]:
            base, repo = self._base(), rel["repo"]
            return {
                "id": rel["id"],
                "tag_name": rel["tag_name"],
                "name": rel["name"],
                "url": f"{base}/repos/{repo}/releases/{rel['id']}",
                "html_url": f"{base}/{repo}/releases/tag/{rel['tag_name']}",
                "upload_url": f"{base}/uploads/repos/{repo}/releases/{rel['id']}/assets{{?name,label}}",
                "assets": [self._asset_json(a) for a in state.assets.values() if a.release_id == rel["id"]],
            }

        def _asset_json(self, a: Asset) -> dict[str, Any]:
            rel = state.releases[a.release_id]
            base, repo = self._base(), rel["repo"]
            return {
                "id": a.id,
                "name": a.name,
                "label": "",
                "state": a.state,
                "size": len(a.data),
                "content_type": a.content_type,
                "digest": "sha256:" + hashlib.sha256(a.data).hexdigest(),
                "url": f"{base}/repos/{repo}/releases/assets/{a.id}",
                "browser_download_url": f"{base}/{repo}/releases/download/{rel['tag_name']}/"
                f"{urllib.parse.quote(a.name)}",
            }

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))

        # ----------------------------------------------------------------------------------- routes

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            path, query = urllib.parse.unquote(url.path), urllib.parse.parse_qs(url.query)
            if m := re.fullmatch(r"/([^/]+/[^/]+)/releases/download/([^/]+)/([^/]+)", path):
                return self._download(m[1], m[2], m[3])
            if not self._authorized() or self._rate_limited():
                return None
            if m := re.fullmatch(r"/repos/([^/]+/[^/]+)/releases/tags/(.+)", path):
                with state.lock:
                    rel = next(
                        (r for r in state.releases.values() if r["repo"] == m[1] and r["tag_name"] == m[2]),
                        None,
                    )
                    doc = self._release_json(rel) if rel else None
                return self._json(200, doc) if doc else self._error(404, "Not Found")
            if m := re.fullmatch(r"/repos/([^/]+/[^/]+)/releases/(\d+)/assets", path):
                return self._list_assets(int(m[2]), query)
            if m := re.fullmatch(r"/repos/([^/]+/[^/]+)/releases/assets/(\d+)", path):
                with state.lock:
                    asset = state.assets.get(int(m[2]))
                    doc = self._asset_json(asset) if asset else None
                if doc is None:
                    return self._error(404, "Not Found")
                if self.headers.get("Accept") == "application/octet-stream":
                    return self._send(302, b"", headers={"Location": doc["browser_download_url"]})
                return self._json(200, doc)
            return self._error(404, "Not Found")

        def _list_assets(self, release_id: int, query: dict[str, list[str]]) -> None:
            per_page = min(int(query.get("per_page", ["30"])[0]), state.per_page_max, 100)
            page = int(query.get("page", ["1"])[0])
            with state.lock:
                if release_id not in state.releases:
                    return self._error(404, "Not Found")
                items = [
                    self._asset_json(a)
                    for a in sorted(state.assets.values(), key=lambda a: a.id)
                    if a.release_id == release_id
                ]
            last = max(1, -(-len(items) // per_page))
            link_base = f"{self._base()}{urllib.parse.urlsplit(self.path).path}?per_page={per_page}&page="
            links = []
            if page < last:
                links += [f'<{link_base}{page + 1}>; rel="next"', f'<{link_base}{last}>; rel="last"']
            if page > 1:
                links += [f'<{link_base}{page - 1}>; rel="prev"', f'<{link_base}1>; rel="first"']
            if state.self_link:
                links = [f'<{self._base()}{self.path}>; rel="next"']
            headers = {"Link": ", ".join(links)} if links else {}
            return self._json(200, items[(page - 1) * per_page : page * per_page], headers)

        def _download(self, repo: str, tag: str, name: str) -> None:
            with state.lock:
                asset = next(
                    (
                        a
                        for a in state.assets.values()
                        if a.name == name
                        and a.state == "uploaded"
                        and state.releases[a.release_id]["repo"] == repo
                        and state.releases[a.release_id]["tag_name"] == tag
                    ),
                    None,
                )
            if asset is None:
                return self._send(404, b"Not Found", ctype="text/plain")
            return self._send(200, asset.data, ctype="application/octet-stream")

        def do_POST(self) -> None:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            if not self._authorized() or self._rate_limited():
                return None
            if m := re.fullmatch(r"/repos/([^/]+/[^/]+)/releases", path):
                return self._create_release(m[1], json.loads(self._body() or b"{}"))
            if m := re.fullmatch(r"/uploads/repos/([^/]+/[^/]+)/releases/(\d+)/assets", path):
                return self._upload(int(m[2]))
            return self._error(404, "Not Found")

        def _create_release(self, repo: str, doc: dict[str, Any]) -> None:
            if repo not in state.repos:
                return self._error(404, "Not Found")
            if state.refuse_release:
                return self._error(422, "Validation Failed",
                                   [{"resource": "Release", "code": "custom", "field": "tag_name",
                                     "message": state.refuse_release}])
            with state.lock:
                if any(
                    r["repo"] == repo and r["tag_name"] == doc["tag_name"] for r in state.releases.values()
                ):
                    taken = [{"resource": "Release", "code": "already_exists", "field": "tag_name"}]
                    rel = None
                else:
                    rid = state.new_id()
                    rel = state.releases[rid] = {
                        "id": rid,
                        "repo": repo,
                        "tag_name": doc["tag_name"],
                        "name": doc.get("name") or doc["tag_name"],
                    }
                    rel_doc = self._release_json(rel)
            if rel is None:
                return self._error(422, "Validation Failed", taken)
            return self._json(201, rel_doc)

        def _upload(self, release_id: int) -> None:
            name = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("name", [""])[0]
            length = int(self.headers.get("Content-Length", "0"))
            with state.lock:
                drop = state.drop_uploads > 0
                state.drop_uploads -= 1 if drop else 0
                duplicate = any(a.name == name and a.release_id == release_id for a in state.assets.values())
                known = release_id in state.releases
            if drop:  # a broken connection half-way: GitHub keeps a "starter" asset holding the name
                self.rfile.read(length // 2)
                with state.lock:
                    if not duplicate:
                        aid = state.new_id()
                        state.assets[aid] = Asset(aid, release_id, name, "", b"", state="starter")
                    state.log.append(("POST", self.path, 0))
                self.close_connection = True
                return None
            data = self.rfile.read(length)
            if not known:
                return self._error(404, "Not Found")
            with state.lock:  # check again under the lock: two uploads of one name race here
                if any(a.name == name and a.release_id == release_id for a in state.assets.values()):
                    asset_doc = None
                else:
                    aid = state.new_id()
                    state.assets[aid] = Asset(
                        aid,
                        release_id,
                        name,
                        self.headers.get("Content-Type", "application/octet-stream"),
                        data,
                    )
                    asset_doc = self._asset_json(state.assets[aid])
            if asset_doc is None:
                return self._error(
                    422,
                    "Validation Failed",
                    [{"resource": "ReleaseAsset", "code": "already_exists", "field": "name"}],
                )
            return self._json(201, asset_doc)

        def do_PATCH(self) -> None:
            """Update a release asset (REST: PATCH /repos/{owner}/{repo}/releases/assets/{asset_id}): its name."""
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            if not self._authorized() or self._rate_limited():
                return None
            m = re.fullmatch(r"/repos/([^/]+/[^/]+)/releases/assets/(\d+)", path)
            if not m:
                return self._error(404, "Not Found")
            name = json.loads(self._body() or b"{}").get("name", "")
            with state.lock:
                asset = state.assets.get(int(m[2]))
                taken = asset is not None and any(
                    a.name == name and a.release_id == asset.release_id and a.id != asset.id
                    for a in state.assets.values())
                if asset is not None and not taken:
                    asset.name = name
                doc = self._asset_json(asset) if asset is not None and not taken else None
            if asset is None:
                return self._error(404, "Not Found")
            if doc is None:
                return self._error(422, "Validation Failed",
                                   [{"resource": "ReleaseAsset", "code": "already_exists", "field": "name"}])
            return self._json(200, doc)

        def do_DELETE(self) -> None:
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            if not self._authorized() or self._rate_limited():
                return None
            if m := re.fullmatch(r"/repos/([^/]+/[^/]+)/releases/assets/(\d+)", path):
                with state.lock:
                    gone = state.assets.pop(int(m[2]), None)
                return (
                    self._send(204, headers=self._rate_headers()) if gone else self._error(404, "Not Found")
                )
            return self._error(404, "Not Found")

    return Handler
