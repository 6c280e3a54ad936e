"""Traces from the webhook to the gateway call, with the incident id on every span.

Turned on, per process, by the standard OpenTelemetry variables: OTEL_EXPORTER_OTLP_ENDPOINT
(or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) sends spans over OTLP/HTTP in batches; OTEL_SERVICE_NAME
names the process (default stanch-api, stanch-worker, stanch-gateway); OTEL_SDK_DISABLED=true or
OTEL_TRACES_EXPORTER=none turns it all off again. Unset, nothing is installed: the API is
OpenTelemetry's no-op tracer. Stanch sends OTLP over HTTP only: an OTLP protocol variable asking
for anything else (grpc) gets a warning at start, naming it.

How one trace crosses the processes:
- a caller's `traceparent` is never continued at a public door (the API, the gateway's model
  routes): the SERVER span starts a trace of its own, linked to the caller's (`web.TracingMiddleware`);
- the intake's signal-with-start carries the trace in a Temporal header (`signal_with_start_header`:
  Stanch sends that request itself, past client interceptors, so it adds the header itself), the
  way `temporalio.contrib.opentelemetry.TracingInterceptor` does for every other client call;
- the worker's TracingInterceptor continues it into the workflow's and activities' spans;
- an httpx request to Stanch's own gateway or API (and STANCH_TRACE_PROPAGATE_HOSTS) sends
  `traceparent` on (`outgoing.instrument_httpx`), so the gateway's SERVER span for a containment
  call (an /admin/* route, its token checked) joins the same trace. No other host gets it.
The incident id travels beside it as W3C baggage (`stanch.incident_id`), and
`IncidentIdSpanProcessor` copies it onto every span a process starts. Every span leaves through
`scrub.ScrubbingSpanExporter`: exception types, never their messages.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import baggage, context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from temporalio.api.common.v1 import Payload

from stanch.telemetry.incident_spans import INCIDENT_ID

if TYPE_CHECKING:  # imported when tracing starts: they load the SDK and the whole worker SDK
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from temporalio.contrib.opentelemetry import TracingInterceptor
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# The more specific variable wins, as in the OpenTelemetry SDKs.
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
SUPPORTED_PROTOCOL = "http/protobuf"
# The webhook span lists the incidents one batch opened or joined, up to this many.
MAX_INCIDENT_IDS_ON_A_SPAN = 20
INCIDENT_IDS = "stanch.incident_ids"
# At exit, spans still batched get this long to reach the collector: a collector that is down
# must not hold a stopping process past its grace period (the SDK's own wait is 30 s).
SHUTDOWN_SECONDS = 5.0

log = logging.getLogger("stanch.telemetry")

# The one interceptor and provider of this process once tracing started (None: tracing is off).
_interceptor: TracingInterceptor | None = None
_provider: TracerProvider | None = None


def tracing_requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint set, the SDK not disabled, the
    traces exporter not `none`."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def protocol_warning(env: Mapping[str, str]) -> str | None:
    """What to tell an operator whose OTLP protocol variable asks for something Stanch does not
    send (grpc): spans go over HTTP regardless, which a gRPC port refuses."""
    for variable in PROTOCOL_VARIABLES:
        value = env.get(variable, "").strip()
        if value:
            if value.lower() == SUPPORTED_PROTOCOL:
                return None
            return (
                f"{variable}={value!r}: Stanch exports traces over OTLP/HTTP ({SUPPORTED_PROTOCOL}) only; spans go over "
                "HTTP to the OTLP endpoint, which a gRPC port (4317) refuses: point the endpoint at the collector's "
                f"OTLP/HTTP port (4318) and set {variable}={SUPPORTED_PROTOCOL}"
            )
    return None


def tracer_provider(service_name: str, exporter: SpanExporter, *, batched: bool = True) -> TracerProvider:
    """A provider as a traced Stanch process has it: the incident id on every span, every span
    through the scrubber (exception types only) to `exporter`, in batches (tests: one by one)."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    from stanch.telemetry.incident_spans import IncidentIdSpanProcessor
    from stanch.telemetry.scrub import ScrubbingSpanExporter

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(IncidentIdSpanProcessor())
    scrubbing = ScrubbingSpanExporter(exporter)
    provider.add_span_processor(BatchSpanProcessor(scrubbing) if batched else SimpleSpanProcessor(scrubbing))
    return provider


