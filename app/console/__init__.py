"""The ops console at ``/ui``: static pages that read and act through the server's own HTTP API.

No separate server and no build step: an HTML page, one ES module and one stylesheet ship inside
the package. Every URL in them is relative, so the console works behind a path prefix
(``SERVE_ROOT_PATH``). The page allows no inline script (Content-Security-Policy); the admin token
lives in the browser's sessionStorage and travels only in the Authorization header.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from app.errors import NotFoundError

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: the ETag makes that a 304
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


class Asset:
    def __init__(self, path: Path) -> None:
        self.body = path.read_bytes()
        self.media_type = MEDIA_TYPES[path.suffix]
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'

    def response(self, request: Request) -> Response:
        headers = {**HEADERS, "ETag": self.etag}
        if request.headers.get("if-none-match") == self.etag:
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


ASSETS = {path.name: Asset(path) for path in STATIC.iterdir() if path.suffix in MEDIA_TYPES}
INDEX = ASSETS.pop("index.html")

router = APIRouter(include_in_schema=False)


@router.get("/ui")
async def console_root(request: Request) -> RedirectResponse:
    """The page's relative links need the trailing slash."""
    return RedirectResponse(request.scope.get("root_path", "") + "/ui/", status_code=308)


@router.get("/ui/")
async def console_page(request: Request) -> Response:
    return INDEX.response(request)


@router.get("/ui/static/{asset}")
async def console_asset(asset: str, request: Request) -> Response:
    found = ASSETS.get(asset)
    if found is None:
        raise NotFoundError(f"no console asset {asset!r}")
    return found.response(request)
