"""The web monitor (issue 25) at ``/`` of ``farm serve``: a page, a stylesheet and one ES module
(farm/service/monitor/), no build step. The files hold no data: the page signs in with an API key
and reads the same /v1 routes (and the event stream) as any client, so it sees what the key may
see and nothing more. Served with a strict Content-Security-Policy: its own scripts only."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response

from farm.errors import NotFound

FILES = Path(__file__).with_name("monitor")
TYPES = {"app.js": "text/javascript", "style.css": "text/css"}
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; style-src 'self'; "
                                      "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def monitor_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return Response((FILES / "index.html").read_bytes(), media_type="text/html; charset=utf-8", headers=HEADERS)

    @app.get("/monitor/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in TYPES:  # a fixed list: no path from the request reaches the file system
            raise NotFound(f"no file {name!r}")
        return Response((FILES / name).read_bytes(), media_type=TYPES[name], headers=HEADERS)
