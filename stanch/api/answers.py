"""How the API answers what is not a normal request: too large, unknown source, a bug, a
Temporal error.

A sender must always get an answer it can act on: 413 says to send less (and how much is
allowed), 404 lists the sources that exist, and a bug is a 500 with a request id to find in
the log — never a traceback in the body (it would leak internals, and senders cannot act on it
anyway). Validation errors keep FastAPI's 422 naming the field. A Temporal error is answered by
what would fix it (`temporal_error`): only what passes is a 503 with Retry-After.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.service import RPCError, RPCStatusCode

from stanch.intake.auth import IntakeAuthPolicy

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any real alert batch, far below memory trouble
# A responder's decision (comment, reason, note) is a Temporal update: far below its 2 MB limit.
MAX_DECISION_BODY_BYTES = 64 << 10
DECISION_PATHS = "/v1/incidents/"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# A caller's own X-Request-ID is kept when it is this tame (it ends up in log lines).
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


@dataclass(frozen=True)
class BodyLimit:
    """How large a body may be under `prefix`, and what to do about it when it is over."""

    prefix: str
    limit: int
    advice: str

    def message(self) -> str:
        if self.limit % (1 << 20) == 0:
            size = f"{self.limit >> 20} MiB"
        elif self.limit % (1 << 10) == 0:
            size = f"{self.limit >> 10} KiB"
        else:
            size = f"{self.limit} bytes"
        return f"request body is over the {size} limit ({self.limit} bytes){self.advice}"


# The first whose prefix matches the path applies; the last one matches every path.
BODY_LIMITS = (
    BodyLimit(DECISION_PATHS, MAX_DECISION_BODY_BYTES, " for a responder's decision; shorten the comment, reason or note"),
    BodyLimit("/", MAX_BODY_BYTES, "; send fewer alerts per delivery (Alertmanager: max_alerts; Grafana: Max Alerts)"),
)


class BodySizeLimit:
    """Answers 413 to bodies over their limit: at once when Content-Length says so, and by
    counting when it does not (chunked uploads). The body is buffered, at most the limit, and
    replayed to the app, so nothing downstream ever reads an oversized body.

    `limit` alone gives one limit for every path; `limits` gives one per path prefix
    (`BODY_LIMITS`: a responder's decision is held to less than an alert batch)."""

    def __init__(self, app: ASGIApp, limit: int | None = None, limits: Sequence[BodyLimit] = BODY_LIMITS) -> None:
        self.app = app
        self.limits = [BodyLimit("/", limit, BODY_LIMITS[-1].advice)] if limit is not None else list(limits)

    def _limit_for(self, path: str) -> BodyLimit:
        return next((limit for limit in self.limits if path.startswith(limit.prefix)), self.limits[-1])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope["path"])
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit.limit:
            await self._too_large(limit, scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the sender left; nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit.limit:
                await self._too_large(limit, scope, receive, send)
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

    async def _too_large(self, limit: BodyLimit, scope: Scope, receive: Receive, send: Send) -> None:
        log.warning("%s %s refused: body over %d bytes", scope["method"], scope["path"], limit.limit)
        response = JSONResponse({"detail": limit.message()}, status_code=413, headers={"Connection": "close"})
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


# --- Temporal errors ----------------------------------------------------------------------

# What Temporal says when a payload or message is over a size limit: "Blob data size exceeds
# limit." (INVALID_ARGUMENT), "grpc: received message larger than max (… vs. …)"
# (RESOURCE_EXHAUSTED), "Memo size exceeds limit.", "… exceeds size limit". Not "WorkflowId
# length exceeds limit": that is a refused request, not a too large one.
_TOO_LARGE = re.compile(r"size exceeds|exceeds (?:the )?size limit|larger than max|too large", re.IGNORECASE)
# One run of an incident has taken in as many signals as Temporal allows (10,000 by default):
# the worker hands the incident over to a new run, which takes them again. Until then a storm's
# next alert must be retried, not dropped: Temporal says INVALID_ARGUMENT all the same.
_RUN_FULL = re.compile(r"exceeded workflow execution limit for signal", re.IGNORECASE)
# The request itself is wrong: the same request fails the same way however often it is sent.
_REFUSED = frozenset({RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.FAILED_PRECONDITION, RPCStatusCode.OUT_OF_RANGE})
# Temporal refuses the API itself: its credentials, its permissions, or the server is too old
# for the call. The request is fine and the sender cannot fix it; an operator can, and a
# sender that retries 5xx (Alertmanager, Grafana) then delivers it: so 502, not a 4xx that
# would make it drop the alert.
_OPERATOR = frozenset({RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.UNIMPLEMENTED})


def _failing_over(error: RPCError) -> bool:
    """FAILED_PRECONDITION with NamespaceNotActiveFailure: a global namespace is failing over
    to another cluster, which passes."""
    try:
        details = error.grpc_status.details
    except Exception:  # the status bytes are not a GrpcStatus: nothing more to learn from them
        return False
    return any(detail.type_url.endswith(".NamespaceNotActiveFailure") for detail in details)


@dataclass(frozen=True)
class TemporalAnswer:
    status: int
    detail: str
    retry_after: int | None = None

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return JSONResponse({"detail": self.detail}, status_code=self.status, headers=headers)


def temporal_error(error: RPCError, retry_after: int) -> TemporalAnswer:
    """The answer to a Temporal RPC failure nothing else handled, by what would fix it:

    - 413: a payload over Temporal's size limit (INVALID_ARGUMENT or RESOURCE_EXHAUSTED saying so);
    - 503 with Retry-After: an incident's run full of signals, until a worker hands it over;
    - 422: a request Temporal refuses (INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE);
    - 502: Temporal refuses the API itself (PERMISSION_DENIED, UNAUTHENTICATED, UNIMPLEMENTED);
    - 503 with Retry-After: everything that passes (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED,
      ABORTED, RESOURCE_EXHAUSTED as rate limiting, INTERNAL, UNKNOWN, a namespace failing over...).
    """
    said = f"{error.status.name}: {error.message}"
    if error.status in (RPCStatusCode.INVALID_ARGUMENT, RPCStatusCode.RESOURCE_EXHAUSTED) and _TOO_LARGE.search(error.message):
        return TemporalAnswer(
            413, f"Temporal refused the request as too large ({said}); retrying the same request fails the same way: send less"
        )
    if _RUN_FULL.search(error.message):
        return TemporalAnswer(
            503,
            f"the incident's current run has taken in as many signals as Temporal allows ({said}); it takes them again "
            "once a worker hands it over to a new run: retry (is a worker running?)",
            retry_after,
        )
    if error.status in _REFUSED and not _failing_over(error):
        return TemporalAnswer(422, f"Temporal refused the request ({said}); retrying the same request fails the same way")
    if error.status in _OPERATOR:
        return TemporalAnswer(
            502,
            f"Temporal refused the API itself ({said}): an operator must fix the API's Temporal access "
            "(TLS or API key, namespace permissions, server version); the request was not carried out",
        )
    return TemporalAnswer(503, f"Temporal answered {said}; nothing was changed reliably, retry", retry_after)
