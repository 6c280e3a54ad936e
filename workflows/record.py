"""The incident's record: its state, timeline and search attributes, kept by the workflow.

Bookkeeping only; the lifecycle itself (stages, gates, timers, compensations) reads in
`workflows/incident.py`.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from stanch.temporal import search_attributes as sa
    from stanch.models.incident import TERMINAL_STATUSES, IncidentInput, IncidentState, IncidentStatus, StageStatus, TimelineEntry, fresh_stages
    from stanch.models.signals import Severity


class IncidentRecord:
    """State of one incident, and the one place that changes it."""

    def __init__(self, input: IncidentInput) -> None:
        self.input = input
        self.runbook = input.runbook
        self.state = IncidentState(
            id=input.incident_id,
            status=IncidentStatus.open,
            severity=input.runbook.severity.default,
            runbook=input.runbook.name,
            runbook_sha256=input.runbook_sha256,
            target=input.target,
            dedup_key=input.dedup_key,
            opened_at=workflow.now(),
            stages=fresh_stages(),
            occurrence=f"{input.incident_id}@{workflow.info().first_execution_run_id[:8]}",
        )

    @property
    def policy(self):
        return self.runbook.policy_for(self.state.severity)

    @property
    def is_over(self) -> bool:
        return self.state.status in TERMINAL_STATUSES

    def note(self, kind: str, message: str, actor: str = "stanch", **data) -> None:
        self.state.timeline.append(TimelineEntry(at=workflow.now(), kind=kind, message=message, actor=actor, data=data))

    def set_status(self, status: IncidentStatus) -> None:
        if self.state.status != status:
            self.state.status = status
            self.publish()

    def change_severity(self, severity: Severity, reasons: list[str], actor: str = "stanch") -> None:
        previous = self.state.severity
        self.state.severity = severity
        self.state.severity_reasons = reasons
        if previous != severity:
            self.note("severity", f"severity {previous} → {severity}: {'; '.join(reasons)}", actor)
            self.publish()

    def mark(self, stage: str, status: StageStatus, detail: str = "") -> None:
        record = self.state.stage(stage)
        if status == StageStatus.running and record.started_at is None:
            record.started_at = workflow.now()
        if status in (StageStatus.done, StageStatus.skipped, StageStatus.rejected):
            record.finished_at = workflow.now()
        record.status = status
        record.detail = detail
        self.note("stage", f"{stage}: {status}" + (f" — {detail}" if detail else ""), stage=stage, status=status.value)

    def publish(self) -> None:
        """Mirror status and severity into search attributes (never anything secret)."""
        if not self.input.upsert_search_attributes:
            return
        workflow.upsert_search_attributes(
            [
                sa.INCIDENT_STATUS.value_set(self.state.status.value),
                sa.INCIDENT_SEVERITY.value_set(self.state.severity.value),
                sa.INCIDENT_RUNBOOK.value_set(self.state.runbook),
                sa.INCIDENT_TARGET.value_set(f"{self.state.target.adapter}:{self.state.target.model}"),
                sa.INCIDENT_OPENED_AT.value_set(self.state.opened_at),
            ]
        )
