"""Serve a local mirror over HTTP with PEP 691 content negotiation (static hosts cannot negotiate).

The mirror holds both forms of every index page (``index.html``: PEP 503, ``index.json``: PEP 691). A request for a
page's folder gets the form its ``Accept`` header prefers by q-value — ``application/vnd.pypi.simple.v1+json``,
``application/vnd.pypi.simple.v1+html`` or ``text/html`` (HTML when there is no ``Accept``, as PEP 691 says; 406
when nothing offered is acceptable) — with ``Vary: Accept``. Everything else (wheels, ``.metadata``, results) is
served as the static files they are. pip (>= 22.2) and uv both ask for JSON first. Binds 127.0.0.1 by default.
"""

from __future__ import annotations

import functools
import http.server
from pathlib import Path

JSON = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
OFFERED = (JSON, HTML_V1, "text/html")  # the server's own preference when q-values tie


def _ranges(accept: str) -> list[tuple[str, float]]:
    out = []
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media:
            out.append((media.lower(), q))
    return out


def _quality(offered: str, ranges: list[tuple[str, float]]) -> float:
    """The q of the most specific range matching ``offered`` (RFC 9110 12.5.1: exact > type/* > */*)."""
    kind = offered.split("/")[0]
    for wanted in (offered, f"{kind}/*", "*/*"):
        found = [q for media, q in ranges if media == wanted]
        if found:
            return max(found)
    return 0.0


def negotiate(accept: str | None) -> str | None:
    """The media type to send for a page (PEP 691), or None for 406."""
    if not accept or not accept.strip():
        return "text/html"
    ranges = _ranges(accept)
    scored = [(q, -rank, offered) for rank, offered in enumerate(OFFERED) if (q := _quality(offered, ranges)) > 0]
    return max(scored)[2] if scored else None


class MirrorHandler(http.server.SimpleHTTPRequestHandler):
    def send_head(self):
        folder = Path(self.translate_path(self.path))
        if not (folder.is_dir() and (folder / "index.html").is_file()):
            return super().send_head()
        if not self.path.split("?", 1)[0].endswith("/"):
            return super().send_head()  # the redirect to the folder URL
        media = negotiate(self.headers.get("Accept"))
        if media is None:
            self.send_error(406, f"offers {', '.join(OFFERED)}")
            return None
        if media == JSON and not (folder / "index.json").is_file():  # the mirror's home page has no JSON form
            media = "text/html"
        page = folder / ("index.json" if media == JSON else "index.html")
        data = open(page, "rb")  # noqa: SIM115 (http.server closes it after copyfile)
        self.send_response(200)
        self.send_header("Content-Type", media if media != "text/html" else "text/html; charset=utf-8")
        self.send_header("Content-Length", str(page.stat().st_size))
        self.send_header("Vary", "Accept")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.log_message('"%s" -> %s', self.requestline, media)
        return data


def server(mirror: Path, host: str = "127.0.0.1", port: int = 8000) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(MirrorHandler, directory=str(mirror))
    return http.server.ThreadingHTTPServer((host, port), handler)
