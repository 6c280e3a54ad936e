"""Stanch's doors as a caller meets them, with tracing on: the API's webhooks and the gateway's model
routes trust no caller's trace or baggage; the gateway's /admin/* (Stanch's worker, by token)
continues the worker's trace and names its incident; the models upstream never see Stanch's
trace. The real apps (the API over a stand-in Temporal, the gateway over a stub upstream), spans
in memory behind the scrubber a traced process exports through."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stanch.api.app import create_app as create_api
from stanch.config.settings import Settings
from stanch.gateway.app import create_app as create_gateway
from stanch.intake.sources import examples
from stanch.runbooks.loader import default_runbooks_dir, load_catalog
from stanch.telemetry import tracing
from stanch.telemetry.incident_spans import INCIDENT_ID
from stanch.telemetry.logs import JsonLogFormatter
from stanch.telemetry.outgoing import instrument_httpx, uninstrument_httpx
from stanch.telemetry.web import TracingMiddleware
from tests.openai_stub import Stub
from tests.unit.test_gateway import MODEL, upstreams
from tests.unit.test_intake_closing import FakeConnection, FakeTemporal

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"
FORGED = "forged-incident-0042"
FORGED_HEADERS = {"traceparent": TRACEPARENT, "baggage": f"{INCIDENT_ID}={FORGED}"}
TOKEN = "gw-admin-doors"


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Every log line of the test, as STANCH_LOG_FORMAT=json writes it."""
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    yield written
    root.removeHandler(handler)
    root.setLevel(level)


def traced_by(app: FastAPI, provider: TracerProvider) -> FastAPI:
    """The app's own TracingMiddleware, on the test's provider instead of the process's."""
    [middleware] = [m for m in app.user_middleware if m.cls is TracingMiddleware]
    middleware.kwargs["tracer_provider"] = provider
    return app


async def send(app: FastAPI, method: str, path: str, headers: dict[str, str], body: Any = None) -> httpx.Response:
    """One request straight into the app, past httpx.AsyncClient.send: what a caller sent arrives as sent."""
    transport = httpx.ASGITransport(app=app)
    request = httpx.Request(method, f"http://door{path}", headers=headers, json=body)
    response = await transport.handle_async_request(request)
    await response.aread()
    return response


class LoggingTemporal(FakeTemporal):
    """The stand-in Temporal, logging a line while it records a signal, as the SDK or Stanch may."""

    def __init__(self) -> None:
        super().__init__()
        record = self.workflow_service.signal_with_start_workflow_execution

        async def logged(request: Any, **kwargs: Any) -> Any:
            logging.getLogger("stanch.intake").info("recording a signal")
            return await record(request, **kwargs)

        self.workflow_service.signal_with_start_workflow_execution = logged  # type: ignore[method-assign]


def test_a_webhook_with_forged_baggage_names_the_routed_incident_not_the_forged_one(tmp_path: Path, exported, json_lines) -> None:
    provider, exporter = exported
    api = create_api(Settings(home=tmp_path), catalog=load_catalog(default_runbooks_dir()), insecure_dev=True)
    api.state.temporal = FakeConnection(LoggingTemporal())

    async def post() -> httpx.Response:
        async with api.router.lifespan_context(api):
            return await send(traced_by(api, provider), "POST", "/v1/alerts/grafana", FORGED_HEADERS, examples.GRAFANA)

    answer = asyncio.run(post())
    assert answer.status_code == 202, answer.text
    incident_id = json.loads(answer.content)["incidents"][0]["incident_id"]

    spans = exporter.get_finished_spans()
    assert FORGED not in json.dumps([dict(span.attributes or {}) for span in spans])
    [webhook] = [span for span in spans if span.name == "POST /v1/alerts/grafana"]
    assert webhook.parent is None and format(webhook.context.trace_id, "032x") != CALLER_TRACE
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    assert FORGED not in json_lines.getvalue()
    recording = [line for line in lines if line["message"] == "recording a signal"]
    assert recording and all(line["incident_id"] == incident_id for line in recording), "the intake's routing names it"


def test_the_gateway_trusts_a_trace_only_on_admin_calls_that_passed_the_token(tmp_path: Path, exported) -> None:
    provider, exporter = exported
    stub = Stub(answers={"bot-v1": "Hello.", "bot-v2": "Hello.", "safe-v1": "Hello."})
    gateway = create_gateway(tmp_path / "gw.db", upstreams(), admin_token=TOKEN, upstream_transport=httpx.ASGITransport(app=stub.app()))
    traced_by(gateway, provider)
    admin = {**FORGED_HEADERS, "authorization": f"Bearer {TOKEN}"}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}

    async def calls() -> list[int]:
        async with gateway.router.lifespan_context(gateway):
            return [
                (await send(gateway, "POST", "/v1/chat/completions", FORGED_HEADERS, chat)).status_code,
                (await send(gateway, "GET", "/admin/models", FORGED_HEADERS)).status_code,  # no token
                (await send(gateway, "GET", "/admin/models", admin)).status_code,
            ]

    instrument_httpx(provider)  # as `stanch gateway` starts it: propagating to no host
    try:
        assert asyncio.run(calls()) == [200, 401, 200]
    finally:
        uninstrument_httpx()
    by_name: dict[str, list[Any]] = {}
    for span in exporter.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    [public] = by_name["POST /v1/chat/completions"]
    assert public.parent is None and INCIDENT_ID not in (public.attributes or {})
    [upstream_call] = by_name["POST"]
    assert upstream_call.context.trace_id == public.context.trace_id, "the upstream call is in the gateway's own trace"
    [received] = stub.received
    assert {"traceparent", "tracestate", "baggage"}.isdisjoint(received["headers"]), "the model vendor sees no trace of Stanch's"
    [refused] = by_name["GET"]  # turned away before routing: no route to name it by
    [allowed] = by_name["GET /admin/models"]
    assert (refused.attributes or {})["http.response.status_code"] == 401
    assert INCIDENT_ID not in (refused.attributes or {}), "no token, no incident id taken from the call"
    assert format(allowed.context.trace_id, "032x") == CALLER_TRACE, "Stanch's worker: its trace continues"
    assert (allowed.attributes or {})[INCIDENT_ID] == FORGED
