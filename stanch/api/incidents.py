"""Incident routes: read incidents and their timelines, and let responders act on them.

Reads come from Temporal visibility (the list) and the workflow's `state` query (one
incident). Every responder action is a workflow update: the workflow's validator refuses a
bad decision before it reaches history, and that refusal comes back as 409 with its reason.
Each update carries an id (the decision id, an `Idempotency-Key` header, or a fresh uuid) so
a retried request is applied once.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field
from temporalio import client as tc
from temporalio.service import RPCError, RPCStatusCode

from stanch.api.deps import RETRY_AFTER_S, ClientDep, ResponderDep, current_responder
from stanch.models.decisions import (
    Acknowledgement,
    AnswerCorrection,
    ApprovalDecision,
    DecisionReceipt,
    FailureDecision,
    Note,
    ReportFiled,
    ResolveRequest,
    SeverityChange,
    TriageDecision,
)
from stanch.models.incident import WORKFLOW_NAME, IncidentState, IncidentStatus, TimelineEntry, is_drill_route
from stanch.models.signals import Severity
from stanch.runbooks.loader import RunbookCatalog
from stanch.telemetry.logs import note_incident_for_logs
from stanch.temporal import search_attributes as sa
from stanch.trust import assertions, permissions
from stanch.trust.responders import Principal

# Reading needs a responder too (any role, auditors and viewers included) unless --insecure-dev.
router = APIRouter(prefix="/v1/incidents", tags=["incidents"], dependencies=[Depends(current_responder)])

QUERY_TIMEOUT = timedelta(seconds=10)
LIST_FALLBACK_QUERY_TIMEOUT = timedelta(seconds=3)
# Visibility filters are spliced into a query string: only plain identifiers get through.
_PLAIN = r"^[A-Za-z0-9_.:@/-]+$"

IncidentId = Annotated[str, Path(description="the incident id, as returned by intake", pattern=_PLAIN)]
IdempotencyKey = Annotated[str | None, Header(description="retries with the same key are applied once")]


class IncidentSummary(BaseModel):
    id: str
    run_id: str | None = None
    status: str | None = Field(None, description="the incident's status, else the workflow's")
    workflow_status: str | None = Field(None, description="RUNNING, COMPLETED, FAILED, TERMINATED, ...")
    severity: Severity | None = None
    runbook: str | None = None
    target: str | None = None
    opened_at: datetime | None = None
    closed_at: datetime | None = None
    drill: bool = Field(False, description="a drill on a drill route (`stanch drill`): a rehearsal, never counted as an incident")


_NOT_FOUND = {"description": "no incident with this id"}
_UNAVAILABLE = {"description": "Temporal or the worker is unreachable; retry later"}
_DECISION_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: _NOT_FOUND,
    409: {"description": "the workflow refused the decision (reason given), or the incident is closed"},
    503: _UNAVAILABLE,
}


def _unavailable(message: str) -> HTTPException:
    return HTTPException(503, detail=message, headers={"Retry-After": str(RETRY_AFTER_S)})


def _no_such_incident(incident_id: str) -> HTTPException:
    return HTTPException(404, detail=f"no incident {incident_id!r}; GET /v1/incidents lists the known ones")


# --- reads ---------------------------------------------------------------------------


def visibility_query(
    status: IncidentStatus | None = None,
    severity: Severity | None = None,
    runbook: str | None = None,
    target: str | None = None,
    opened_since: datetime | None = None,
) -> str:
    # A run that continued as new (a long history, or harm back as a new occurrence) is not an
    # incident of its own: the run it handed over to is listed.
    clauses = [f"WorkflowType = '{WORKFLOW_NAME}'", "ExecutionStatus != 'ContinuedAsNew'"]
    filters = {sa.INCIDENT_STATUS: status, sa.INCIDENT_SEVERITY: severity, sa.INCIDENT_RUNBOOK: runbook, sa.INCIDENT_TARGET: target}
    clauses += [f"{key.name} = '{value}'" for key, value in filters.items() if value]
    if opened_since is not None:  # a parsed datetime: nothing of the caller's text reaches the query
        since = opened_since if opened_since.tzinfo else opened_since.replace(tzinfo=UTC)
        clauses.append(f"{sa.INCIDENT_OPENED_AT.name} >= '{since.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}'")
    return " AND ".join(clauses)


def _summary(execution: tc.WorkflowExecution) -> IncidentSummary:
    attributes = execution.typed_search_attributes
    return IncidentSummary(
        id=execution.id,
        run_id=execution.run_id,
        status=attributes.get(sa.INCIDENT_STATUS),
        workflow_status=execution.status.name if execution.status else None,
        severity=attributes.get(sa.INCIDENT_SEVERITY),
        runbook=attributes.get(sa.INCIDENT_RUNBOOK),
        target=attributes.get(sa.INCIDENT_TARGET),
        opened_at=attributes.get(sa.INCIDENT_OPENED_AT) or execution.start_time,
        closed_at=execution.close_time,
        drill=is_drill_route(attributes.get(sa.INCIDENT_TARGET)),
    )


async def _fill_from_state(client: tc.Client, summary: IncidentSummary) -> IncidentSummary:
    """For incidents whose workflow upserts no search attributes (or has not yet)."""
    try:
        handle = client.get_workflow_handle(summary.id, run_id=summary.run_id)
        state = await handle.query("state", result_type=IncidentState, rpc_timeout=LIST_FALLBACK_QUERY_TIMEOUT)
    except (RPCError, tc.WorkflowQueryFailedError, tc.WorkflowQueryRejectedError):
        # No worker to answer, or a broken run: the list still shows what visibility knows.
        summary.status = summary.status or (summary.workflow_status or "").lower() or None
        return summary
    summary.status = summary.status or state.status.value
    summary.severity = summary.severity or state.severity
    summary.runbook = summary.runbook or state.runbook
    summary.target = summary.target or str(state.target)
    summary.drill = summary.drill or state.drill
    summary.opened_at = state.opened_at
    return summary


@router.get("", response_model=list[IncidentSummary], responses={503: _UNAVAILABLE})
async def list_incidents(
    client: ClientDep,
    status: IncidentStatus | None = None,
    severity: Severity | None = None,
    runbook: Annotated[str | None, Query(pattern=_PLAIN)] = None,
    target: Annotated[str | None, Query(pattern=_PLAIN, description="adapter:model, e.g. gateway:support-bot")] = None,
    opened_since: Annotated[datetime | None, Query(description="only incidents opened at or after this time (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[IncidentSummary]:
    """Incidents known to Temporal visibility, newest first. Visibility is eventually
    consistent: an incident opened a moment ago may take a second to appear."""
    query = visibility_query(status, severity, runbook, target, opened_since)
    summaries = [_summary(execution) async for execution in client.list_workflows(query, limit=limit)]
    incomplete = [s for s in summaries if not (s.status and s.runbook and s.target)]
    await asyncio.gather(*(_fill_from_state(client, s) for s in incomplete))
    return sorted(summaries, key=lambda s: s.opened_at.timestamp() if s.opened_at else 0.0, reverse=True)


async def incident_state(client: tc.Client, incident_id: str) -> IncidentState:
    note_incident_for_logs(incident_id)  # this request's JSON log lines name it
    handle = client.get_workflow_handle(incident_id)
    try:
        return await handle.query("state", result_type=IncidentState, rpc_timeout=QUERY_TIMEOUT)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise _no_such_incident(incident_id) from err
        if err.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            raise _unavailable(f"no worker answered for incident {incident_id!r}; is `stanch worker` running?") from err
        raise
    except (tc.WorkflowQueryFailedError, tc.WorkflowQueryRejectedError) as err:
        raise HTTPException(502, detail=f"incident {incident_id!r} could not report its state: {err}") from err


@router.get("/{incident_id}", response_model=IncidentState, responses={404: _NOT_FOUND, 503: _UNAVAILABLE})
async def get_incident(incident_id: IncidentId, client: ClientDep) -> IncidentState:
    """The incident's full state: status, severity, stages, actions, approvals, timeline."""
    return await incident_state(client, incident_id)


