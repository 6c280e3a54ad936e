"""No exception text leaves the process on a span: the exporter every traced process sends through.

Exception messages quote anything: an upstream's answer (a model's leak), a target's response
body, a URL with its key. Temporal's tracing interceptor records them anyway: an `exception`
event with `exception.message` and `exception.stacktrace`, and "{type}: {message}" as a failed
span's status description. `ScrubbingSpanExporter` sits in front of the real exporter and sends
each span with the exception's type only: the events keep `exception.type` (and
`exception.escaped`), the status description is cut to the type. The message stays where it
belongs, in the failing workflow's history and in the process's own log.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status

# What an exception event may keep: the exception's type, and whether it escaped the span.
KEPT_EXCEPTION_ATTRIBUTES = frozenset({"exception.type", "exception.escaped"})
# "ApplicationError: the model answered ..." -> "ApplicationError"; a dotted type name is kept whole.
_TYPE_NAME = re.compile(r"[A-Za-z_][\w.]*")


def status_without_message(status: Status) -> Status:
    """The status with its description cut to the exception type it starts with (none if it
    starts with anything else: then it is not a type name Stanch or Temporal wrote)."""
    description = status.description
    if not description:
        return status
    head = description.split(":", 1)[0].strip()
    kept = head if _TYPE_NAME.fullmatch(head) else None
    return Status(status.status_code, kept)


def event_without_message(event: Event) -> Event:
    if event.name != "exception":
        return event
    kept = {key: value for key, value in (event.attributes or {}).items() if key in KEPT_EXCEPTION_ATTRIBUTES}
    return Event(event.name, kept, event.timestamp)


def scrubbed(span: ReadableSpan) -> ReadableSpan:
    """The span as it may leave the process."""
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=span.attributes,
        events=[event_without_message(event) for event in span.events],
        links=span.links,
        kind=span.kind,
        status=status_without_message(span.status),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class ScrubbingSpanExporter(SpanExporter):
    """Wraps the exporter that sends spans out (OTLP): each span goes with exception types only."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.exporter.export([scrubbed(span) for span in spans])

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)
