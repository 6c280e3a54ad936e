"""Traces from the webhook to the gateway call, with the incident id on every span.

Turned on, per process, by the standard OpenTelemetry variables: OTEL_EXPORTER_OTLP_ENDPOINT
(or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) sends spans over OTLP/HTTP in batches; OTEL_SERVICE_NAME
names the process (default stanch-api, stanch-worker, stanch-gateway); OTEL_SDK_DISABLED=true
turns it all off again. Unset, nothing is installed: the API is OpenTelemetry's no-op tracer.

How one trace crosses the processes:
- the API's SERVER span continues any caller's `traceparent` (`web.TracingMiddleware`);
- the intake's signal-with-start carries the trace in a Temporal header (`signal_with_start_header`:
  Stanch sends that request itself, past client interceptors, so it adds the header itself), the
  way `temporalio.contrib.opentelemetry.TracingInterceptor` does for every other client call;
- the worker's TracingInterceptor continues it into the workflow's and activities' spans;
- every httpx request sends `traceparent` on (`outgoing.instrument_httpx`), so the gateway's
  SERVER span for a containment call joins the same trace.
The incident id travels beside it as W3C baggage (`stanch.incident_id`), and
`IncidentIdSpanProcessor` copies it onto every span a process starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import baggage, context, trace
from opentelemetry.trace import SpanKind
from temporalio.api.common.v1 import Payload

from stanch.telemetry.incident_spans import INCIDENT_ID

if TYPE_CHECKING:  # imported when tracing starts: it loads the whole worker SDK
    from temporalio.contrib.opentelemetry import TracingInterceptor
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

# The one interceptor of this process once tracing started (None: tracing is off).
_interceptor: TracingInterceptor | None = None


def tracing_requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint set, the SDK not disabled."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def start_tracing(default_service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Install the tracer provider (OTLP/HTTP, batched), the incident id processor and the httpx
    instrumentation when the environment asks for traces; True if tracing is on. Once per
    process: later calls change nothing. The exporter reads the OTEL_EXPORTER_OTLP_* and
    OTEL_BSP_* variables itself; spans still batched are sent when the process exits."""
    global _interceptor
    if _interceptor is not None:
        return True
    env = os.environ if env is None else env
    if not tracing_requested(env):
        return False
    # Imported only when used: a process without traces never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from temporalio.contrib.opentelemetry import TracingInterceptor

    from stanch.telemetry.incident_spans import IncidentIdSpanProcessor
    from stanch.telemetry.outgoing import instrument_httpx

    service_name = env.get("OTEL_SERVICE_NAME", "").strip() or default_service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(IncidentIdSpanProcessor())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    instrument_httpx()
    _interceptor = TracingInterceptor()
    return True


def temporal_interceptors() -> list[TracingInterceptor]:
    """For a Temporal client or worker: Temporal's tracing interceptor once tracing started, else none."""
    return [_interceptor] if _interceptor is not None else []


@contextmanager
def incident_context(incident_id: str) -> Iterator[None]:
    """While inside, the incident id is baggage (so every span started and every request sent
    carries it) and an attribute of the current span (the webhook's, say)."""
    trace.get_current_span().set_attribute(INCIDENT_ID, incident_id)
    token = context.attach(baggage.set_baggage(INCIDENT_ID, incident_id))
    try:
        yield
    finally:
        context.detach(token)


@contextmanager
def signal_with_start_header(workflow_type: str, incident_id: str) -> Iterator[dict[str, Payload]]:
    """The CLIENT span of a raw signal-with-start, and the Temporal header fields that carry it
    (and the incident id) into the workflow, written as TracingInterceptor writes them so the
    worker's interceptor reads them. Tracing off: no span, no header."""
    interceptor = _interceptor
    if interceptor is None:
        yield {}
        return
    with incident_context(incident_id):
        with interceptor.tracer.start_as_current_span(
            f"SignalWithStartWorkflow:{workflow_type}",
            kind=SpanKind.CLIENT,
            attributes={"temporalWorkflowID": incident_id},
            record_exception=False,  # Temporal's refusal may quote what was sent
        ):
            carrier: dict[str, str] = {}
            interceptor.text_map_propagator.inject(carrier)
            yield {interceptor.header_key: interceptor.payload_converter.to_payloads([carrier])[0]}
