"""The gate and the fail-safe: how a stage waits for approval, and what happens when an action fails.

A gated stage runs, is skipped, or waits until enough of the right people approve (four eyes
where the policy says so). A failed action keeps everything applied in place, tells on-call and
waits for a human to choose retry, skip or abort.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from workflows.clocks import IncidentClocks, cause_of
from workflows.handlers import IncidentAborted

with workflow.unsafe.imports_passed_through():
    from stanch.models.activity_io import ApplyInput
    from stanch.models.incident import IncidentStatus, PendingApproval, StageStatus
    from stanch.models.actions import ActionSpec
    from stanch.runbooks.schema import Approval, StageGate
    from workflows import approvals

__all__ = ["ACTION_RETRY", "ACTION_TIMEOUT", "REVERSIBLE_STAGES", "IncidentAborted", "IncidentGates"]

# Mutations retry a few times with backoff; what retrying cannot fix fails at once.
ACTION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=20),
    maximum_attempts=5,
    non_retryable_error_types=["InvalidAction", "UnknownTarget"],
)
ACTION_TIMEOUT = timedelta(seconds=30)
LONG_ACTION_HEARTBEAT = timedelta(seconds=10)
REVERSIBLE_STAGES = ("contain", "rollback")
RESTORE_APPROVER_ROLES = ("oncall", "safety", "incident-commander")


def captured_in(failure: ActivityError) -> dict | None:
    """The values a failed step read before its change, as the failure carries them out (the
    ApplicationError's details, or the last heartbeat of an attempt that timed out)."""
    cause = failure.cause
    details = getattr(cause, "details", None) or getattr(cause, "last_heartbeat_details", None) or ()
    for detail in details:
        if isinstance(detail, dict) and "http_captured_for" in detail and isinstance(detail.get("captured"), dict):
            return detail["captured"]
    return None


class IncidentGates(IncidentClocks):
    async def gate(self, stage: str, actions: list, requested_by: str = "stanch") -> bool:
        """Run, skip or wait for approval, as the runbook's policy for this severity says."""
        if self.resolve_request and stage != "restore":
            self.mark(stage, StageStatus.skipped, f"resolved by {self.resolve_request.by}")
            return False
        if not actions:
            self.mark(stage, StageStatus.skipped, f"nothing to {stage}")
            return False
        gate = self.policy.gate(stage)
        if stage == "restore":
            gate = self.restore_gate(gate)
        if gate.mode == "skip":
            self.mark(stage, StageStatus.skipped, f"policy for {self.state.severity} skips {stage}")
            return False
        if gate.mode == "approve":
            pending = PendingApproval(
                stage=stage,
                severity=self.state.severity,
                count=gate.approve.count,
                roles=gate.approve.roles,
                required_roles=gate.approve.required_roles,
                requested_by=requested_by,
                requested_at=workflow.now(),
            )
            self.state.pending_approval = pending
            self.mark(stage, StageStatus.awaiting_approval, approvals.missing(pending, self.state.approvals))
            await self.notify("approval_needed", pending.roles, f"{self.state.id}: {stage} waits for approval")
            resolved = lambda: self.resolve_request is not None and stage != "restore"
            settled = lambda: (
                approvals.is_satisfied(pending, self.state.approvals)
                or approvals.is_rejected(pending, self.state.approvals)
                or resolved()
            )
            timed_out = False
            while not settled():
                try:
                    await workflow.wait_condition(settled, timeout=self.policy.approval_timeout)
                except TimeoutError:
                    await self.notify("escalation", self.next_tier_recipients(), f"{self.state.id}: approval of {stage} overdue")
                    if gate.approve.auto_on_timeout:  # the runbook says waiting is worse than acting
                        timed_out = True
                        break
            self.state.pending_approval = None
            if timed_out:
                self.mark(stage, StageStatus.running, f"nobody decided within {self.policy.approval_timeout}: automatic, as the runbook says")
                return True
            if resolved():
                self.mark(stage, StageStatus.skipped, f"resolved by {self.resolve_request.by} while awaiting approval")
                return False
            if approvals.is_rejected(pending, self.state.approvals):
                no = next(r for r in approvals.current_votes(pending, self.state.approvals) if not r.approve)
                self.mark(stage, StageStatus.rejected, f"rejected by {no.approver}: {no.comment}")
                return False
            approvers = [r.approver for r in approvals.current_votes(pending, self.state.approvals)]
            self.mark(stage, StageStatus.running, f"approved by {', '.join(approvers)}")
            return True
        self.mark(stage, StageStatus.running, f"automatic at {self.state.severity}")
        return True

    def restore_gate(self, gate: StageGate) -> StageGate:
        """Lifting protections is automatic only after a verified fix that nobody cut short.

        A resolve request, or a fix that was skipped, rejected or never verified, puts a human
        in the loop whatever the policy says — and the person who resolved cannot approve it.
        """
        if gate.mode == "approve" or (self.state.stage("verify").status == StageStatus.done and not self.resolve_request):
            return gate
        why = "a resolve request" if self.resolve_request else "no verified fix"
        self.note("restore", f"restore needs an approval: {why}")
        return StageGate(mode="approve", approve=Approval(count=1, roles=list(RESTORE_APPROVER_ROLES)))

    async def apply_actions(self, stage: str, actions: list[ActionSpec], activity, timeout=ACTION_TIMEOUT) -> None:
        """Apply each action once (idempotency key per incident, stage, index and target)."""
        for index, action in enumerate(actions):
            captured = None  # what a failed run read before its change: a retry reuses it
            while True:
                try:
                    applied = await workflow.execute_activity_method(
                        activity,
                        ApplyInput(
                            incident_id=self.state.id,
                            occurrence=self.state.occurrence,
                            stage=stage,
                            index=index,
                            target=self.state.target,
                            action=action,
                            dry_run=self.input.dry_run,
                            captured=captured,
                        ),
                        start_to_close_timeout=timeout,
                        heartbeat_timeout=LONG_ACTION_HEARTBEAT if timeout > ACTION_TIMEOUT else None,
                        retry_policy=ACTION_RETRY,
                    )
                except ActivityError as failure:
                    captured = captured_in(failure) or captured
                    if await self.ask_a_human(stage, f"{action.kind} failed: {cause_of(failure)}") == "retry":
                        continue
                    self.note("action", f"{action.kind} skipped by a responder")
                    break
                self.state.actions.append(applied)
                done = "dry run, would apply" if self.input.dry_run else "applied"
                self.note("action", f"{stage}: {done} {action.kind}", key=applied.idempotency_key, result=applied.result)
                break

    def applied_summary(self, stage: str) -> str:
        kinds = [a.kind for a in self.state.actions if a.stage == stage]
        return f"applied {', '.join(kinds)}" if kinds else "nothing applied"

    async def ask_a_human(self, stage: str, problem: str) -> str:
        """Fail safe: everything applied stays in place, on-call is told, a human decides."""
        status_before = self.state.status
        self.failure_decision = None
        self.failed_stage = stage
        self.mark(stage, StageStatus.failed, problem)
        self.set_status(IncidentStatus.awaiting_decision)
        await self.notify("action_failed", ["oncall", "incident-commander"], f"{self.state.id}: {problem}; decide retry, skip or abort")
        while self.failure_decision is None:
            try:
                await workflow.wait_condition(lambda: self.failure_decision is not None, timeout=self.policy.approval_timeout)
            except TimeoutError:
                await self.notify("escalation", self.next_tier_recipients(), f"{self.state.id}: {stage} failed, no decision yet")
        decision, self.failed_stage = self.failure_decision, None
        if decision.choice == "abort":
            raise IncidentAborted(decision.by, decision.reason or f"{stage} failed: {problem}")
        self.set_status(status_before)
        self.mark(stage, StageStatus.running, f"{decision.choice} chosen by {decision.by}")
        return decision.choice
