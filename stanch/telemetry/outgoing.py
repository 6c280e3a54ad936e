"""One CLIENT span around every request an `httpx.AsyncClient` sends, with the W3C `traceparent`
(and the incident id, as baggage) sent along, so a target adapter's call, a probe, a
notification or the gateway's call upstream joins the trace of the incident that made it.

Installed once per process by patching `httpx.AsyncClient.send`, as the official
opentelemetry-instrumentation-httpx does, rather than touching each call site. A span holds the
method, host, port, path and status: never a query string, a header value or a body, which may
hold a key, a prompt or an answer.
"""

from __future__ import annotations

import functools
from typing import Any

import httpx
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

TRACER_NAME = "stanch.telemetry.outgoing"
_PATCHED_MARK = "_stanch_traced"


def instrument_httpx(tracer_provider: trace.TracerProvider | None = None) -> None:
    """Trace every `httpx.AsyncClient` request from now on. Calling it again changes nothing."""
    original = httpx.AsyncClient.send
    if getattr(original, _PATCHED_MARK, False):
        return
    tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)

    @functools.wraps(original)
    async def send(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        url = request.url
        attributes: dict[str, str | int] = {
            "http.request.method": request.method,
            "server.address": url.host,
            "server.port": url.port or (443 if url.scheme == "https" else 80),
            "url.scheme": url.scheme,
            "url.path": url.path,
        }
        with tracer.start_as_current_span(
            request.method, kind=SpanKind.CLIENT, attributes=attributes, record_exception=False, set_status_on_exception=False
        ) as span:
            propagate.inject(request.headers)
            try:
                response = await original(self, request, **kwargs)
            except Exception as exc:
                # The type only: an httpx error's message quotes the URL, query string and all.
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 400:
                span.set_attribute("error.type", str(response.status_code))
                span.set_status(Status(StatusCode.ERROR))
            return response

    setattr(send, _PATCHED_MARK, True)
    httpx.AsyncClient.send = send  # type: ignore[method-assign]


def uninstrument_httpx() -> None:
    """Put httpx back as it was (tests)."""
    current = httpx.AsyncClient.send
    if getattr(current, _PATCHED_MARK, False):
        httpx.AsyncClient.send = current.__wrapped__  # type: ignore[attr-defined,method-assign]
