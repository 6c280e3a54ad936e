"""The incident's clocks: paging and escalation until someone acknowledges, severity that rises
with new signals, and the regulatory report clock — each a durable timer in the workflow.

Also the notification call every clock uses: a channel that fails never stops the incident.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from workflows.handlers import ResponderHandlers

with workflow.unsafe.imports_passed_through():
    from stanch.models.activity_io import GradeInput, GradeResult, Notification
    from activities.notify import NotifyActivities
    from activities.severity import grade_by_runbook_rules
    from stanch.models.incident import StageStatus

NOTIFY_RETRY = RetryPolicy(maximum_attempts=3)
GRADE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=20), maximum_attempts=5)
QUICK_TIMEOUT = timedelta(seconds=30)


class IncidentClocks(ResponderHandlers):
    async def escalate_until_acknowledged(self) -> None:
        """Escalate tier by tier on the policy's schedule, then re-notify every ack SLA."""
        acknowledged = lambda: self.state.acknowledged_at is not None or self.is_over
        while not acknowledged():
            tiers = self.policy.escalation
            tier = self.state.escalation_tier
            if tier < len(tiers):
                due, recipients = self.state.opened_at + tiers[tier].after, tiers[tier].notify
            else:
                due = self.last_escalation_at + self.policy.ack_sla
                recipients = tiers[-1].notify if tiers else ["oncall"]
            wait = due - workflow.now()
            if wait > timedelta(0):
                severity = self.state.severity
                try:
                    # A severity change re-plans the schedule with the new policy's tiers.
                    await workflow.wait_condition(lambda: acknowledged() or self.state.severity != severity, timeout=wait)
                    continue
                except TimeoutError:
                    pass
            self.state.escalation_tier = tier + 1
            self.last_escalation_at = workflow.now()
            self.note("escalation", f"not acknowledged: escalating to tier {tier + 1} {recipients}")
            await self.notify("escalation", recipients, f"{self.state.id} is not acknowledged", tier=tier + 1)

    async def regrade_on_new_signals(self) -> None:
        """New signals (or a responder's change) re-run the rules; severity only ever rises here."""
        while not self.is_over:
            await workflow.wait_condition(lambda: self.regrade_wanted() or self.is_over)
            if self.is_over:
                return
            try:
                self.apply_grade(await self.run_grading())
            except ActivityError as failure:
                # Severity stays as it is (never lower); the next signal tries again.
                self.note("severity", f"re-grading failed, severity kept at {self.state.severity}: {cause_of(failure)}")

    async def run_report_clock(self) -> None:
        """Art. 73 report clock: reminders widen as the deadline nears, until the report is filed."""
        clock = self.state.regulatory
        while clock.filed is None:
            deadline = clock.deadline
            remaining = deadline - workflow.now()
            wait = min(self.runbook.regulatory.reminder_every, remaining) if remaining > timedelta(0) else self.runbook.regulatory.reminder_every
            try:
                # A shorter clock (a death, widespread harm) moves the deadline: re-plan at once.
                await workflow.wait_condition(lambda: clock.filed is not None or clock.deadline != deadline, timeout=wait)
                continue
            except TimeoutError:
                clock.reminders_sent += 1
                overdue = workflow.now() >= clock.deadline
                recipients = ["safety"] + (["incident-commander"] if remaining <= timedelta(days=2) else []) + (["executive"] if overdue else [])
                message = f"{self.state.id}: serious-incident report {'OVERDUE since' if overdue else 'due'} {clock.deadline.isoformat()}"
                self.note("regulatory", message)
                await self.notify("report_reminder", recipients, message, tier=clock.reminders_sent)

    async def run_grading(self) -> GradeResult:
        self.signals_graded = len(self.state.signals)
        self.regrade_requested = False
        return await workflow.execute_activity(
            grade_by_runbook_rules,
            GradeInput(
                runbook=self.runbook,
                signals=[signal.model_copy(update={"raw": {}}) for signal in self.state.signals],  # rules never read raw
                detectors_fired=self.detectors_fired,
                current=self.state.severity if self.graded_once() else None,
            ),
            start_to_close_timeout=QUICK_TIMEOUT,
            retry_policy=GRADE_RETRY,
        )

    def apply_grade(self, graded: GradeResult) -> None:
        newer_than_responder = self.signals_graded > self.signals_at_human_severity
        if not self.graded_once() or (graded.severity.rank > self.state.severity.rank and newer_than_responder):
            self.change_severity(graded.severity, graded.reasons)
            self.refresh_pending_approval()
        clock = self.state.regulatory
        if graded.serious and not clock.serious:
            clock.serious, clock.reason = True, graded.serious_reason
            clock.aware_at = workflow.now()
            clock.deadline = clock.aware_at + timedelta(days=graded.report_days)
            self.note("regulatory", f"serious incident ({graded.serious_reason}): report due {clock.deadline.isoformat()}")
            self.background.append(asyncio.create_task(self.run_report_clock()))
        elif graded.serious and clock.filed is None and clock.aware_at + timedelta(days=graded.report_days) < clock.deadline:
            clock.deadline, clock.reason = clock.aware_at + timedelta(days=graded.report_days), graded.serious_reason
            self.note("regulatory", f"report deadline brought forward to {clock.deadline.isoformat()} ({graded.serious_reason})")

    def graded_once(self) -> bool:
        return self.state.stage("severity").status == StageStatus.done or self.severity_set_by_human

    async def notify(self, kind: str, recipients: list[str], message: str, tier: int = 0) -> None:
        """A channel that fails never stops the incident: the failure goes to the timeline."""
        self.notifications_sent += 1
        notification = Notification(
            incident_id=self.state.id,
            kind=kind,
            recipients=recipients,
            message=message,
            severity=self.state.severity,
            tier=tier,
            dedup_id=f"{self.state.occurrence}/notify/{self.notifications_sent}",
            dry_run=self.input.dry_run,
        )
        try:
            result = await workflow.execute_activity_method(
                NotifyActivities.deliver, notification, start_to_close_timeout=QUICK_TIMEOUT, retry_policy=NOTIFY_RETRY
            )
            self.note("notification", f"{kind} → {', '.join(recipients)} via {', '.join(result.delivered + result.already_delivered)}: {message}")
            if result.failed:
                self.note("notification", f"{kind} to {', '.join(recipients)}: not delivered by {'; '.join(result.failed)}")
        except ActivityError as failure:
            self.note("notification", f"{kind} to {', '.join(recipients)} failed: {cause_of(failure)}")

    def next_tier_recipients(self) -> list[str]:
        tiers = self.policy.escalation
        return tiers[min(self.state.escalation_tier, len(tiers) - 1)].notify if tiers else ["oncall"]


def cause_of(failure: ActivityError) -> str:
    cause = failure.cause
    return getattr(cause, "message", None) or str(cause or failure)
