"""Intake from people: a user's or support agent's report of harmful output, and an internal
audit or red-team finding. Both open or join an incident exactly as an alert does."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from stanch.api.alerts import (
    INTAKE_RESPONSES,
    IntakeResponse,
    _take_in,
    openapi_examples,
)
from stanch.api.auth import webhook_id
from stanch.api.deps import IntakeDep
from stanch.intake.sources import examples, limits
from stanch.intake.sources.reports import (
    AuditFinding,
    UserReport,
    audit_finding_signals,
    user_report_signals,
)

router = APIRouter(prefix="/v1", tags=["intake"])

# A Standard Webhooks sender keeps `webhook-id` across retries even if it re-renders the body
# (a fresh timestamp inside): without an id of the reporter's own, it names the signal.
DeliveryId = Annotated[str | None, Depends(webhook_id)]


@router.post(
    "/reports",
    status_code=202,
    response_model=IntakeResponse,
    responses=INTAKE_RESPONSES,
    summary="A user or support agent reports harmful output",
)
async def user_report(
    report: Annotated[UserReport, Body(openapi_examples=openapi_examples(support_ticket=examples.USER_REPORT))],
    intake: IntakeDep,
    delivery: DeliveryId,
) -> IntakeResponse:
    """The prompt and response excerpts become the incident's repro case, replayed to confirm
    it. `category` defaults to `harmful-output`. Give `report_id` (a ticket id) so a resend is
    recognised; without it the same body is recognised by its hash.
    """
    limits.check_report(report)
    if report.report_id is None and delivery:
        report = report.model_copy(update={"report_id": f"webhook-{delivery}"})
    return await _take_in(intake, user_report_signals(report))


@router.post(
    "/findings",
    status_code=202,
    response_model=IntakeResponse,
    responses=INTAKE_RESPONSES,
    summary="An internal audit or red-team finding",
)
async def audit_finding(
    finding: Annotated[AuditFinding, Body(openapi_examples=openapi_examples(red_team=examples.AUDIT_FINDING))],
    intake: IntakeDep,
    delivery: DeliveryId,
) -> IntakeResponse:
    """The claimed severity becomes the signal's severity hint; `repro_prompts` become repro
    cases; links in `evidence` are kept as links. Without a `category` the finding goes to
    triage. Give `finding_id` so a resend is recognised; otherwise the body's hash is used.
    """
    limits.check_finding(finding)
    if finding.finding_id is None and delivery:
        finding = finding.model_copy(update={"finding_id": f"webhook-{delivery}"})
    return await _take_in(intake, audit_finding_signals(finding))
