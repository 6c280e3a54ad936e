"""Intake from people: a user's or support agent's report of harmful output, and an internal
audit or red-team finding. Both open or join an incident exactly as an alert does."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from stanch.api.alerts import INTAKE_RESPONSES, IntakeResponse, _take_in, openapi_examples
from stanch.api.deps import IntakeDep
from stanch.sources import examples
from stanch.sources.reports import AuditFinding, UserReport, audit_finding_signals, user_report_signals

router = APIRouter(prefix="/v1", tags=["intake"])


@router.post(
    "/reports",
    status_code=202,
    response_model=IntakeResponse,
    responses=INTAKE_RESPONSES,
    summary="A user or support agent reports harmful output",
)
async def user_report(
    report: Annotated[UserReport, Body(openapi_examples=openapi_examples(support_ticket=examples.USER_REPORT))], intake: IntakeDep
) -> IntakeResponse:
    """The prompt and response excerpts become the incident's repro case, replayed to confirm
    it. `category` defaults to `harmful-output`. Give `report_id` (a ticket id) so a resend is
    recognised; without it the same body is recognised by its hash.
    """
    return await _take_in(intake, user_report_signals(report))


@router.post(
    "/findings",
    status_code=202,
    response_model=IntakeResponse,
    responses=INTAKE_RESPONSES,
    summary="An internal audit or red-team finding",
)
async def audit_finding(
    finding: Annotated[AuditFinding, Body(openapi_examples=openapi_examples(red_team=examples.AUDIT_FINDING))], intake: IntakeDep
) -> IntakeResponse:
    """The claimed severity becomes the signal's severity hint; `repro_prompts` become repro
    cases; links in `evidence` are kept as links. Without a `category` the finding goes to
    triage. Give `finding_id` so a resend is recognised; otherwise the body's hash is used.
    """
    return await _take_in(intake, audit_finding_signals(finding))
