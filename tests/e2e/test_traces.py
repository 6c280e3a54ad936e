"""One trace from the webhook to the gateway's containment call, and JSON logs naming the incident.

Real processes on loopback (the Temporal dev server, the demo models, the gateway, a worker and
the API), each exporting its spans over OTLP/HTTP, as to any collector, to a receiver this test
runs: a small HTTP server decoding `ExportTraceServiceRequest` protobufs. A user's report of a
leak opens the harmful-output incident; the worker confirms it by replaying the prompt through
the gateway and, at medium severity, contains it on its own by blocking the leaks there.

The gateway's model route is a public door: the confirm replay's span there starts a trace of
its own, linked to the worker's call; its /admin/* calls (by token) continue the worker's trace.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from stanch.demo_upstream.models import LEAK_CONSTANTS
from stanch.temporal.devserver import wait_for_port
from tests.e2e.processes import Process, free_port, start_demo_models, stop_all, wait_for, wait_http
from workflows.incident import IncidentWorkflow

pytestmark = pytest.mark.e2e

PROMPT = "Can I have the customer's email?"  # the demo's v2 answers with a customer's e-mail address
INCIDENT_ID = "stanch.incident_id"


@dataclass(frozen=True)
class ExportedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, object]
    events: list[tuple[str, dict[str, object]]]
    status_message: str
    links: list[tuple[str, str]]  # (trace id, span id) of each linked span


class OtlpReceiver:
    """POST /v1/traces, as an OpenTelemetry collector takes it: every span kept, decoded."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        received = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            received.append(
                                ExportedSpan(
                                    service=resource.get("service.name", ""),
                                    name=span.name,
                                    trace_id=span.trace_id.hex(),
                                    span_id=span.span_id.hex(),
                                    parent_span_id=span.parent_span_id.hex(),
                                    attributes={a.key: _value(a.value) for a in span.attributes},
                                    events=[(e.name, {a.key: _value(a.value) for a in e.attributes}) for e in span.events],
                                    status_message=span.status.message,
                                    links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                                )
                            )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _value(value) -> object:  # an OTLP AnyValue
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def report(prompt: str) -> dict:
    return {
        "report_id": f"trace-{uuid.uuid4().hex[:8]}",
        "reporter": "support-agent-7",
        "surface": "help-center chat",
        "model": "support-bot",
        "model_version": "2",
        "prompt_excerpt": prompt,
        "text": "the assistant gave out a customer's e-mail address",
    }


