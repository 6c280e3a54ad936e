"""Intake: a signal opens a new incident or joins the open one, in a single Temporal call.

The matching runbook names the dedup key, the dedup key names the incident, and
signal-with-start (conflict policy USE_EXISTING) either starts that incident's workflow with
the signal or delivers the signal to the running one. Once an incident is closed its id is
free again (ALLOW_DUPLICATE), so the next alert opens a fresh incident. When
`open_or_join` returns, Temporal has durably recorded the signal: only then may a webhook be
told 202.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)

from stanch.temporal import search_attributes as sa
from stanch.detectors.regex import redact
from stanch.models.incident import WORKFLOW_NAME, IncidentInput, IncidentStatus
from stanch.models.signals import Signal
from stanch.intake.routing import route_signal
from stanch.runbooks.loader import RunbookCatalog


class IntakeResult(BaseModel):
    incident_id: str
    runbook: str
    dedup_key: str
    opened: bool = Field(False, description="true when this signal opened a new incident, false when it joined one")


async def open_or_join(
    client: Client,
    catalog: RunbookCatalog,
    signal: Signal,
    *,
    task_queue: str,
    upsert_search_attributes: bool = True,
) -> IntakeResult:
    signal = without_secrets(signal)
    route = route_signal(signal, catalog)
    runbook = route.runbook.runbook
    incident = IncidentInput(
        incident_id=route.incident_id,
        runbook=runbook,
        runbook_sha256=route.runbook.sha256,
        target=route.target,
        dedup_key=route.dedup_key,
        upsert_search_attributes=upsert_search_attributes,
    )
    # Applied only when this call starts the workflow; a joined incident keeps its own.
    # Severity is left to the workflow: it is graded there, after confirmation.
    attributes = (
        TypedSearchAttributes(
            [
                SearchAttributePair(sa.INCIDENT_RUNBOOK, runbook.name),
                # Same spelling as the workflow upserts, without the version: filter by model.
                SearchAttributePair(sa.INCIDENT_TARGET, f"{route.target.adapter}:{route.target.model}"),
                SearchAttributePair(sa.INCIDENT_STATUS, IncidentStatus.open.value),
                SearchAttributePair(sa.INCIDENT_OPENED_AT, datetime.now(UTC)),
            ]
        )
        if upsert_search_attributes
        else None
    )
    handle = await client.start_workflow(
        WORKFLOW_NAME,
        incident,
        id=route.incident_id,
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        start_signal="add_signal",
        start_signal_args=[signal],
        search_attributes=attributes,
        static_summary=f"{runbook.name} incident on {route.target}",
    )
    # Temporal says whether signal-with-start started a run or signalled the running one.
    response = getattr(handle, "_start_workflow_response", None)
    opened = bool(getattr(response, "started", False))
    return IntakeResult(incident_id=route.incident_id, runbook=runbook.name, dedup_key=route.dedup_key, opened=opened)


def without_secrets(signal: Signal) -> Signal:
    """Mask secrets and personal data in what the sender quoted (outputs, raw payload) before
    the signal is written to workflow history. Prompts are kept: they are the repro cases."""

    def scrub(value):
        if isinstance(value, str):
            return redact(value)
        if isinstance(value, list):
            return [scrub(item) for item in value]
        if isinstance(value, dict):
            return {key: scrub(item) for key, item in value.items()}
        return value

    repro = [case.model_copy(update={"output": redact(case.output) if case.output else case.output}) for case in signal.repro]
    return signal.model_copy(update={"repro": repro, "raw": scrub(signal.raw), "description": redact(signal.description)})