@router.get("/{incident_id}/timeline", response_model=list[TimelineEntry], responses={404: _NOT_FOUND, 503: _UNAVAILABLE})
async def get_timeline(incident_id: IncidentId, client: ClientDep) -> list[TimelineEntry]:
    """What happened, in order: signals, stages, actions, approvals, escalations, decisions."""
    return (await incident_state(client, incident_id)).timeline


# --- responders' decisions -----------------------------------------------------------


async def _not_found_or_closed(handle: tc.WorkflowHandle[Any, Any], incident_id: str) -> HTTPException:
    # The server answers NOT_FOUND both for an unknown id and for an update sent to a
    # finished run; describing the workflow tells the responder which one it is.
    try:
        description = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return _no_such_incident(incident_id)
        raise
    status = description.status.name if description.status else "CLOSED"
    return HTTPException(409, detail=f"incident is closed: {incident_id!r} finished ({status}); it takes no more decisions")


async def decide(client: tc.Client, incident_id: str, update: str, message: BaseModel, update_id: str) -> DecisionReceipt:
    """Pass a decision to the incident, vouched for with the API's Ed25519 signing key: the
    workflow's validators refuse any other before it reaches history."""
    # A caller's idempotency key deduplicates that caller's retries of that decision only:
    # Bob's ack with key 1 must not swallow Alice's resolve with key 1.
    who = next((getattr(message, field) for field in ("approver", "by", "responder") if getattr(message, field, "")), "")
    update_id = f"{update}:{who}:{update_id}"
    note_incident_for_logs(incident_id)  # this request's JSON log lines name it
    handle = client.get_workflow_handle(incident_id)
    try:
        occurrence = await _occurrence(handle, incident_id)
        message = message.model_copy(update={"assertion": assertions.sign(occurrence, update_id, message)})
        return await handle.execute_update(update, message, id=update_id, result_type=DecisionReceipt)
    except tc.WorkflowUpdateFailedError as err:
        reason = getattr(err.cause, "message", None) or str(err.cause)
        raise HTTPException(409, detail=reason) from err
    except tc.WorkflowUpdateRPCTimeoutOrCancelledError as err:
        raise _unavailable(f"incident {incident_id!r} did not answer in time; retry with the same decision id {update_id!r}") from err
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise await _not_found_or_closed(handle, incident_id) from err
        raise


