"""The incident id on every span: the span processor a traced process installs."""

from __future__ import annotations

from opentelemetry import baggage, context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from temporalio import activity

# The span attribute and the baggage entry holding the incident's id (its workflow id).
INCIDENT_ID = "stanch.incident_id"


class IncidentIdSpanProcessor(SpanProcessor):
    """Puts `stanch.incident_id` on every span started in an incident's context: from the baggage
    the trace carries (the API, the gateway, the worker's spans), else, inside an activity, from
    the workflow id, else from the workflow id Temporal's interceptor put on the span."""

    def on_start(self, span: Span, parent_context: context.Context | None = None) -> None:
        incident_id = baggage.get_baggage(INCIDENT_ID, parent_context)
        if not incident_id and activity.in_activity():
            incident_id = activity.info().workflow_id
        if not incident_id and span.attributes:
            incident_id = span.attributes.get("temporalWorkflowID")
        if incident_id:
            span.set_attribute(INCIDENT_ID, str(incident_id))

    def on_end(self, span: ReadableSpan) -> None:
        pass
