"""Severity: the runbook's rules grade the incident, new signals may raise it (never lower it), a
responder may set it with a reason, and the grade decides when the incident becomes serious.

All grading logic lives here; the rules themselves run in the `grade_severity` activity.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows import approvals
from workflows.failures import cause_of
from workflows.policies import QUICK_TIMEOUT, READ_RETRY
from workflows.record import Record

with workflow.unsafe.imports_passed_through():
    from activities.severity import grade_by_runbook_rules
    from stanch.models.activity_io import GradeResult
    from stanch.models.decisions import SeverityChange
    from stanch.models.incident import StageStatus
    from stanch.models.signals import Severity


class Grading:
    def __init__(self, record: Record) -> None:
        self.record = record

    async def grade(self) -> GradeResult:
        """Run the runbook's rules over every signal so far."""
        memory = self.record.memory
        memory.signals_graded = memory.state.signal_count
        memory.kept_signals_graded = len(memory.state.signals)
        memory.regrade_requested = False
        current = memory.state.severity if self.graded_once() else None
        memory.in_flight += 1
        try:
            return await workflow.execute_activity(
                grade_by_runbook_rules, self.record.grade_input(current), start_to_close_timeout=QUICK_TIMEOUT, retry_policy=READ_RETRY
            )
        finally:
            memory.in_flight -= 1

    def apply(self, graded: GradeResult) -> bool:
        """Take a grade: severity only rises, and not over a responder's unless newer signals came.
        True when this grade made the incident serious: its report clock starts now."""
        memory, state = self.record.memory, self.record.state
        newer_than_responder = memory.signals_graded > memory.signals_at_human_severity
        if not self.graded_once() or (graded.severity.rank > state.severity.rank and newer_than_responder):
            self.change(graded.severity, graded.reasons)
        clock = state.regulatory
        if graded.serious and not clock.serious:
            clock.serious, clock.reason = True, graded.serious_reason
            clock.aware_at = workflow.now()
            deadline = clock.deadline = clock.aware_at + timedelta(days=graded.report_days)
            self.record.note("regulatory", f"serious incident ({graded.serious_reason}): report due {deadline.isoformat()}")
            return True
        sooner = clock.aware_at + timedelta(days=graded.report_days) if clock.aware_at else None
        if graded.serious and clock.filed is None and sooner and clock.deadline and sooner < clock.deadline:
            clock.deadline, clock.reason = sooner, graded.serious_reason
            self.record.note("regulatory", f"report deadline brought forward to {clock.deadline.isoformat()} ({graded.serious_reason})")
        return False

    def set_by_responder(self, change: SeverityChange) -> None:
        """A responder's severity stands until newer signals arrive; seriousness is graded again."""
        memory = self.record.memory
        pending = memory.state.pending_approval
        if pending and change.severity.rank < memory.state.severity.rank:
            pending.lowered_by.append(change.by)  # lowering is no way past four eyes
        memory.severity_set_by_human = True
        memory.signals_at_human_severity = memory.state.signal_count
        self.change(change.severity, [f"set by {change.by}: {change.reason}"], change.by)
        memory.regrade_requested = True  # seriousness may follow severity

    async def regrade_on_new_signals(self, became_serious: Callable[[], None]) -> None:
        """New signals (or a responder's change) re-run the rules; severity only ever rises here."""
        record = self.record
        while not record.is_over:
            # Not while this run hands over: the next run grades what this one did not.
            await workflow.wait_condition(lambda: (self.regrade_wanted() and not record.memory.handing_over) or record.is_over)
            if record.is_over:
                return
            try:
                if self.apply(await self.grade()):
                    became_serious()
            except ActivityError as failure:
                # Severity stays as it is (never lower); the next signal tries again.
                record.note("severity", f"re-grading failed, severity kept at {record.state.severity}: {cause_of(failure)}")

    def change(self, severity: Severity, reasons: list[str], actor: str = "stanch") -> None:
        self.record.change_severity(severity, reasons, actor)
        self.refresh_pending_approval()

    def refresh_pending_approval(self) -> None:
        """A higher severity while a step waits applies the new policy's approval rule; a lower one
        never shrinks it: the rule the step was gated with holds, so lowering severity is no way
        past four eyes."""
        pending = self.record.state.pending_approval
        if pending is None:
            return
        if self.record.state.severity.rank < pending.severity.rank:
            self.record.note(
                "approval", f"{pending.stage} keeps the approval rule of {pending.severity}: a lower severity never shrinks it"
            )
            return
        gate = self.record.policy.gate(pending.stage)
        if gate.mode == "approve" and gate.approve:
            pending.count, pending.roles, pending.required_roles = gate.approve.count, gate.approve.roles, gate.approve.required_roles
            pending.severity = self.record.state.severity
            self.record.note("approval", f"{pending.stage} now needs {approvals.missing(pending, self.record.state.approvals)}")

    def graded_once(self) -> bool:
        return self.record.state.stage("severity").status == StageStatus.done or self.record.memory.severity_set_by_human

    def regrade_wanted(self) -> bool:
        """A responder asked, or new signals could change the grade: one the rules can tell apart
        from those kept, or a count reaching a rule's `signals_at_least`. In a storm of the same
        alert, most signals do neither, and grading every one would only slow the incident."""
        memory = self.record.memory
        if memory.regrade_requested:
            return True
        before, now = memory.signals_graded, memory.state.signal_count
        if now <= before or not memory.hardened:  # an incident begun before these rules grades every new signal
            return now > before
        return len(memory.state.signals) > memory.kept_signals_graded or any(before < n <= now for n in self.count_thresholds())

    def count_thresholds(self) -> list[int]:
        """Every `signals_at_least` the runbook's severity and seriousness rules name."""
        conditions = self.record.runbook.grading_conditions()
        return [c.signals_at_least for c in conditions if c.signals_at_least is not None]
