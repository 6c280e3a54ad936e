"""Incident histories for the audit tools: read from a file or fetched from Temporal, and decoded.

A file is what `temporal workflow show --output json` writes (protobuf JSON, `{"events": [...]}`);
`WorkflowHistory.to_json()` writes the same, so a bundle's histories go back into the Temporal
CLI, any SDK, or these tools unchanged.

Every audit command reads histories the way the worker wrote them: with the installation's data
converter (pydantic, plus the payload codec when encryption is on). Replay needs no decision key:
each decision's verdict is in history. Public (and legacy HMAC) keys, when configured, let the
timeline check signatures again.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.converter import DataConverter, PayloadConverter
from temporalio.service import RPCError, RPCStatusCode

from stanch.config.settings import Settings
from stanch.models.incident import WORKFLOW_NAME
from stanch.temporal.client import connect
from stanch.trust import assertions, decision_keys


class HistoryError(Exception):
    """A history could not be read or fetched; the message names the file or workflow and why."""


# --- from a file ------------------------------------------------------------------------


def load_history_file(path: Path) -> WorkflowHistory:
    """A history as `temporal workflow show --output json` wrote it."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise HistoryError(f"{path}: no such file") from None
    except OSError as error:
        raise HistoryError(f"{path}: cannot read it ({error.strerror})") from None
    return parse_history(text, source=str(path), fallback_id=path.stem)


def parse_history(text: str | Mapping[str, Any], source: str, fallback_id: str) -> WorkflowHistory:
    try:
        data = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as error:
        raise HistoryError(
            f"{source}: not JSON (line {error.lineno}: {error.msg}); expected `temporal workflow show --output json`"
        ) from None
    if not isinstance(data, Mapping) or not isinstance(data.get("events"), list) or not data["events"]:
        raise HistoryError(f'{source}: no "events" list; expected `temporal workflow show --output json`')
    started = data["events"][0].get("workflowExecutionStartedEventAttributes") or {}
    # Recent servers record the workflow id in the start event; older files only have their name.
    workflow_id = started.get("workflowId") or fallback_id
    try:
        # from_json takes a str or a dict: any other Mapping it refuses as "not a dictionary".
        history = WorkflowHistory.from_json(workflow_id, dict(data))
    except Exception as error:  # protobuf's ParseError names the field that does not fit
        raise HistoryError(f"{source}: not a workflow history ({error})") from None
    if history.events[0].event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
        first = EventType.Name(history.events[0].event_type)
        raise HistoryError(f"{source}: the first event is {first}, not WorkflowExecutionStarted (a partial or --reverse history?)")
    return history


# --- from Temporal ----------------------------------------------------------------------


async def connect_for_audit(settings: Settings, address: str | None = None, namespace: str | None = None) -> Client:
    try:
        return await connect(address or settings.temporal_address, namespace or settings.temporal_namespace, settings)
    except Exception as error:  # the SDK raises RuntimeError with the transport's reason
        where = address or settings.temporal_address or "the SDK's environment configuration (TEMPORAL_ADDRESS)"
        raise HistoryError(f"cannot reach Temporal at {where}: {error}") from None


async def fetch_history(client: Client, workflow_id: str, run_id: str | None = None) -> WorkflowHistory:
    """The history of one incident (its latest run unless a run id is given)."""
    try:
        return await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            run = f" run {run_id}" if run_id else ""
            raise HistoryError(f"no workflow {workflow_id!r}{run} in namespace {client.namespace!r}") from None
        raise HistoryError(f"fetching the history of {workflow_id!r} failed: {error.message}") from None


