"""Server-sent events for the incident board: an incident's state, or the incident list, live.

`GET /v1/incidents/{id}/events` polls the workflow's `state` query about every second and
sends `event: state` whenever the JSON changed; `GET /v1/events` polls the incident list
(the same function, and the same filters, as `GET /v1/incidents`) about every two seconds
and sends `event: incidents`. A comment line (`: keep-alive`) goes out after 15 quiet
seconds so proxies keep the connection open. When Temporal or the worker is away the stream
stays open, says so once with `event: error`, and carries on polling: the board shows the
problem and recovers on its own. A stream ends when its client goes away.

Reading a stream takes what reading an incident takes (`current_responder`). Nothing here
keeps state of its own; every replica of the API can serve any stream. The credential is
checked again on every poll, so a stream ends when its JWT expires or its token is revoked.

A server stopping waits for open responses, and a board never closes its stream: whoever
runs the server calls `stop_streams(app)` when asked to stop (uvicorn: in `handle_exit`),
and every stream ends within one poll. The boards reconnect once the API is back.

Each stream holds a connection and polls Temporal, so they are capped (`StreamLimits`, from
the settings): a user may hold `board_streams_per_user` streams at once and the API
`board_streams_total`; one more is a 429 naming the limit (the board retries with back-off).
A stream ends after `board_stream_max_seconds`, with a comment saying so, and the board
reconnects: no stream outlives a proxy's patience or a revoked role for long.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send
from temporalio.client import Client
from temporalio.service import RPCError

from stanch.api.deps import ResponderDep, TemporalUnavailable, current_responder, get_client
from stanch.api.incidents import IncidentId, incident_state, list_incidents
from stanch.config.settings import BOARD_STREAM_MAX_SECONDS, BOARD_STREAMS_PER_USER, BOARD_STREAMS_TOTAL
from stanch.trust.responders import NotAuthenticated, Principal, ResponderAuth

log = logging.getLogger(__name__)

STATE_INTERVAL_S = 1.0
LIST_INTERVAL_S = 2.0
KEEP_ALIVE_S = 15.0
KEEP_ALIVE = ": keep-alive\n\n"
LIFETIME_OVER = ": this stream has lasted its maximum; reconnect\n\n"
# How soon a refused board may try again.
RETRY_AFTER_S = 10
MEDIA_TYPE = "text/event-stream"
# No caching and no proxy buffering: each event must reach the board when it is sent.
STREAM_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}

# The same rule as reading incidents: a signed-in responder of any role, unless --insecure-dev.
events_router = APIRouter(tags=["events"], dependencies=[Depends(current_responder)])

Read = Callable[[], Awaitable[Any]]


# --- framing and change detection (pure; unit-tested with fakes) ------------------------


def frame(event: str, data: Any) -> str:
    """One SSE message. `data` is sent as compact JSON; each line of it gets its own
    `data:` field, as the format requires (compact JSON has none, but a string may)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return f"event: {event}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


def describe_failure(exc: BaseException) -> str:
    """What the board shows while a read fails: the API's own words where it has them."""
    if isinstance(exc, HTTPException):
        detail = exc.detail
        return detail if isinstance(detail, str) else json.dumps(detail)
    if isinstance(exc, RPCError):
        return f"Temporal answered {exc.status.name}: {exc.message}"
    if isinstance(exc, TemporalUnavailable):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


