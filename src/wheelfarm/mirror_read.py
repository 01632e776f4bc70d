"""Reading a published mirror over its URL (``file://``, ``http(s)://``): which wheels a project has, and where.

The global ``simple/<project>/`` page links the safe wheels directly and every variant's project page
(``../../<label>/simple/<project>/``) for the labelled ones (index.py says why); ``project_wheels`` follows both, so a
reader sees every wheel whatever the page holds. Used by ``plan`` (what is already built) and ``resolve`` (what fits).
"""

from __future__ import annotations

import html.parser
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

Getter = Callable[[str], "bytes | None"]  # URL → body, None when there is no such page (404/403, no such file)


class Links(html.parser.HTMLParser):
    """The ``href`` of every ``<a>`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def page_url(url: str) -> str:
    """What to open for an index URL: a file:// folder's ``index.html``, an http(s) URL as it is."""
    return url + "index.html" if url.startswith("file:") and url.endswith("/") else url


def get(url: str, *, timeout: float = 60) -> bytes | None:
    """One GET; None for a missing page. Other failures raise (``urllib.error.URLError``/``OSError``)."""
    try:
        with urllib.request.urlopen(page_url(url), timeout=timeout) as reply:
            return bytes(reply.read())
    except urllib.error.HTTPError as exc:
        if exc.code in (403, 404):  # S3 answers 403 for a missing key without list permission
            return None
        raise
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (FileNotFoundError, NotADirectoryError)):
            return None
        raise


def project_wheels(root: str, project: str, fetch: Getter = get) -> dict[str, str] | None:
    """``{wheel file name: URL}`` of a project on the mirror rooted at ``root``; None when the mirror has no page for
    it. URLs are absolute, without the ``#sha256`` fragment."""
    start = urllib.parse.urljoin(root.rstrip("/") + "/", f"simple/{project}/")
    body = fetch(start)
    if body is None:
        return None
    wheels: dict[str, str] = {}
    pending = [(start, body)]
    seen = {start}
    while pending:
        url, text = pending.pop()
        parser = Links()
        parser.feed(text.decode("utf-8", "replace"))
        for href in parser.hrefs:
            target = urllib.parse.urljoin(url, href).split("#", 1)[0]
            name = urllib.parse.unquote(target.rsplit("/", 1)[-1])
            if name.endswith(".whl"):
                wheels.setdefault(name, target)
            elif target.endswith(f"/simple/{project}/") and target not in seen and target.startswith(_root(root)):
                seen.add(target)
                sub = fetch(target)
                if sub is not None:
                    pending.append((target, sub))
    return wheels


def _root(root: str) -> str:
    return root.rstrip("/") + "/"
