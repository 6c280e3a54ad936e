"""Traces: the SERVER span per request, the CLIENT span per httpx request, the incident id on
every span, and the header that carries a trace into an incident's workflow. Spans go to an
in-memory exporter on a provider of the test's own (the process's global one stays untouched)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.converter import PayloadConverter

from stanch.telemetry import tracing
from stanch.telemetry.incident_spans import INCIDENT_ID, IncidentIdSpanProcessor
from stanch.telemetry.outgoing import instrument_httpx, uninstrument_httpx
from stanch.telemetry.web import TracingMiddleware

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
SECRET = "sk-live-do-not-trace-me"


@pytest.fixture
def exported() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(IncidentIdSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def attribute_values(spans: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> str:
    return " ".join(str(value) for span in spans for value in (span.attributes or {}).values())


def test_no_endpoint_no_tracing_and_otel_sdk_disabled_wins():
    assert not tracing.tracing_requested({})
    assert tracing.tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.tracing_requested({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert not tracing.tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"})
    assert tracing.start_tracing("stanch-test", {}) is False
    assert tracing.temporal_interceptors() == []


def test_one_server_span_per_request_named_by_route_continuing_the_callers_trace(exported):
    provider, exporter = exported
    app = FastAPI()
    seen_incident: list[object] = []

    @app.post("/v1/things/{thing_id}")
    async def thing(thing_id: str, request: Request) -> dict[str, str]:
        seen_incident.append(baggage.get_baggage(INCIDENT_ID))
        return {"thing": thing_id}

    app.add_middleware(TracingMiddleware, tracer_provider=provider)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.post(
                f"/v1/things/t-1?token={SECRET}",
                json={"prompt": SECRET},
                headers={"traceparent": TRACEPARENT, "baggage": f"{INCIDENT_ID}=inc-7", "authorization": f"Bearer {SECRET}"},
            )

    assert asyncio.run(call()).status_code == 200
    [span] = exporter.get_finished_spans()
    assert span.name == "POST /v1/things/{thing_id}"
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == CALLER_TRACE
    assert span.parent is not None and format(span.parent.span_id, "016x") == CALLER_SPAN
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/v1/things/{thing_id}"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes[INCIDENT_ID] == "inc-7"
    assert seen_incident == ["inc-7"], "the route runs with the caller's baggage current"
    assert SECRET not in attribute_values([span]), "no query string, header value or body on a span"


def test_a_server_error_marks_the_span_failed(exported):
    provider, exporter = exported
    app = FastAPI()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(SECRET)

    app.add_middleware(TracingMiddleware, tracer_provider=provider)

    async def call() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://api") as c:
            await c.get("/boom")

    asyncio.run(call())
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert SECRET not in (span.status.description or "") + attribute_values([span])
    assert not span.events, "no exception event: its message may quote anything"


def test_every_httpx_request_gets_a_client_span_and_sends_the_trace_on(exported):
    provider, exporter = exported
    received: list[httpx.Headers] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        received.append(request.headers)
        return httpx.Response(503 if request.url.path == "/down" else 200, json={})

    async def calls() -> None:
        token = context.attach(baggage.set_baggage(INCIDENT_ID, "inc-9"))
        try:
            async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as client:
                await client.post(f"http://gateway:8300/admin/apply?key={SECRET}", headers={"authorization": f"Bearer {SECRET}"})
                await client.get("http://gateway:8300/down")
        finally:
            context.detach(token)

    instrument_httpx(provider)
    instrument_httpx(provider)  # once is enough: a second call must not wrap twice
    try:
        asyncio.run(calls())
    finally:
        uninstrument_httpx()
    apply_span, down_span = exporter.get_finished_spans()
    assert (apply_span.name, apply_span.kind) == ("POST", SpanKind.CLIENT)
    assert apply_span.attributes is not None
    assert apply_span.attributes["server.address"] == "gateway"
    assert apply_span.attributes["url.path"] == "/admin/apply"
    assert apply_span.attributes["http.response.status_code"] == 200
    assert apply_span.attributes[INCIDENT_ID] == "inc-9"
    sent_trace = received[0]["traceparent"].split("-")[1]
    assert sent_trace == format(apply_span.context.trace_id, "032x")
    assert received[0]["traceparent"].split("-")[2] == format(apply_span.context.span_id, "016x")
    assert f"{INCIDENT_ID}=inc-9" in received[0]["baggage"]
    assert down_span.status.status_code is StatusCode.ERROR
    assert SECRET not in attribute_values([apply_span, down_span])
    assert not getattr(httpx.AsyncClient.send, "_stanch_traced", False), "uninstrument puts httpx back"


def test_activity_and_workflow_spans_get_the_incident_id_without_baggage(exported):
    provider, exporter = exported
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("RunWorkflow:IncidentWorkflow", attributes={"temporalWorkflowID": "inc-3"}):
        pass
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes[INCIDENT_ID] == "inc-3"


def test_signal_with_start_header_carries_the_trace_and_the_incident_id(exported, monkeypatch):
    provider, exporter = exported
    interceptor = TracingInterceptor(provider.get_tracer("temporal"))
    monkeypatch.setattr(tracing, "_interceptor", interceptor)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("POST /v1/alerts/{source}") as webhook:
        with tracing.signal_with_start_header("IncidentWorkflow", "inc-5") as header:
            [carrier] = PayloadConverter.default.from_payloads([header[interceptor.header_key]])
    start_span, webhook_span = exporter.get_finished_spans()
    assert start_span.name == "SignalWithStartWorkflow:IncidentWorkflow"
    assert start_span.parent is not None and start_span.parent.span_id == webhook.get_span_context().span_id
    assert carrier["traceparent"].split("-")[2] == format(start_span.context.span_id, "016x")
    assert carrier["baggage"] == f"{INCIDENT_ID}=inc-5"
    for span in (start_span, webhook_span):
        assert span.attributes is not None and span.attributes[INCIDENT_ID] == "inc-5"
    assert baggage.get_baggage(INCIDENT_ID) is None, "the incident's baggage ends with the call"


def test_tracing_off_the_signal_with_start_has_no_header():
    with tracing.signal_with_start_header("IncidentWorkflow", "inc-5") as header:
        assert header == {}
    assert trace.get_current_span() is trace.INVALID_SPAN
