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
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import StreamingResponse
from temporalio.client import Client
from temporalio.service import RPCError

from stanch.api.deps import TemporalUnavailable, current_responder, get_client
from stanch.api.incidents import IncidentId, incident_state, list_incidents
from stanch.trust.responders import NotAuthenticated, ResponderAuth

log = logging.getLogger(__name__)

STATE_INTERVAL_S = 1.0
LIST_INTERVAL_S = 2.0
KEEP_ALIVE_S = 15.0
KEEP_ALIVE = ": keep-alive\n\n"
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


def _stream(request: Request, read: Read, *, event: str, interval: float) -> StreamingResponse:
    stopping = _stopping(request.app)
    still_signed_in = _sign_in_check(request)
    signed_out: list[str] = []

    async def gone() -> bool:
        if (problem := still_signed_in()) is not None:
            signed_out.append(problem)
            return True
        return stopping.is_set() or await request.is_disconnected()

    async def until_gone() -> AsyncIterator[str]:
        async for text in poll_stream(read, gone, event=event, interval=interval):
            yield text
        if signed_out:
            # The board reconnects when a stream ends, hears 401 and asks to sign in again.
            yield frame("error", {"detail": f"signed out: {signed_out[0]}"})

    return StreamingResponse(until_gone(), media_type=MEDIA_TYPE, headers=STREAM_HEADERS)


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
    200: {"content": {MEDIA_TYPE: {"schema": {"type": "string"}}}, "description": "a server-sent event stream"}
}


@events_router.get(
    "/v1/incidents/{incident_id}/events",
    response_class=StreamingResponse,
    responses={**_STREAM_RESPONSES, 404: {"description": "no incident with this id"}},
)
async def incident_events(incident_id: IncidentId, request: Request) -> StreamingResponse:
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
    return _stream(request, read, event="state", interval=STATE_INTERVAL_S)


@events_router.get("/v1/events", response_class=StreamingResponse, responses=_STREAM_RESPONSES)
async def incidents_events(request: Request, filters: dict[str, Any] = Depends(ListParameters)) -> StreamingResponse:
    """The incident list as server-sent events: `event: incidents` (the JSON of
    `GET /v1/incidents` with the same filters) at once and on every change, `event: error`
    while it cannot be read, `: keep-alive` comments when quiet."""

    async def read() -> Any:
        return await list_incidents(client=await _temporal(request), **filters)

    return _stream(request, read, event="incidents", interval=LIST_INTERVAL_S)