async def poll_stream(
    read: Read,
    is_disconnected: Callable[[], Awaitable[bool]],
    *,
    event: str,
    interval: float,
    keep_alive: float = KEEP_ALIVE_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> AsyncIterator[str]:
    """Poll `read()` every `interval` seconds until the client leaves; yield a frame for each
    new value, `event: error` for each new failure, and a keep-alive comment after
    `keep_alive` seconds without sending anything.

    A failure forgets the last value, so the first good read after it is always sent: the
    board replaces its error banner with fresh data."""
    last_value: str | None = None
    last_error: str | None = None
    last_sent = clock()
    while not await is_disconnected():
        out: str | None = None
        try:
            value = json.dumps(jsonable_encoder(await read()), separators=(",", ":"), ensure_ascii=False)
        except Exception as exc:
            message = describe_failure(exc)
            if message != last_error:
                out = frame("error", {"detail": message})
                if not isinstance(exc, HTTPException | RPCError | TemporalUnavailable):
                    log.warning("event stream %s: read failed: %s", event, message)
            last_value, last_error = None, message
        else:
            if value != last_value:
                out = frame(event, value)
            last_value, last_error = value, None
        now = clock()
        if out is None and now - last_sent >= keep_alive:
            out = KEEP_ALIVE
        if out is not None:
            last_sent = now
            yield out
        await sleep(interval)


# --- caps ---------------------------------------------------------------------------------


class StreamLimits:
    """How many streams are open, per user and in all, against the caps. One per app; the
    API's event loop is its only user, so plain counters suffice."""

    def __init__(
        self,
        per_user: int = BOARD_STREAMS_PER_USER,
        total: int = BOARD_STREAMS_TOTAL,
        max_seconds: float = BOARD_STREAM_MAX_SECONDS,
    ) -> None:
        self.per_user, self.total, self.max_seconds = per_user, total, max_seconds
        self.open: Counter[str] = Counter()

    def acquire(self, who: str) -> Callable[[], None]:
        """Count one more stream for `who`, or raise 429 naming the limit. Returns the release,
        which may be called any number of times."""
        if sum(self.open.values()) >= self.total:
            raise HTTPException(
                429,
                detail=f"the API already serves {self.total} board event streams, the most it serves at once; "
                f"try again shortly (the board does so on its own)",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        if self.open[who] >= self.per_user:
            raise HTTPException(
                429,
                detail=f"{who} already has {self.per_user} board event streams open, the most one user may hold; "
                f"close a board tab or window you no longer need",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.open[who] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open[who] -= 1
                if self.open[who] <= 0:
                    del self.open[who]

        return release


def stream_limits(app: FastAPI) -> StreamLimits:
    """The app's limits, made on first use from its settings (the defaults without any)."""
    limits = getattr(app.state, "stream_limits", None)
    if limits is None:
        settings = getattr(app.state, "settings", None)
        limits = app.state.stream_limits = (
            StreamLimits(settings.board_streams_per_user, settings.board_streams_total, settings.board_stream_max_seconds)
            if settings is not None
            else StreamLimits()
        )
    return limits


def _who(request: Request, responder: Principal | None) -> str:
    # Nobody claimed (--insecure-dev): the address stands for the user.
    if responder is not None:
        return f"user {responder.user!r}"
    return f"client {request.client.host if request.client else 'unknown'}"


class _CountedStream(StreamingResponse):
    """A stream that gives its place back however it ends: finished, client gone, cancelled."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


# --- routes -------------------------------------------------------------------------------


async def _temporal(request: Request) -> Client:
    """The client `get_client` gives, asked anew on every poll (Temporal may come back),
    honouring a test's `dependency_overrides` like any route would."""
    provider = request.app.dependency_overrides.get(get_client, get_client)
    result = provider(request) if inspect.signature(provider).parameters else provider()
    return await result if inspect.isawaitable(result) else result


def _stopping(app: FastAPI) -> threading.Event:
    # A threading.Event: `stop_streams` is called from a signal handler.
    event = getattr(app.state, "event_streams_stopping", None)
    if event is None:
        event = app.state.event_streams_stopping = threading.Event()
    return event


def stop_streams(app: FastAPI) -> None:
    """End every open event stream of `app` (within one poll) and refuse new ones: call it
    as the server starts shutting down, or shutdown waits for the boards to go away."""
    _stopping(app).set()


def _stream(request: Request, responder: Principal | None, read: Read, *, event: str, interval: float) -> StreamingResponse:
    """The stream, counted against the caps (429 when over one) and ended after its lifetime."""
    stopping = _stopping(request.app)
    still_signed_in = _sign_in_check(request)
    signed_out: list[str] = []
    limits = stream_limits(request.app)
    release = limits.acquire(_who(request, responder))
    ends_at = time.monotonic() + limits.max_seconds
    lifetime_over: list[bool] = []

    async def gone() -> bool:
        if (problem := still_signed_in()) is not None:
            signed_out.append(problem)
            return True
        if time.monotonic() >= ends_at:
            lifetime_over.append(True)
            return True
        return stopping.is_set() or await request.is_disconnected()

    async def until_gone() -> AsyncIterator[str]:
        try:
            async for text in poll_stream(read, gone, event=event, interval=interval):
                yield text
            if signed_out:
                # The board reconnects when a stream ends, hears 401 and asks to sign in again.
                yield frame("error", {"detail": f"signed out: {signed_out[0]}"})
            elif lifetime_over:
                yield LIFETIME_OVER  # a comment: every client ignores it, and reconnects
        finally:
            release()

    return _CountedStream(until_gone(), release, media_type=MEDIA_TYPE, headers=STREAM_HEADERS)


def _sign_in_check(request: Request) -> Callable[[], str | None]:
    """Whether the credential that opened the stream still holds, asked on every poll: a JWT
    expires and a token is revoked while a board stays open. None while it holds."""
    auth: ResponderAuth = request.app.state.responders
    authorization = request.headers.get("authorization")

    def check() -> str | None:
        try:
            auth.vouch(authorization)
        except NotAuthenticated as err:
            return str(err)
        return None

    return check


def _list_parameters() -> Callable[..., dict[str, Any]]:
    """A dependency taking exactly the query parameters `GET /v1/incidents` takes (whatever
    filters it grows), minus the Temporal client, which the stream fetches per poll."""
    signature = inspect.signature(list_incidents, eval_str=True)

    def parameters(**kwargs: Any) -> dict[str, Any]:
        return kwargs

    parameters.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "client"], return_annotation=dict
    )
    return parameters


ListParameters = _list_parameters()


_STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {MEDIA_TYPE: {"schema": {"type": "string"}}}, "description": "a server-sent event stream"},
    429: {"description": "this user, or the API as a whole, already holds the most streams it may; `detail` names the limit"},
}


