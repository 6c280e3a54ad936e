"""How the API answers what is not a normal request: too large, unknown source, a bug.

A sender must always get an answer it can act on: 413 says to send less, 404 lists the
sources that exist, and a bug is a 500 with a request id to find in the log — never a
traceback in the body (it would leak internals, and senders cannot act on it anyway).
Validation errors keep FastAPI's 422 naming the field; Temporal outages are 503 (app.py).
"""

from __future__ import annotations

import logging
import re
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stanch.intake.auth import IntakeAuthPolicy

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any real alert batch, far below memory trouble
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# A caller's own X-Request-ID is kept when it is this tame (it ends up in log lines).
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _too_large_message(limit: int) -> str:
    size = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"
    return (
        f"request body is over the {size} limit ({limit} bytes); send fewer alerts per delivery "
        "(Alertmanager: max_alerts; Grafana: Max Alerts)"
    )


class BodySizeLimit:
    """Answers 413 to bodies over `limit` bytes: at once when Content-Length says so, and
    by counting when it does not (chunked uploads). The body is buffered, at most `limit`
    bytes, and replayed to the app, so nothing downstream ever reads an oversized body."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the sender left; nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        log.warning("%s %s refused: body over %d bytes", scope["method"], scope["path"], self.limit)
        response = JSONResponse({"detail": _too_large_message(self.limit)}, status_code=413, headers={"Connection": "close"})
        await response(scope, receive, send)


class RequestId:
    """Gives every request an id (the caller's X-Request-ID when it is tame), kept on
    `request.state.request_id` and echoed in the X-Request-ID response header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if _SAFE_REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("ascii"))]
            await send(message)

        await self.app(scope, receive, with_request_id)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Last resort for exceptions nothing else handled. The traceback goes to the log (the
    server logs it again as the exception propagates); the body only says where to look."""
    request_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex
    log.error("internal error on %s %s [request_id=%s]: %s", request.method, request.url.path, request_id, type(exc).__name__)
    return JSONResponse({"detail": "internal error; see the API log", "request_id": request_id}, status_code=500)


def _route_paths(app: FastAPI) -> list[str]:
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before lazily included routers: app.routes is already flat
        return [getattr(route, "path", "") for route in app.routes]
    return [context.path or "" for context in iter_route_contexts(app.routes)]


def served_alert_sources(app: FastAPI) -> list[str]:
    """The `/v1/alerts/<source>` routes this app really serves, whoever added them."""
    paths = [path for path in _route_paths(app) if path.startswith("/v1/alerts/") and "{" not in path]
    return sorted({path.removeprefix("/v1/alerts/").strip("/") for path in paths})


def add_unknown_source_route(app: FastAPI) -> None:
    """A catch-all under /v1/alerts; it must be added after every real alert route, since
    routes match in order."""

    @app.post("/v1/alerts/{source:path}", include_in_schema=False)
    async def unknown_alert_source(source: str, request: Request) -> JSONResponse:
        policy: IntakeAuthPolicy = request.app.state.intake_auth
        known = [name for name in served_alert_sources(request.app) if policy.for_source(name).enabled]
        shown = source if len(source) <= 64 else source[:64] + "..."
        return JSONResponse(
            {"detail": f"no alert source {shown!r}; POST to /v1/alerts/<source> with one of: {', '.join(known)}"},
            status_code=404,
        )
