"""STANCH_LOG_FORMAT=json: one JSON object per line, with the incident id and stage whenever known."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import TracerProvider

from stanch.config.settings import Settings, SettingsError
from stanch.telemetry.logs import JsonLogFormatter, LogFormatError, incident_for_logs, log_format_from_env


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


def test_inside_a_span_the_line_carries_its_trace_and_only_the_incident_stanch_noted():
    tracer = TracerProvider().get_tracer("test")
    # Baggage may come from anyone's headers: a line never takes an incident id from it.
    token = context.attach(baggage.set_baggage("stanch.incident_id", "forged-inc"))
    try:
        with tracer.start_as_current_span("POST /v1/alerts/{source}") as span:
            unnamed = json.loads(JsonLogFormatter().format(record("signal recorded")))
            with incident_for_logs("inc-8"):
                named = json.loads(JsonLogFormatter().format(record("signal recorded")))
    finally:
        context.detach(token)
    assert unnamed["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert unnamed["span_id"] == format(span.get_span_context().span_id, "016x")
    assert "incident_id" not in unnamed
    assert named["incident_id"] == "inc-8"


def test_an_error_keeps_its_traceback_inside_the_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("stanch.worker", logging.ERROR, __file__, 1, "worker failed", (), __import__("sys").exc_info())
    entry = json.loads(JsonLogFormatter().format(failed))
    assert "ValueError: boom" in entry["exception"]


def test_the_log_format_is_text_or_json_in_any_case_and_anything_else_is_named_alike_everywhere():
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"STANCH_LOG_FORMAT": "json"}).log_format == "json"
    assert Settings.from_env({"STANCH_LOG_FORMAT": "JSON"}).log_format == "json", "the gateway reads it so: so do the others"
    assert Settings(log_format="json").child_env()["STANCH_LOG_FORMAT"] == "json"
    assert log_format_from_env({}) == "text"
    assert log_format_from_env({"STANCH_LOG_FORMAT": "JSON"}) == "json"
    with pytest.raises(LogFormatError, match="STANCH_LOG_FORMAT='xml': use text or json"):
        log_format_from_env({"STANCH_LOG_FORMAT": "xml"})
    with pytest.raises(SettingsError, match="^STANCH_LOG_FORMAT='xml': use text or json$"):
        Settings.from_env({"STANCH_LOG_FORMAT": "xml"})


def test_stanch_worker_with_a_bad_log_format_names_the_variable_and_exits_1_without_a_traceback(tmp_path):
    env = {**os.environ, "STANCH_HOME": str(tmp_path), "STANCH_LOG_FORMAT": "xml"}
    done = subprocess.run([sys.executable, "-m", "stanch", "worker"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: STANCH_LOG_FORMAT='xml': use text or json"
    assert "Traceback" not in done.stdout + done.stderr