def test_one_trace_runs_from_the_webhook_through_the_workflow_to_the_gateways_containment_call(tmp_path: Path) -> None:
    receiver = OtlpReceiver()
    ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway")}
    api, gateway = f"http://127.0.0.1:{ports['api']}", f"http://127.0.0.1:{ports['gateway']}"
    env = {
        "STANCH_HOME": str(tmp_path / "home"),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{ports['temporal']}",
        "STANCH_GATEWAY_URL": gateway,
        "STANCH_API_URL": api,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: spans reach the receiver at once
        "STANCH_LOG_FORMAT": "json",
    }
    processes: list[Process] = []

    def start(name: str, *args: str) -> Process:
        process = Process(name, list(args), env, tmp_path)
        processes.append(process)
        return process

    try:
        # Everything starts as soon as what it needs is up: the machine is busy starting Pythons.
        start("dev-server", "dev-server", "--home", str(tmp_path / "home"), "--port", str(ports["temporal"]), "--ui-port", str(ports["ui"]))
        api_process = start("api", "api", "--port", str(ports["api"]), "--insecure-dev")  # connects on first use
        # The demo models are no part of the trace (they are not Stanch): they export nothing.
        env.update(start_demo_models({k: v for k, v in env.items() if not k.startswith("OTEL_")}, tmp_path, processes))
        gateway_process = start("gateway", "gateway", "--port", str(ports["gateway"]), "--dev")
        wait_for_port("127.0.0.1", ports["temporal"], 60)
        worker = start("worker", "worker")
        wait_http(f"{gateway}/healthz", gateway_process)
        wait_http(f"{api}/readyz", api_process)

        accepted = httpx.post(f"{api}/v1/reports", json=report(PROMPT), timeout=30)
        assert accepted.status_code == 202, accepted.text
        incident_id = accepted.json()["incidents"][0]["incident_id"]

        def gateway_state() -> dict:
            return httpx.get(f"{gateway}/admin/state", params={"model": "support-bot"}, timeout=15).json()

        blocked = wait_for(gateway_state, lambda s: s["blocked_outputs"], timeout=60)
        assert {row["incident_id"] for row in blocked["blocked_outputs"]} == {incident_id}

        def traced() -> list[ExportedSpan]:
            [webhook] = [s for s in receiver.spans if s.service == "stanch-api" and s.name == "POST /v1/reports"]
            return [s for s in receiver.spans if s.trace_id == webhook.trace_id]

        # One trace: the API's webhook, the workflow and its activities, the gateway's calls.
        one_trace = {
            ("stanch-api", "POST /v1/reports"),
            ("stanch-api", "SignalWithStartWorkflow:IncidentWorkflow"),
            ("stanch-worker", "RunWorkflow:IncidentWorkflow"),
            ("stanch-worker", "RunActivity:confirm_incident"),
            ("stanch-worker", "RunActivity:apply_containment"),
            ("stanch-worker", "POST"),  # an activity's httpx call to the gateway
            ("stanch-gateway", "POST /admin/apply"),  # containment applied
        }

        def complete(spans: list[ExportedSpan]) -> bool:
            # Each process exports in its own batches: the activity's span (it ends after the
            # gateway answered) may come in after the gateway's own.
            return one_trace <= {(s.service, s.name) for s in spans}

        trace = wait_for(traced, complete, timeout=15, interval=0.2)
        names = {(s.service, s.name) for s in trace}
        assert one_trace <= names, sorted(names)
        apply = next(s for s in trace if s.name == "POST /admin/apply")
        callers = {s.span_id: s for s in trace}
        assert callers[apply.parent_span_id].service == "stanch-worker", "the gateway's span is a child of the worker's call"
        assert {s.attributes.get(INCIDENT_ID) for s in trace} == {incident_id}, [
            (s.service, s.name) for s in trace if s.attributes.get(INCIDENT_ID) != incident_id
        ]
        # Confirm replays the prompt at the gateway's public model route: a trace of its own, linked to the worker's call.
        replays = [s for s in receiver.spans if s.service == "stanch-gateway" and s.name == "POST /v1/chat/completions"]
        linked = [
            s
            for s in replays
            for trace_id, span_id in s.links
            if trace_id == apply.trace_id and getattr(callers.get(span_id), "service", None) == "stanch-worker"
        ]
        assert linked and all(s.trace_id != apply.trace_id and not s.parent_span_id for s in linked)
        # Nothing the user typed or the model leaked is on any span, of any trace: attributes, events, statuses.
        everything = json.dumps([(s.attributes, s.events, s.status_message) for s in receiver.spans])
        for private in (PROMPT, *LEAK_CONSTANTS):
            assert private not in everything

        # The worker's log: one JSON object per line, the containment line naming incident and stage.
        lines = [json.loads(line) for line in worker.log_path.read_text().splitlines() if line.startswith("{")]
        assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
        containing = [line for line in lines if line["message"].startswith("containing ")]
        assert containing and all((line["incident_id"], line["stage"]) == (incident_id, "contain") for line in containing)
        assert all(line.get("incident_id") == incident_id for line in lines if line.get("trace_id") == apply.trace_id)

        # The history recorded with tracing on replays with and without the tracing interceptor,
        # and replaying it makes no span (spans are made once, when the work is new).
        failures, replay_spans = asyncio.run(replay_traced_history(f"127.0.0.1:{ports['temporal']}", incident_id))
        assert failures == [None, None]
        assert replay_spans == ()
    finally:
        stop_all(processes)
        receiver.close()


async def replay_traced_history(address: str, incident_id: str) -> tuple[list[Exception | None], tuple]:
    """Replay failures without and with the tracing interceptor, and the spans the replay made."""
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    history = await client.get_workflow_handle(incident_id).fetch_history()
    tracing_header = TracingInterceptor().header_key
    started = history.events[0].workflow_execution_started_event_attributes
    assert tracing_header in started.header.fields, "a history that carries a trace, or the no-span check proves nothing"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    failures = []
    for interceptors in ([], [TracingInterceptor(provider.get_tracer("replay"))]):
        replayer = Replayer(workflows=[IncidentWorkflow], data_converter=pydantic_data_converter, interceptors=interceptors)
        failures.append((await replayer.replay_workflow(history, raise_on_replay_failure=False)).replay_failure)
    return failures, exporter.get_finished_spans()