async def _occurrence(handle: tc.WorkflowHandle[Any, Any], incident_id: str) -> str:
    """The running occurrence's name, as the workflow writes it (IncidentState.occurrence)."""
    description = await handle.describe()
    first_run = description.raw_description.workflow_execution_info.first_run_id or description.run_id
    return f"{incident_id}@{first_run[:8]}"


def _update_id(*candidates: str | None) -> str:
    return next((c for c in candidates if c), str(uuid.uuid4()))


def approver_roles(request: Request) -> frozenset[str]:
    """The roles the loaded runbooks name as approvers: read once, the catalog never changes."""
    state = request.app.state
    if getattr(state, "approver_roles", None) is None:
        catalog: RunbookCatalog = state.catalog
        state.approver_roles = permissions.approver_roles(loaded.runbook for loaded in catalog.all())
    return state.approver_roles


def acting_as(decision: str) -> Any:
    """A dependency: the authenticated responder, when one of their roles may take `decision`
    (stanch.trust.permissions); 403 naming the roles otherwise. Under --insecure-dev there is no
    authenticated responder: identity is as claimed, and the workflow still checks approvers."""

    async def responder_who_may(request: Request, responder: ResponderDep) -> Principal | None:
        if responder is None:
            return None
        approvers = approver_roles(request)
        if reason := permissions.refusal(decision, responder.user, responder.roles, approvers):
            raise HTTPException(403, detail=reason)
        return responder

    return Depends(responder_who_may)


Decision = TypeVar("Decision", bound=BaseModel)


def as_responder(message: Decision, responder: Principal | None, name_field: str, roles_field: str | None = None) -> Decision:
    """The decision in the authenticated responder's name, whatever the body claimed."""
    if responder is None:
        return message
    update = {name_field: responder.user, **({roles_field: responder.roles} if roles_field else {})}
    return message.model_copy(update=update)


@router.post("/{incident_id}/ack", response_model=DecisionReceipt, responses=_DECISION_RESPONSES)
async def acknowledge(
    incident_id: IncidentId,
    ack: Acknowledgement,
    client: ClientDep,
    responder: Annotated[Principal | None, acting_as("acknowledge")],
    idempotency_key: IdempotencyKey = None,
) -> DecisionReceipt:
    """A responder takes the incident: escalation stops."""
    ack = as_responder(ack, responder, "responder")
    return await decide(client, incident_id, "acknowledge", ack, _update_id(idempotency_key))


@router.post("/{incident_id}/approvals", response_model=DecisionReceipt, responses=_DECISION_RESPONSES)
async def approve_or_reject(
    incident_id: IncidentId,
    decision: ApprovalDecision,
    client: ClientDep,
    responder: Annotated[Principal | None, acting_as("approve")],
    idempotency_key: IdempotencyKey = None,
) -> DecisionReceipt:
    """Approve (`approve: true`) or reject a gated stage, as the authenticated responder with
    their roles. The workflow enforces roles and four eyes: the requester cannot approve, no
    one approves twice; it counts only decisions carrying this API's assertion."""
    decision = as_responder(decision, responder, "approver", "roles")
    decision.decision_id = _update_id(decision.decision_id, idempotency_key)
    update = "approve" if decision.approve else "reject"
    return await decide(client, incident_id, update, decision, decision.decision_id)


