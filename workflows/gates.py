"""The gate and the fail-safe: how a stage waits for approval, and what happens when a step fails.

A gated stage runs, is skipped, or waits until enough of the right people approve (four eyes
where the policy says so). Restore has a rule of its own: undoing protections is automatic only
after a verified fix nobody cut short. A step that fails after its retries keeps everything
applied in place, tells on-call and waits for a human to choose retry, skip or abort.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows import approvals
from workflows.clocks import Clocks
from workflows.failures import HandOver, IncidentAborted, StepFailed, cause_of
from workflows.notifications import Notifier
from workflows.objectives import approval_waited_for
from workflows.record import Record

with workflow.unsafe.imports_passed_through():
    from stanch.models.actions import AppliedAction
    from stanch.models.decisions import FailureDecision
    from stanch.models.incident import IncidentStatus, PendingApproval, StageStatus
    from stanch.runbooks.schema import Approval, StageGate
    from stanch.trust.permissions import RESPONDER_ROLES

T = TypeVar("T")


class Gates:
    def __init__(self, record: Record, notifier: Notifier, clocks: Clocks) -> None:
        self.record = record
        self.notifier = notifier
        self.clocks = clocks

    async def gate(self, stage: str, steps: list) -> bool:
        """Run, skip or wait for approval, as the runbook's policy for this severity says."""
        if self.passed_before(stage):
            return True
        resolved = self.record.memory.resolve_request
        if resolved:
            self.record.mark(stage, StageStatus.skipped, f"resolved by {resolved.by}")
            return False
        if not steps:
            self.record.mark(stage, StageStatus.skipped, f"nothing to {stage}")
            return False
        return await self.follow_policy(stage, self.record.policy.gate(stage), requested_by="stanch", resolve_skips_it=True)

    async def gate_restore(self, protections: list[AppliedAction]) -> bool:
        """Lifting protections is automatic only after a verified fix that nobody cut short.

        A resolve request, or a fix that was skipped, rejected or never verified, puts a human
        in the loop whatever the policy says — and the person who resolved cannot approve it.
        """
        if not protections:
            self.record.mark("restore", StageStatus.skipped, "nothing to restore")
            return False
        resolved = self.record.memory.resolve_request
        if self.passed_before("restore") or self.pending_for("restore"):  # a continued run: as it was
            return await self.follow_policy("restore", self.record.policy.gate("restore"), requested_by="stanch", resolve_skips_it=False)
        gate = self.record.policy.gate("restore")
        if gate.mode != "approve" and (resolved or self.record.state.stage("verify").status != StageStatus.done):
            self.record.note("restore", f"restore needs an approval: {'a resolve request' if resolved else 'no verified fix'}")
            gate = StageGate(mode="approve", approve=Approval(count=1, roles=list(RESPONDER_ROLES)))
        return await self.follow_policy("restore", gate, requested_by=resolved.by if resolved else "stanch", resolve_skips_it=False)

    def pending_for(self, stage: str) -> PendingApproval | None:
        pending = self.record.state.pending_approval
        return pending if pending is not None and pending.stage == stage else None

    def passed_before(self, stage: str) -> bool:
        """A continued run finds this stage past its gate (running, or failed and waiting for a decision)."""
        return self.record.state.stage(stage).status in (StageStatus.running, StageStatus.failed)

    async def follow_policy(self, stage: str, gate: StageGate, *, requested_by: str, resolve_skips_it: bool) -> bool:
        record, state = self.record, self.record.state
        if self.passed_before(stage):
            return True
        pending = self.pending_for(stage)
        # A continued run finds its request pending still: it stands, whatever severity says now.
        if pending is None:
            if gate.mode == "skip":
                record.mark(stage, StageStatus.skipped, f"policy for {state.severity} skips {stage}")
                return False
            if gate.mode != "approve":
                record.mark(stage, StageStatus.running, f"automatic at {state.severity}")
                record.memory.went_ahead[stage] = "automatically (policy auto)"
                return True
            approval = gate.approve or Approval()  # a gate in approve mode always has one
            pending = PendingApproval(
                stage=stage,
                severity=state.severity,
                count=approval.count,
                roles=approval.roles,
                required_roles=approval.required_roles,
                requested_by=requested_by,
                requested_at=workflow.now(),
                auto_on_timeout=approval.auto_on_timeout,
            )
            state.pending_approval = pending
            record.mark(stage, StageStatus.awaiting_approval, approvals.missing(pending, state.approvals))
            await self.notifier.send("approval_needed", pending.roles, f"{state.id}: {stage} waits for approval")

        def resolved() -> bool:
            return resolve_skips_it and record.memory.resolve_request is not None

        def settled() -> bool:
            return approvals.is_satisfied(pending, state.approvals) or approvals.is_rejected(pending, state.approvals) or resolved()

        def waited_for(decided: bool) -> str:
            if not decided:
                return "anyone: nobody decided within the approval timeout, so it went ahead"
            if resolved():
                return "a decision, until the incident was resolved"
            votes = approvals.current_votes(pending, state.approvals)
            if no := next((vote for vote in votes if not vote.approve), None):
                return f"a decision ({no.approver} rejected it)"
            return approval_waited_for(pending.requested_at, [(vote.approver, vote.at) for vote in votes], pending.count)

        decided = await self.clocks.wait_for_a_person(
            settled,
            every=lambda: record.policy.approval_timeout,
            overdue=f"{state.id}: approval of {stage} overdue",
            act_after_first_reminder=pending.auto_on_timeout,  # the runbook says waiting is worse than acting
            gate=f"the {stage} approval",
            stage=stage,
            waited_for=waited_for,
        )
        state.pending_approval = None
        if not decided:
            record.mark(
                stage, StageStatus.running, f"nobody decided within {record.policy.approval_timeout}: automatic, as the runbook says"
            )
            record.memory.went_ahead[stage] = (
                f"automatically: nobody decided within {record.policy.approval_timeout} (policy auto_on_timeout)"
            )
            return True
        if resolve_skips_it and (request := record.memory.resolve_request):
            record.mark(stage, StageStatus.skipped, f"resolved by {request.by} while awaiting approval")
            return False
        if approvals.is_rejected(pending, state.approvals):
            no = next(r for r in approvals.current_votes(pending, state.approvals) if not r.approve)
            record.mark(stage, StageStatus.rejected, f"rejected by {no.approver}: {no.comment}")
            return False
        approvers = [r.approver for r in approvals.current_votes(pending, state.approvals)]
        record.mark(stage, StageStatus.running, f"approved by {', '.join(approvers)}")
        record.memory.went_ahead[stage] = f"after approval by {', '.join(approvers)}"
        return True

    async def attempt(self, stage: str, what: str, call: Callable[[], Awaitable[T]], *, skippable: bool = True) -> T | None:
        """Run `call`; if it fails after its retries, a human decides. Retry runs it again, skip
        returns None, abort ends the lifecycle (IncidentAborted) with every protection in place.
        Where skipping is not `skippable` (verification), only a success returns.

        Before each call is also where a long history hands over (nothing of the lifecycle is
        under way): a storm while steps run without a wait must not outgrow the run."""
        while True:
            if self.record.history_is_long():
                raise HandOver()
            if self.record.memory.failed_stage == stage:  # a continued run: the failure still waits for a human
                self.record.set_status(IncidentStatus.awaiting_decision)
            else:
                try:
                    return await call()
                except (ActivityError, StepFailed) as failure:
                    await self.report_failure(stage, f"{what} failed: {cause_of(failure)}")
            if await self.ask_a_human(stage) == "skip" and skippable:
                return None

    async def report_failure(self, stage: str, problem: str) -> None:
        """Fail safe: everything applied stays in place, and on-call is told a human must decide."""
        record, memory = self.record, self.record.memory
        memory.status_before_failure = record.state.status.value
        memory.failure_decision = None
        memory.failed_stage = stage
        record.mark(stage, StageStatus.failed, problem)
        record.set_status(IncidentStatus.awaiting_decision)
        await self.notifier.send(
            "action_failed", ["oncall", "incident-commander"], f"{record.state.id}: {problem}; decide retry, skip or abort"
        )

    async def ask_a_human(self, stage: str) -> str:
        """Wait, reminding, for retry, skip or abort of the failed stage."""
        record, memory = self.record, self.record.memory
        await self.clocks.wait_for_a_person(
            lambda: memory.failure_decision is not None,
            every=lambda: record.policy.approval_timeout,
            overdue=f"{record.state.id}: {stage} failed, no decision yet",
            gate=f"the decision on the failed {stage}",
            stage=stage,
            waited_for=lambda decided: "a responder to choose retry, skip or abort",
        )
        decision = cast(FailureDecision, memory.failure_decision)  # the wait ends only once there is one
        memory.failed_stage = None
        if decision.choice == "abort":
            raise IncidentAborted(decision.by, decision.reason or f"{stage} failed: {record.state.stage(stage).detail}")
        record.set_status(IncidentStatus(memory.status_before_failure or record.state.status))
        record.mark(stage, StageStatus.running, f"{decision.choice} chosen by {decision.by}")
        return decision.choice
