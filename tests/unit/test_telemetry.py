"""Traces: the SERVER span per request, the CLIENT span per httpx request, the incident id on
every span, and the header that carries a trace into an incident's workflow. Spans go to an
in-memory exporter behind the same scrubber and processors a traced process has
(`tracing.tracer_provider`), on a provider of the test's own (the global one stays untouched)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.converter import PayloadConverter

from stanch.telemetry import tracing
from stanch.telemetry.incident_spans import INCIDENT_ID
from stanch.telemetry.outgoing import instrument_httpx, uninstrument_httpx
from stanch.telemetry.web import TracingMiddleware

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
SECRET = "sk-live-do-not-trace-me"
SLACK_TOKEN = "xoxWebhookToken9f8e7d6c5b4a"
SLACK_WEBHOOK = f"https://hooks.slack.com/services/T0001/B0001/{SLACK_TOKEN}"


def attribute_values(spans: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> str:
    return " ".join(str(value) for span in spans for value in (span.attributes or {}).values())


def test_no_endpoint_no_tracing_and_otel_sdk_disabled_or_exporter_none_wins():
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert not tracing.tracing_requested({})
    assert tracing.tracing_requested(endpoint)
    assert tracing.tracing_requested({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert not tracing.tracing_requested({**endpoint, "OTEL_SDK_DISABLED": "true"})
    assert not tracing.tracing_requested({**endpoint, "OTEL_TRACES_EXPORTER": "none"})
    assert tracing.tracing_requested({**endpoint, "OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing.start_tracing("stanch-test", {**endpoint, "OTEL_TRACES_EXPORTER": "none"}) is False
    assert tracing.temporal_interceptors() == []


def test_a_grpc_protocol_is_named_in_a_warning_the_http_one_is_not():
    assert tracing.protocol_warning({}) is None
    assert tracing.protocol_warning({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}) is None
    said = tracing.protocol_warning({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert said is not None and said.startswith("OTEL_EXPORTER_OTLP_PROTOCOL='grpc': Stanch exports traces over OTLP/HTTP")
    # The traces variable wins over the general one, as in the OpenTelemetry SDKs.
    both = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}
    assert (tracing.protocol_warning(both) or "").startswith("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='grpc'")
    assert tracing.protocol_warning({**both, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}) is None


def traced_app(provider: TracerProvider, seen_incident: list[object], continue_trace_under: tuple[str, ...] = ()) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/things/{thing_id}")
    @app.post("/admin/things/{thing_id}")
    async def thing(thing_id: str, request: Request) -> dict[str, str]:
        seen_incident.append(baggage.get_baggage(INCIDENT_ID))
        return {"thing": thing_id}

    app.add_middleware(TracingMiddleware, tracer_provider=provider, continue_trace_under=continue_trace_under)
    return app


def post_as_caller(app: FastAPI, path: str) -> httpx.Response:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.post(
                f"{path}?token={SECRET}",
                json={"prompt": SECRET},
                headers={"traceparent": TRACEPARENT, "baggage": f"{INCIDENT_ID}=forged-inc", "authorization": f"Bearer {SECRET}"},
            )

    return asyncio.run(call())


def test_a_public_request_starts_its_own_trace_linked_to_the_callers_and_ignores_its_baggage(exported):
    provider, exporter = exported
    seen_incident: list[object] = []
    assert post_as_caller(traced_app(provider, seen_incident), "/v1/things/t-1").status_code == 200
    [span] = exporter.get_finished_spans()
    assert span.name == "POST /v1/things/{thing_id}"
    assert span.kind is SpanKind.SERVER
    assert span.parent is None, "a caller does not choose our trace (nor, not-sampled, hide it)"
    assert format(span.context.trace_id, "032x") != CALLER_TRACE
    [link] = span.links
    assert (format(link.context.trace_id, "032x"), format(link.context.span_id, "016x")) == (CALLER_TRACE, CALLER_SPAN)
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/v1/things/{thing_id}"
    assert span.attributes["http.response.status_code"] == 200
    assert INCIDENT_ID not in span.attributes, "a caller's baggage names no incident of ours"
    assert seen_incident == [None], "nor is it current while the route runs"
    assert SECRET not in attribute_values([span]), "no query string, header value or body on a span"


def test_a_stanch_only_path_continues_the_callers_trace_but_takes_no_baggage_by_itself(exported):
    provider, exporter = exported
    seen_incident: list[object] = []
    app = traced_app(provider, seen_incident, continue_trace_under=("/admin/",))
    assert post_as_caller(app, "/admin/things/t-1").status_code == 200
    [span] = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == CALLER_TRACE
    assert span.parent is not None and format(span.parent.span_id, "016x") == CALLER_SPAN
    assert INCIDENT_ID not in (span.attributes or {}), "the incident id is adopted only after the caller's token passed"
    assert seen_incident == [None]


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


def test_every_httpx_request_gets_a_client_span_and_only_stanchs_own_services_get_the_trace(exported):
    provider, exporter = exported
    received: dict[str, httpx.Headers] = {}

    def anywhere(request: httpx.Request) -> httpx.Response:
        received[request.url.host] = request.headers
        return httpx.Response(503 if request.url.path == "/down" else 200, json={})

    async def calls() -> None:
        token = context.attach(baggage.set_baggage(INCIDENT_ID, "inc-9"))
        try:
            async with httpx.AsyncClient(transport=httpx.MockTransport(anywhere)) as client:
                await client.post(f"http://gateway:8300/admin/apply?key={SECRET}", headers={"authorization": f"Bearer {SECRET}"})
                await client.get("http://gateway:8300/down")
                await client.post(SLACK_WEBHOOK, json={"text": "incident opened"})
                # Put there by anyone else: Stanch's trace still does not leave for a third party.
                await client.post("http://vendor.example/v1/chat", headers={"traceparent": TRACEPARENT, "baggage": f"{INCIDENT_ID}=inc-9"})
                await client.get("http://traced-target:9000/state")
        finally:
            context.detach(token)

    instrument_httpx(provider, propagate_to=["gateway:8300", "Traced-Target"])
    instrument_httpx(provider)  # once is enough: a second call must not wrap twice
    try:
        asyncio.run(calls())
    finally:
        uninstrument_httpx()
    apply_span, down_span, slack_span, vendor_span, target_span = exporter.get_finished_spans()
    assert (apply_span.name, apply_span.kind) == ("POST", SpanKind.CLIENT)
    assert apply_span.attributes is not None
    assert (apply_span.attributes["server.address"], apply_span.attributes["server.port"]) == ("gateway", 8300)
    assert apply_span.attributes["http.response.status_code"] == 200
    assert apply_span.attributes[INCIDENT_ID] == "inc-9"
    assert received["gateway"]["traceparent"].split("-")[2] == format(down_span.context.span_id, "016x")
    assert f"{INCIDENT_ID}=inc-9" in received["gateway"]["baggage"]
    assert "traceparent" in received["traced-target"], "STANCH_TRACE_PROPAGATE_HOSTS: a host, any port"
    for third_party in ("hooks.slack.com", "vendor.example"):
        assert {"traceparent", "baggage", "tracestate"}.isdisjoint(received[third_party]), third_party
    assert slack_span.attributes is not None and slack_span.attributes["server.address"] == "hooks.slack.com"
    assert vendor_span.attributes is not None and target_span.attributes is not None
    assert down_span.status.status_code is StatusCode.ERROR
    spans = exporter.get_finished_spans()
    assert all("url.path" not in (span.attributes or {}) for span in spans), "a webhook URL holds its secret in the path"
    assert SLACK_TOKEN not in attribute_values(spans) and "/admin/apply" not in attribute_values(spans)
    assert SECRET not in attribute_values(spans)
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
