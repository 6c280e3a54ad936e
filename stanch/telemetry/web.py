"""One SERVER span per HTTP request, for the API and the gateway: a small ASGI middleware on
opentelemetry-api (there is no FastAPI instrumentation package here).

A public door trusts no caller's trace: anyone may send a webhook or a chat request, and a
`traceparent` marked not-sampled would hide the request from the trace, a `baggage` naming an
incident would put it on our spans and log lines. So each request starts a trace of its own,
with a span link to the caller's span (a backend still shows where it came from), and the
caller's baggage is never read. Only under `continue_trace_under` (the gateway's /admin/*, whose
token only Stanch's worker holds) does the span continue the caller's trace, and the incident id
the caller's baggage names is taken only once that token passed (`adopt_caller_incident`).

The span is named "METHOD route" (`POST /v1/alerts/{source}`), never the raw path, so a backend
groups requests by route; it holds the method, route, path, scheme and status code: never a
query string, a header value or a body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.telemetry import TelemetryConfig
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from stanch.telemetry.incident_spans import INCIDENT_ID
from stanch.telemetry.logs import note_incident_for_logs

TRACER_NAME = "stanch.telemetry.web"

# FastAPI (from 0.16x) traces itself once a tracer provider is set: a second span per request, spans
# per dependency and serialization, and exception messages, which may quote a request's body.
# `FastAPI(telemetry=FASTAPI_OWN_TELEMETRY_OFF)`: Stanch's one span per request, no more.
FASTAPI_OWN_TELEMETRY_OFF: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _carrier(headers: Any) -> dict[str, str]:
    # ASGI header names arrive lower-cased, as the W3C propagators look them up.
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in headers or []}


def adopt_caller_incident(headers: Any) -> str | None:
    """For a route whose caller was authenticated as Stanch itself (the gateway's /admin/* once
    its token passed): the incident id the caller's baggage names goes on the request's span and
    on its log lines. Returns it (None when the call names none)."""
    incident_id = baggage.get_baggage(INCIDENT_ID, propagate.extract(_carrier(headers)))
    if not incident_id:
        return None
    trace.get_current_span().set_attribute(INCIDENT_ID, str(incident_id))
    note_incident_for_logs(str(incident_id))
    return str(incident_id)


class TracingMiddleware:
    """Add it last (`app.add_middleware(TracingMiddleware)`), so it is the outermost and its span
    covers every other middleware's work (the gateway's admin token check, say).
    `continue_trace_under`: path prefixes whose callers are Stanch's own services (their span
    continues the caller's trace); everywhere else a request starts a trace of its own."""

    def __init__(
        self, app: ASGIApp, tracer_provider: trace.TracerProvider | None = None, continue_trace_under: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
        self.continue_trace_under = continue_trace_under

    def _parent(self, scope: Scope) -> tuple[context.Context, list[Link]]:
        """The context the request's span starts in (never the caller's baggage), and its links."""
        caller_span = trace.get_current_span(propagate.extract(_carrier(scope.get("headers")))).get_span_context()
        if not caller_span.is_valid:
            return context.Context(), []
        if scope.get("path", "").startswith(self.continue_trace_under):
            return trace.set_span_in_context(trace.NonRecordingSpan(caller_span), context.Context()), []
        return context.Context(), [Link(caller_span)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        parent, links = self._parent(scope)
        method = scope.get("method", "HTTP")
        attributes = {"http.request.method": method, "url.path": scope.get("path", ""), "url.scheme": scope.get("scheme", "http")}
        status_code: list[int] = []

        async def send_noting_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_code.append(message["status"])
            await send(message)

        # A fresh context, not the one the server runs in: nothing of another request, nothing of the caller's.
        token = context.attach(parent)
        try:
            with self.tracer.start_as_current_span(
                method,
                kind=SpanKind.SERVER,
                attributes=attributes,
                links=links,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    await self.app(scope, receive, send_noting_status)
                except Exception as exc:
                    span.set_attribute("error.type", type(exc).__name__)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    raise
                finally:
                    _describe(span, method, scope, status_code)
        finally:
            context.detach(token)


def _describe(span: trace.Span, method: str, scope: Scope, status_code: list[int]) -> None:
    """Name the span by its route (known once routing ran) and note the status it answered."""
    route = getattr(scope.get("route"), "path", None)
    if route:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
    if status_code:
        span.set_attribute("http.response.status_code", status_code[0])
        if status_code[0] >= 500:
            span.set_attribute("error.type", str(status_code[0]))
            span.set_status(Status(StatusCode.ERROR))
