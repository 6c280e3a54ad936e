"""One CLIENT span around every request an `httpx.AsyncClient` sends, so a target adapter's
call, a probe, a notification or the gateway's call upstream shows in the trace of the incident
that made it.

Only Stanch's own services are told about the trace: a request to a host in `propagate_to`
(the gateway's and the API's, and STANCH_TRACE_PROPAGATE_HOSTS) carries the W3C `traceparent`
and the incident id as `baggage`; Slack, a webhook, a model vendor or Prometheus get neither.

Installed once per process by patching `httpx.AsyncClient.send`, as the official
opentelemetry-instrumentation-httpx does, rather than touching each call site. A span holds the
method, scheme, host, port and status: never the path (a Slack or webhook URL holds its secret
there), a query string, a header value or a body, which may hold a key, a prompt or an answer.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import httpx
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

TRACER_NAME = "stanch.telemetry.outgoing"
_PATCHED_MARK = "_stanch_traced"
PROPAGATION_HEADERS = ("traceparent", "tracestate", "baggage")


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def propagates_to(url: httpx.URL, hosts: frozenset[str]) -> bool:
    """Whether a request to `url` carries the trace: its host:port, or its host alone, is listed."""
    host = url.host.lower()
    return f"{host}:{_port(url)}" in hosts or host in hosts


def instrument_httpx(tracer_provider: trace.TracerProvider | None = None, *, propagate_to: Iterable[str] = ()) -> None:
    """Trace every `httpx.AsyncClient` request from now on; requests to `propagate_to` (host or
    host:port) also carry the trace on. Calling it again changes nothing."""
    original = httpx.AsyncClient.send
    if getattr(original, _PATCHED_MARK, False):
        return
    tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
    trusted_hosts = frozenset(host.strip().lower() for host in propagate_to if host.strip())

    @functools.wraps(original)
    async def send(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        url = request.url
        attributes: dict[str, str | int] = {
            "http.request.method": request.method,
            "server.address": url.host,
            "server.port": _port(url),
            "url.scheme": url.scheme,
        }
        with tracer.start_as_current_span(
            request.method, kind=SpanKind.CLIENT, attributes=attributes, record_exception=False, set_status_on_exception=False
        ) as span:
            if propagates_to(url, trusted_hosts):
                propagate.inject(request.headers)
            else:  # whatever put them there, Stanch's trace and baggage stay with Stanch
                for header in PROPAGATION_HEADERS:
                    request.headers.pop(header, None)
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