@events_router.get(
    "/v1/incidents/{incident_id}/events",
    response_class=StreamingResponse,
    responses={**_STREAM_RESPONSES, 404: {"description": "no incident with this id"}},
)
async def incident_events(incident_id: IncidentId, request: Request, responder: ResponderDep) -> StreamingResponse:
    """The incident's state as server-sent events: `event: state` (the JSON of
    `GET /v1/incidents/{id}`) at once and on every change, `event: error` while it cannot be
    read, `: keep-alive` comments when quiet."""

    async def read() -> Any:
        return await incident_state(await _temporal(request), incident_id)

    try:
        await read()
    except HTTPException as exc:
        if exc.status_code == 404:
            raise  # an unknown id is an answer, not a stream
    except Exception as exc:
        log.info("incident %s: streaming although its state cannot be read yet: %s", incident_id, describe_failure(exc))
    return _stream(request, responder, read, event="state", interval=STATE_INTERVAL_S)


@events_router.get("/v1/events", response_class=StreamingResponse, responses=_STREAM_RESPONSES)
async def incidents_events(
    request: Request, responder: ResponderDep, filters: dict[str, Any] = Depends(ListParameters)
) -> StreamingResponse:
    """The incident list as server-sent events: `event: incidents` (the JSON of
    `GET /v1/incidents` with the same filters) at once and on every change, `event: error`
    while it cannot be read, `: keep-alive` comments when quiet."""

    async def read() -> Any:
        return await list_incidents(client=await _temporal(request), **filters)

    return _stream(request, responder, read, event="incidents", interval=LIST_INTERVAL_S)
