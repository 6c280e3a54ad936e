"""STANCH_LOG_FORMAT=json: the API, the worker and the gateway log one JSON object per line.

Each line holds time, level, logger and message, and, whenever known, `incident_id` and `stage`
(lifted from the `temporal_workflow` / `temporal_activity` details Temporal's loggers attach, from
the running activity, or from what Stanch's own routing noted with `note_incident_for_logs`: never
from a caller's headers) and `trace_id` / `span_id` while a span is active, so a log search and a
trace lead to each other. Only what the record already says
is written: Stanch's own messages never quote a prompt, an answer or a secret, and this adds none.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from temporalio import activity, workflow

from stanch.config.settings import LOG_FORMAT_VARIABLE, LogFormat, LogFormatError, parse_log_format

__all__ = ["LOG_FORMAT_VARIABLE", "LogFormat", "LogFormatError", "JsonLogFormatter", "configure_logging", "log_format_from_env"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The incident this request or task works on, as Stanch itself found it (the intake's routing, an
# /v1/incidents/{id} route, the gateway's admin call once its token passed). A context variable:
# each request and each asyncio task has its own.
_incident_for_logs: ContextVar[str | None] = ContextVar("stanch_incident_for_logs", default=None)

# The lifecycle stage each activity type (its name in history) works for.
STAGE_OF_ACTIVITY = {
    "confirm_incident": "confirm",
    "snapshot_evidence": "evidence",
    "grade_severity": "severity",
    "apply_containment": "contain",
    "apply_rollback": "rollback",
    "apply_hotfix": "hotfix",
    "verify_fix": "verify",
    "lift_action": "restore",
    "open_review": "review",
    "notify": "notify",
    "verify_approval": "approval",
}


def log_format_from_env(env: Mapping[str, str] | None = None) -> LogFormat:
    """STANCH_LOG_FORMAT, for a process that reads nothing else of Stanch's settings (the gateway):
    parsed as `Settings` parses it (any case; anything but text or json raises LogFormatError)."""
    env = os.environ if env is None else env
    return parse_log_format(env.get(LOG_FORMAT_VARIABLE))


def note_incident_for_logs(incident_id: str) -> None:
    """From here to the end of the current request (or asyncio task), JSON log lines name this
    incident. Only for an id Stanch itself established: never one a caller's header claims."""
    _incident_for_logs.set(incident_id)


@contextmanager
def incident_for_logs(incident_id: str) -> Iterator[None]:
    """`note_incident_for_logs` for a block only."""
    token = _incident_for_logs.set(incident_id)
    try:
        yield
    finally:
        _incident_for_logs.reset(token)


def _incident_and_stage(record: logging.LogRecord) -> tuple[str | None, str | None]:
    fields = record.__dict__
    incident_id, stage = fields.get("incident_id"), fields.get("stage")
    details = fields.get("temporal_activity") or fields.get("temporal_workflow") or {}
    if isinstance(details, Mapping):
        incident_id = incident_id or details.get("workflow_id")
        stage = stage or STAGE_OF_ACTIVITY.get(str(details.get("activity_type")))
    incident_id = incident_id or _incident_for_logs.get()
    if not incident_id and activity.in_activity():  # Stanch's own lines inside an activity
        incident_id = activity.info().workflow_id
    return (str(incident_id) if incident_id else None), (str(stage) if stage else None)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        incident_id, stage = _incident_and_stage(record)
        if incident_id:
            entry["incident_id"] = incident_id
        if stage:
            entry["stage"] = stage
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(log_format: LogFormat, level: int = logging.INFO) -> None:
    """The process's root handler, text lines or JSON lines; as `logging.basicConfig`, it leaves
    a root logger that already has handlers (a test runner's) alone. In JSON the Temporal
    details move from the end of each message to their own fields."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter())
        activity.logger.activity_info_on_message = False
        workflow.logger.workflow_info_on_message = False
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)


def uvicorn_log_config(log_format: LogFormat) -> dict[str, Any] | None:
    """What to pass uvicorn as `log_config`: its own config for text (as before); None for JSON,
    so uvicorn's loggers reach the root handler `configure_logging` installed."""
    if log_format == "json":
        return None
    from uvicorn.config import LOGGING_CONFIG

    return LOGGING_CONFIG
