"""STANCH_LOG_FORMAT=json: one JSON object per line, with the incident id and stage whenever known."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import TracerProvider

from stanch.config.settings import Settings
from stanch.telemetry.logs import JsonLogFormatter, LogFormatError, log_format_from_env


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("temporalio.activity", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_an_activity_line_names_the_incident_and_its_stage():
    line = JsonLogFormatter().format(
        record(
            "Completing activity as failed",
            temporal_activity={"activity_type": "apply_containment", "workflow_id": "leak-support-bot", "attempt": 2},
        )
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "Completing activity as failed"
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "temporalio.activity"
    assert entry["time"].endswith("Z")
    assert entry["incident_id"] == "leak-support-bot"
    assert entry["stage"] == "contain"
    assert "trace_id" not in entry, "no span, no trace id"


def test_a_workflow_line_names_the_incident_and_a_stanch_line_may_name_both_itself():
    workflow_line = json.loads(JsonLogFormatter().format(record("task failed", temporal_workflow={"workflow_id": "inc-1"})))
    assert workflow_line["incident_id"] == "inc-1" and "stage" not in workflow_line
    own = json.loads(JsonLogFormatter().format(record("lifted %d actions", 3, incident_id="inc-2", stage="restore")))
    assert (own["message"], own["incident_id"], own["stage"]) == ("lifted 3 actions", "inc-2", "restore")


def test_inside_a_span_the_line_carries_its_trace_and_the_incident_from_baggage():
    tracer = TracerProvider().get_tracer("test")
    token = context.attach(baggage.set_baggage("stanch.incident_id", "inc-8"))
    try:
        with tracer.start_as_current_span("POST /v1/alerts/{source}") as span:
            entry = json.loads(JsonLogFormatter().format(record("signal recorded")))
    finally:
        context.detach(token)
    assert entry["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert entry["span_id"] == format(span.get_span_context().span_id, "016x")
    assert entry["incident_id"] == "inc-8"


def test_an_error_keeps_its_traceback_inside_the_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("stanch.worker", logging.ERROR, __file__, 1, "worker failed", (), __import__("sys").exc_info())
    entry = json.loads(JsonLogFormatter().format(failed))
    assert "ValueError: boom" in entry["exception"]


def test_the_log_format_is_text_or_json_and_anything_else_is_named():
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"STANCH_LOG_FORMAT": "json"}).log_format == "json"
    assert Settings(log_format="json").child_env()["STANCH_LOG_FORMAT"] == "json"
    assert log_format_from_env({}) == "text"
    assert log_format_from_env({"STANCH_LOG_FORMAT": "JSON"}) == "json"
    with pytest.raises(LogFormatError, match="STANCH_LOG_FORMAT='xml': use text or json"):
        log_format_from_env({"STANCH_LOG_FORMAT": "xml"})
