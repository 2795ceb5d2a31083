"""The playground: a page at ``/`` that edits an image through the API from the browser.

Plain HTML, JavaScript and CSS from ``app/static/`` (installed as package data of ``bdia.app``): no build
step and nothing loaded from elsewhere, so it works on a machine without internet. The page itself is
open and not an API operation (not in OpenAPI); the ``/v1`` calls it makes carry the API key the user
enters. Every file is served with a Content-Security-Policy that allows only this origin (and ``blob:``
and ``data:`` images), and with an ``ETag`` so a browser revalidates it cheaply.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..problems import not_found

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parents[1] / "static"
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
"""The files the page is made of and their media types: nothing else under ``static/`` is served."""
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _asset(name: str) -> tuple[bytes, str]:
    """A file's bytes and its ETag (read once per process)."""
    data = (STATIC / name).read_bytes()
    return data, f'"{hashlib.sha256(data).hexdigest()[:32]}"'


def _serve(name: str, request: Request) -> Response:
    if name not in ASSETS:
        raise not_found(f"/playground/{name}")
    data, etag = _asset(name)
    headers = {**HEADERS, "ETag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=ASSETS[name], headers=headers)


@router.api_route("/", methods=["GET", "HEAD"])
async def playground(request: Request) -> Response:
    """The playground page."""
    return _serve("index.html", request)


@router.api_route("/playground/{name}", methods=["GET", "HEAD"])
async def playground_asset(name: str, request: Request) -> Response:
    """The page's script, style sheet and icon."""
    return _serve(name, request)