def start_tracing(default_service_name: str, env: Mapping[str, str] | None = None, *, propagate_to: Iterable[str] = ()) -> bool:
    """Install the tracer provider (OTLP/HTTP, batched), the incident id processor and the httpx
    instrumentation when the environment asks for traces; True if tracing is on. Once per
    process: later calls change nothing. The exporter reads the OTEL_EXPORTER_OTLP_* and
    OTEL_BSP_* variables itself; `stop_tracing` sends what is still batched.

    `propagate_to`: the hosts (host or host:port) an outgoing request sends the trace to
    (`Settings.trace_propagation_hosts`); every other host gets a span but no header."""
    global _interceptor, _provider
    if _interceptor is not None:
        return True
    env = os.environ if env is None else env
    if not tracing_requested(env):
        return False
    warning = protocol_warning(env)
    if warning:
        log.warning("%s", warning)
    # Imported only when used: a process without traces never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from temporalio.contrib.opentelemetry import TracingInterceptor

    from stanch.telemetry.outgoing import instrument_httpx

    service_name = env.get("OTEL_SERVICE_NAME", "").strip() or default_service_name
    provider = tracer_provider(service_name, OTLPSpanExporter())
    trace.set_tracer_provider(provider)
    instrument_httpx(propagate_to=propagate_to)
    _provider = provider
    _interceptor = TracingInterceptor()
    return True


def stop_tracing(timeout_seconds: float = SHUTDOWN_SECONDS) -> None:
    """Send the spans still batched, waiting at most `timeout_seconds` (a collector that is down
    costs that, not the SDK's 30 s at exit). Call it last, once the process has stopped serving."""
    if _provider is not None:
        shutdown_within(_provider, timeout_seconds)


def shutdown_within(provider: TracerProvider, timeout_seconds: float) -> bool:
    """Shut the provider down, giving up after `timeout_seconds`; True if it finished. Given up,
    the spans left are lost (the export thread is a daemon), and the SDK's exit hook, finding
    the processor already shut down, returns at once."""
    stopping = threading.Thread(target=provider.shutdown, name="stanch-tracing-shutdown", daemon=True)
    stopping.start()
    stopping.join(timeout_seconds)
    if stopping.is_alive():
        log.warning("traces: the collector took over %.0fs; the spans not yet sent are dropped", timeout_seconds)
        return False
    return True


def temporal_interceptors() -> list[TracingInterceptor]:
    """For a Temporal client or worker: Temporal's tracing interceptor once tracing started, else none."""
    return [_interceptor] if _interceptor is not None else []


@contextmanager
def incident_context(incident_id: str) -> Iterator[None]:
    """While inside, the incident id is baggage (so every span started and every request sent
    carries it) and an attribute of the current span (the webhook's, say). A webhook whose batch
    routes to several incidents keeps the first as `stanch.incident_id` and lists them all (up
    to MAX_INCIDENT_IDS_ON_A_SPAN) as `stanch.incident_ids`."""
    note_incident_on_span(trace.get_current_span(), incident_id)
    token = context.attach(baggage.set_baggage(INCIDENT_ID, incident_id))
    try:
        yield
    finally:
        context.detach(token)


def note_incident_on_span(span: trace.Span, incident_id: str) -> None:
    """Name the incident on `span`: the first one as `stanch.incident_id`, all in `stanch.incident_ids`."""
    attributes = getattr(span, "attributes", None) or {}  # a recording SDK span shows them; others have none
    first = attributes.get(INCIDENT_ID)
    listed = list(attributes.get(INCIDENT_IDS) or ([first] if first else []))
    if incident_id not in listed and len(listed) < MAX_INCIDENT_IDS_ON_A_SPAN:
        listed.append(incident_id)
    if not first:
        span.set_attribute(INCIDENT_ID, incident_id)
    span.set_attribute(INCIDENT_IDS, [str(item) for item in listed])


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
            # Temporal's refusal may quote what was sent: the type only, set below.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            carrier: dict[str, str] = {}
            interceptor.text_map_propagator.inject(carrier)
            try:
                yield {interceptor.header_key: interceptor.payload_converter.to_payloads([carrier])[0]}
            except Exception as exc:
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
