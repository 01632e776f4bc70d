"""``wheelfarm serve MIRROR``: the local mirror over HTTP, with PEP 691 content negotiation."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import log
from ..errors import BadInput
from ..serve import server

NAME = "serve"
HELP = "Serve a local mirror over HTTP (127.0.0.1 by default), negotiating PEP 691 JSON or PEP 503 HTML pages."


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mirror", type=Path, help="the local mirror folder (publish --to DIR)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")


def execute(args: argparse.Namespace) -> int:
    if not (args.mirror / "index.html").is_file():
        raise BadInput(f"{args.mirror} is not a published mirror (no index.html)",
                       hint="publish into it first: wheelfarm publish wheelhouse --to DIR")
    httpd = server(args.mirror, args.host, args.port)
    host, port = str(httpd.server_address[0]), int(httpd.server_address[1])
    log.info(f"serving {args.mirror} at http://{host}:{port}/ "
             f"(home page http://{host}:{port}/ ; the install lines: wheelfarm resolve --index-url http://{host}:{port})")
    print(f"http://{host}:{port}/", flush=True)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
    return 0
