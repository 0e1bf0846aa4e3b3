"""GET /admin: the admin dashboard, one page and its script, served by the admin function.

The page itself holds no data and needs no credential: the operator signs in on it with an
admin credential (a service token with the admin scope, or an admin's Supabase session token),
which the script keeps in the tab's sessionStorage and sends as a bearer to the same JSON API
everything else uses, so every figure and every action is authorised there, per request. No
build step: plain HTML, CSS and one script, under a content security policy that allows
nothing but this origin.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import Response

from shared.access.rules import PublicCaller

STATIC = Path(__file__).parent / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
MEDIA_TYPES = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "favicon.svg": "image/svg+xml",
}

router = APIRouter(tags=["dashboard"])


@cache
def _asset(name: str) -> bytes:
    return (STATIC / name).read_bytes()


@router.get("/admin", include_in_schema=False)
async def dashboard(_: PublicCaller) -> Response:
    """The dashboard page (no data in it: the script fetches it with the operator's token)."""
    return Response(
        _asset("index.html"),
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY},
    )


@router.get("/admin/static/{name}", include_in_schema=False)
async def dashboard_asset(
    name: Literal["dashboard.js", "dashboard.css", "favicon.svg"], _: PublicCaller
) -> Response:
    return Response(_asset(name), media_type=MEDIA_TYPES[name])
