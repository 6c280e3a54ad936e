"""What leaves a traced process: exception types, never their messages (an activity's error may
quote a model's leaking answer or a target's response); several incidents of one webhook all
named on its span; and at exit, a collector that is down costs seconds, not the SDK's 30."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput

from stanch.demo_upstream.models import LEAK_CONSTANTS
from stanch.telemetry import tracing
from stanch.telemetry.incident_spans import INCIDENT_ID

LEAK = LEAK_CONSTANTS[0]


def everything_exported(spans: Sequence[ReadableSpan]) -> str:
    """Every string a span carries out: attributes, events and their attributes, status."""
    parts: list[str] = []
    for span in spans:
        parts += [str(value) for value in (span.attributes or {}).values()]
        for event in span.events:
            parts += [event.name, *(str(value) for value in (event.attributes or {}).values())]
        parts.append(span.status.description or "")
    return "\n".join(parts)


class TargetAnswered(ActivityInboundInterceptor):
    """The activity itself: it fails quoting what the target answered, as an adapter's error may."""

    def __init__(self) -> None:
        super().__init__(cast(ActivityInboundInterceptor, None))

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        raise ApplicationError(f"the target answered 500: {LEAK}")


def test_a_failing_activity_leaves_its_type_on_the_span_never_its_message(exported):
    provider, exporter = exported
    interceptor = TracingInterceptor(provider.get_tracer("temporal"))
    run = interceptor.intercept_activity(TargetAnswered())

    async def activity() -> None:
        await run.execute_activity(ExecuteActivityInput(fn=activity, args=[], executor=None, headers={}))

    with pytest.raises(ApplicationError):
        asyncio.run(ActivityEnvironment().run(activity))
    [span] = exporter.get_finished_spans()
    assert span.name.startswith("RunActivity:")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ApplicationError", "Temporal wrote '{type}: {message}'; the type is kept"
    [event] = span.events
    assert event.name == "exception" and str(dict(event.attributes or {}).get("exception.type")).endswith("ApplicationError")
    assert LEAK not in everything_exported([span])
    assert span.attributes is not None and span.attributes[INCIDENT_ID], "an activity's span still names its incident"


def test_an_exception_recorded_by_hand_is_scrubbed_too(exported):
    provider, exporter = exported
    with pytest.raises(RuntimeError):
        with provider.get_tracer("test").start_as_current_span("anything"):
            raise RuntimeError(f"upstream said {LEAK}")
    [span] = exporter.get_finished_spans()
    assert [dict(event.attributes or {}) for event in span.events] == [{"exception.type": "RuntimeError", "exception.escaped": "False"}]
    assert span.status.description == "RuntimeError"
    assert LEAK not in everything_exported([span])


def test_a_webhook_opening_several_incidents_keeps_the_first_and_lists_them_all(exported):
    provider, exporter = exported
    tracer = provider.get_tracer("test")
    opened = [f"inc-{n}" for n in range(tracing.MAX_INCIDENT_IDS_ON_A_SPAN + 5)]
    with tracer.start_as_current_span("POST /v1/alerts/{source}"):
        for incident_id in opened:
            with tracing.incident_context(incident_id):
                pass
    [webhook] = exporter.get_finished_spans()
    assert webhook.attributes is not None
    assert webhook.attributes[INCIDENT_ID] == "inc-0"
    assert list(cast(Sequence[str], webhook.attributes[tracing.INCIDENT_IDS])) == opened[: tracing.MAX_INCIDENT_IDS_ON_A_SPAN]


class CollectorDown(SpanExporter):
    """An OTLP exporter whose collector does not answer: each export hangs until its own timeout."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        time.sleep(10)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass


def test_with_the_collector_down_shutdown_gives_up_within_its_timeout():
    provider = tracing.tracer_provider("stanch-test", CollectorDown())  # batched, as a process has it
    with provider.get_tracer("test").start_as_current_span("last words"):
        pass
    began = time.monotonic()
    assert tracing.shutdown_within(provider, 0.5) is False
    assert time.monotonic() - began < 2, "the SDK's own shutdown waits 30 s"
