"""One SERVER span per HTTP request, for the API and the gateway: a small ASGI middleware on
opentelemetry-api (there is no FastAPI instrumentation package here).

It continues the caller's trace (W3C `traceparent`) and keeps its baggage (the incident id)
current while the route runs. The span is named "METHOD route" (`POST /v1/alerts/{source}`),
never the raw path, so a backend groups requests by route; it holds the method, route, path,
scheme and status code: never a query string, a header value or a body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.telemetry import TelemetryConfig
from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

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


class TracingMiddleware:
    """Add it last (`app.add_middleware(TracingMiddleware)`), so it is the outermost and its span
    covers every other middleware's work (the gateway's admin token check, say)."""

    def __init__(self, app: ASGIApp, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.app = app
        self.tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # ASGI header names arrive lower-cased, as the W3C propagators look them up.
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", [])}
        caller = propagate.extract(carrier)
        method = scope.get("method", "HTTP")
        attributes = {"http.request.method": method, "url.path": scope.get("path", ""), "url.scheme": scope.get("scheme", "http")}
        status_code: list[int] = []

        async def send_noting_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_code.append(message["status"])
            await send(message)

        # The caller's context is made current first, so its baggage (the incident id) stays
        # current under the new span while the route runs.
        token = context.attach(caller)
        try:
            with self.tracer.start_as_current_span(
                method, kind=SpanKind.SERVER, attributes=attributes, record_exception=False, set_status_on_exception=False
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
