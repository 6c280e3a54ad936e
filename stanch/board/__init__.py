"""The incident board: a web page served by the API, for responders on a laptop or a phone.

Plain HTML, CSS and JavaScript modules shipped inside this package — no build step, nothing
fetched from elsewhere. The page talks to the same API as the CLI (`/v1/...`), signs in the
way the API asks (`GET /v1/auth`), and follows incidents live over the server-sent events of
`stanch.api.events`.

`/board` is the incident list, `/board/incidents/{id}` one incident; both are the same page,
which reads its location. Assets live under `/board/assets/`. Every answer carries a strict
Content-Security-Policy: the page may talk to this API and nothing else.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse, Response

from stanch.api.incidents import IncidentId

ASSETS = {
    "board.css": "text/css; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "signin.js": "text/javascript; charset=utf-8",
    "list.js": "text/javascript; charset=utf-8",
    "incident.js": "text/javascript; charset=utf-8",
    "main.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Small files that change with each release: always revalidate, never serve stale JS.
    "Cache-Control": "no-cache",
}

board_router = APIRouter(include_in_schema=False)


@cache
def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _page() -> Response:
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


@board_router.get("/board")
async def board() -> Response:
    """The incident list."""
    return _page()


@board_router.get("/board/")
async def board_slash() -> RedirectResponse:
    return RedirectResponse("/board", status_code=308)


@board_router.get("/board/incidents/{incident_id}")
async def board_incident(incident_id: IncidentId) -> Response:
    """One incident; the page reads the id from its location."""
    return _page()


@board_router.get("/board/assets/{name}")
async def board_asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, detail=f"no board asset {name!r}")
    return Response(_read(name), media_type=media_type, headers=SECURITY_HEADERS)