def parse_since(text: str) -> datetime:
    """A date (midnight UTC) or an ISO 8601 time; a time without zone is UTC."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
            return datetime.combine(date.fromisoformat(text.strip()), time(), UTC)
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise HistoryError(f"--since {text!r} is neither a date (2026-11-26) nor an ISO 8601 time (2026-11-26T09:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def incident_query(since: datetime | None) -> str:
    """Visibility query for incidents started since a moment (StartTime needs no custom attribute)."""
    query = f"WorkflowType = '{WORKFLOW_NAME}'"
    if since is not None:
        query += f" AND StartTime >= '{since.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}'"
    return query


async def list_incident_runs(client: Client, since: datetime | None) -> list[tuple[str, str]]:
    """(workflow id, run id) of every incident started since then, oldest first."""
    runs = []
    try:
        async for execution in client.list_workflows(incident_query(since)):
            runs.append((execution.start_time, execution.id, execution.run_id))
    except RPCError as error:
        raise HistoryError(f"listing incidents failed: {error.message}") from None
    return [(workflow_id, run_id) for _, workflow_id, run_id in sorted(runs)]


async def fetch_incident_histories(client: Client, since: datetime | None) -> AsyncIterator[WorkflowHistory]:
    for workflow_id, run_id in await list_incident_runs(client, since):
        yield await fetch_history(client, workflow_id, run_id)


# --- keys and payloads ------------------------------------------------------------------


def trust_decision_keys(settings: Settings, env: Mapping[str, str] | None = None) -> list[str]:
    """Trust whatever decision keys are configured for verifying — public keys
    (STANCH_DECISION_PUBLIC_KEYS or STANCH_HOME/decision-public-keys) and legacy HMAC keys
    (STANCH_DECISION_KEYS or STANCH_HOME/decision-keys) — and return their ids. Unlike a worker,
    an audit never creates a key file and needs none: with no keys it trusts none (returns [])."""
    try:
        keys = decision_keys.for_audit(settings.home, os.environ if env is None else dict(env))
    except assertions.DecisionKeyError as error:
        raise HistoryError(f"decision keys: {error}") from None
    assertions.trust_keys(keys)
    return keys.ids


class Decoder:
    """Payloads out of history events, through the installation's data converter (and codec)."""

    def __init__(self, converter: DataConverter) -> None:
        self.converter = converter
        self.problems: list[str] = []

    async def one(self, payloads: Payloads | None, hint: type | None = None, where: str = "") -> Any:
        """The first payload, as `hint` if it fits, else plain JSON; None if there is none."""
        items = list(payloads.payloads) if payloads is not None else []
        if not items:
            return None
        return await self.payload(items[0], hint, where)

    async def payload(self, payload: Payload, hint: type | None = None, where: str = "") -> Any:
        try:
            return (await self.converter.decode([payload], [hint] if hint else None))[0]
        except Exception as typed_error:
            if hint is not None:
                try:  # a model that changed since: keep the data, note the mismatch
                    value = (await self.converter.decode([payload], None))[0]
                    self.problems.append(f"{where}: does not fit {hint.__name__} today ({_first_line(typed_error)}); shown as recorded")
                    return value
                except Exception:
                    pass
            self.problems.append(f"{where}: cannot decode the payload ({_first_line(typed_error)}); is the codec key configured?")
            return None

    async def failure(self, failure: Failure) -> str:
        try:
            error = await self.converter.decode_failure(failure)
        except Exception:
            return failure.message or "failure"
        cause = getattr(error, "cause", None)
        message = str(error) or failure.message
        return f"{message} ({cause})" if cause and str(cause) not in message else message


def search_attribute(payload: Payload) -> Any:
    """Search attributes are never codec-encoded: the default converter reads them."""
    try:
        return PayloadConverter.default.from_payloads([payload])[0]
    except Exception:
        return None


def event_time(event: HistoryEvent) -> datetime:
    return event.event_time.ToDatetime(tzinfo=UTC)


def event_name(event: HistoryEvent) -> str:
    """EVENT_TYPE_TIMER_STARTED → TimerStarted, as the Temporal UI names events."""
    raw = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
    return "".join(part.capitalize() for part in raw.split("_"))


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