@router.post("/{incident_id}/severity", response_model=DecisionReceipt, responses=_DECISION_RESPONSES)
async def set_severity(
    incident_id: IncidentId,
    change: SeverityChange,
    client: ClientDep,
    responder: Annotated[Principal | None, acting_as("set_severity")],
    idempotency_key: IdempotencyKey = None,
) -> DecisionReceipt:
    """Change the severity; lowering it needs a reason and a responder with the right role."""
    change = as_responder(change, responder, "by", "roles")
    return await decide(client, incident_id, "set_severity", change, _update_id(idempotency_key))


@router.post("/{incident_id}/triage", response_model=DecisionReceipt, responses=_DECISION_RESPONSES)
async def triage(
    incident_id: IncidentId,
    decision: TriageDecision,
    client: ClientDep,
    responder: Annotated[Principal | None, acting_as("triage")],
    idempotency_key: IdempotencyKey = None,
) -> DecisionReceipt:
    """Settle an inconclusive confirmation: confirmed, or a false positive."""
    decision = as_responder(decision, responder, "by")
    return await decide(client, incident_id, "triage", decision, _update_id(idempotency_key))


@router.post("/{incident_id}/decisions", response_model=DecisionReceipt, responses=_DECISION_RESPONSES)
async def decide_failure(
    incident_id: IncidentId,
    decision: FailureDecision,
    client: ClientDep,
    responder: Annotated[Principal | None, acting_as("decide")],
    idempotency_key: IdempotencyKey = None,
) -> DecisionReceipt:
    """After an action failed for good: `retry`, `skip` or `abort`. Protections stay in place."""
    decision = as_responder(decision, responder, "by")
    return await decide(client, incident_id, "decide", decision, _update_id(idempotency_key))


@router.post("/{incident_id}/resolve", response_model=DecisionReceipt, responses=_DECISION_RESPONSES)
async def resolve(
    incident_id: IncidentId,
    request: ResolveRequest,
    client: ClientDep,
    responder: Annotated[Principal | None, acting_as("resolve")],
    idempotency_key: IdempotencyKey = None,
) -> DecisionReceipt:
    """Declare the harm over: remaining work is skipped, then restore and review run."""
    request = as_responder(request, responder, "by")
    return await decide(client, incident_id, "resolve", request, _update_id(idempotency_key))


@router.post("/{incident_id}/notes", response_model=DecisionReceipt, responses=_DECISION_RESPONSES)
async def add_note(
    incident_id: IncidentId,
    note: Note,
    client: ClientDep,
    responder: Annotated[Principal | None, acting_as("add_note")],
    idempotency_key: IdempotencyKey = None,
) -> DecisionReceipt:
    """Add a note to the incident's timeline (closed incidents take no more notes)."""
    note = as_responder(note, responder, "by")
    return await decide(client, incident_id, "add_note", note, _update_id(idempotency_key))


@router.post("/{incident_id}/corrections", response_model=DecisionReceipt, responses=_DECISION_RESPONSES)
async def correct_answer(
    incident_id: IncidentId,
    correction: AnswerCorrection,
    client: ClientDep,
    responder: Annotated[Principal | None, acting_as("correct_answer")],
    idempotency_key: IdempotencyKey = None,
) -> DecisionReceipt:
    """Supply the answer a repro case should get (by its number, 1 for the first, or its prompt):
    the incident's fine-tune trains that case on it instead of the runbook's answer."""
    correction = as_responder(correction, responder, "by")
    return await decide(client, incident_id, "correct_answer", correction, _update_id(idempotency_key))


@router.post("/{incident_id}/report", response_model=DecisionReceipt, responses=_DECISION_RESPONSES)
async def record_report_filed(
    incident_id: IncidentId,
    report: ReportFiled,
    client: ClientDep,
    responder: Annotated[Principal | None, acting_as("record_report_filed")],
    idempotency_key: IdempotencyKey = None,
) -> DecisionReceipt:
    """Record that the regulatory report was filed: its reminders stop."""
    report = as_responder(report, responder, "by")
    return await decide(client, incident_id, "record_report_filed", report, _update_id(idempotency_key))
