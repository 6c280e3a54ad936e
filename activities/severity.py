"""Severity: the runbook's rules grade the incident and decide whether it is serious."""

from __future__ import annotations

from temporalio import activity

from stanch.models.activity_io import GradeInput, GradeResult
from stanch.runbooks.conditions import grade, seriousness


@activity.defn(name="grade_severity")
async def grade_by_runbook_rules(input: GradeInput) -> GradeResult:
    severity, reasons = grade(input.runbook, input.signals, input.detectors_fired, input.signal_count, input.affected_users)
    # Seriousness follows the severity in force: the rules never lower what was already set.
    in_force = input.current if input.current is not None and input.current.rank > severity.rank else severity
    serious, days, why = seriousness(
        input.runbook, input.signals, in_force, input.detectors_fired, input.signal_count, input.affected_users
    )
    return GradeResult(severity=severity, reasons=reasons, serious=serious, report_days=days, serious_reason=why)
