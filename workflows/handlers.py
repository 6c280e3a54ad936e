"""What responders and monitoring send to a running incident, and the rules each must pass.

`IncidentWorkflow` declares the signals, updates and query (their names are in history) and hands
each to a method here: `check_…` is an update's validator, which refuses a bad request before it
reaches history so the caller hears why. Alerts go to `monitoring.py`.
`approve_signal` exists for tools that can only signal; a refused one is recorded in the
timeline, never counted.

Only the Stanch API vouches for a decision (an Ed25519 assertion, stanch.trust.assertions), and
the verdict is recorded in history, so replay never depends on the keys a worker loaded: an
update's validator refuses it without a valid assertion (validators do not run on replay: an
accepted update was vouched for), and an approval signal's assertion is checked by a local
activity whose result history keeps. Runs begun before (no DECISION_VERDICT_PATCH marker) keep
the handler's own check, `assertions.legacy_verdict`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from workflows import approvals
from workflows.record import Record
from workflows.severity import Grading

with workflow.unsafe.imports_passed_through():
    from activities.decisions import verify_approval
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
    from stanch.models.incident import ApprovalRecord, IncidentState, IncidentStatus
    from stanch.trust import assertions

# Lowering severity lowers the protection an incident gets: only these roles may.
SEVERITY_LOWERING_ROLES = {"incident-commander", "safety"}
# From this patch on, a decision's verdict is in history (validator, local activity); before it,
# the handlers checked assertions themselves, on replay too.
DECISION_VERDICT_PATCH = assertions.DECISION_VERDICT_PATCH
# Checking a signature takes microseconds; a few attempts cover a worker restarting mid-check.
VERIFY_TIMEOUT = timedelta(seconds=10)
VERIFY_RETRY = RetryPolicy(maximum_attempts=3)
# How a person decides so that it counts: the API signs, nothing else does.
THROUGH_THE_API = (
    "decide through the Stanch API (`stanch approve|reject|ack|resolve|…` or POST /v1/incidents/{id}/…), "
    "which vouches for decisions with its signing key"
)


class ResponderHandlers:
    def __init__(self, record: Record, grading: Grading) -> None:
        self.record = record
        self.grading = grading

    @property
    def state(self) -> IncidentState:
        return self.record.state

    # --- responders ---------------------------------------------------------------------

    def acknowledge(self, ack: Acknowledgement) -> DecisionReceipt:
        if ignored := self.unvouched(ack, ack.responder, "acknowledgement"):
            return ignored
        self.state.acknowledged_by, self.state.acknowledged_at = ack.responder, workflow.now()
        self.record.note("decision", f"acknowledged by {ack.responder}" + (f": {ack.note}" if ack.note else ""), ack.responder)
        return DecisionReceipt(message=f"{self.state.id} acknowledged by {ack.responder}")

    def check_acknowledge(self, ack: Acknowledgement) -> None:
        self.refuse_if_over()
        if not ack.responder.strip():
            raise ValueError("an acknowledgement must name the responder")
        if self.state.acknowledged_by:
            raise ValueError(f"already acknowledged by {self.state.acknowledged_by} at {self.state.acknowledged_at}")
        self.refuse_unvouched(ack, "acknowledgement")

    def approve(self, decision: ApprovalDecision, *, approve: bool) -> DecisionReceipt:
        return self.count_decision(decision.model_copy(update={"approve": approve}), via="update")

    def check_approve(self, decision: ApprovalDecision, *, approve: bool) -> None:
        # The handler counts the decision with `approve` set by the update's name: so is it signed.
        decided = decision.model_copy(update={"approve": approve})
        self.refuse_decision(decided)
        self.refuse_unvouched(decided, "approval" if approve else "rejection")

    async def approve_signal(self, decision: ApprovalDecision) -> None:
        """For tools that can only signal: the same rules, and a refusal is recorded, not counted.

        The assertion is checked by a local activity (its verdict is a marker in history, read
        back on replay), and the rules again afterwards: the gate may have moved meanwhile."""
        decision_id = decision.decision_id
        if decision_id and (
            decision_id in self.record.memory.seen_decision_ids or decision_id in self.record.memory.decisions_being_checked
        ):
            return
        if not workflow.patched(DECISION_VERDICT_PATCH):
            return self.legacy_approve_signal(decision)
        if self.refused_signal(decision):
            return
        if decision_id:
            self.record.memory.decisions_being_checked.add(decision_id)
        try:
            verdict = await self.verdict_on(decision)
        finally:
            self.record.memory.decisions_being_checked.discard(decision_id)
        if not verdict.vouched:
            return self.note_refused_signal(decision, f"{verdict.reason}; {self.through_the_api()}")
        if decision_id and decision_id in self.record.memory.seen_decision_ids:
            return  # a repeat counted while this one was checked
        if self.refused_signal(decision):
            return
        self.count_decision(decision, via="signal", verified=True)

    async def verdict_on(self, decision: ApprovalDecision) -> assertions.Verdict:
        request = assertions.ApprovalToVerify(occurrence=self.state.occurrence, nonce=decision.decision_id, decision=decision)
        try:
            return await workflow.execute_local_activity(
                verify_approval, request, start_to_close_timeout=VERIFY_TIMEOUT, retry_policy=VERIFY_RETRY
            )
        except ActivityError as failure:  # an error in a signal handler would fail the whole incident
            cause = getattr(failure.cause, "message", None) or str(failure.cause or failure)
            return assertions.Verdict(vouched=False, reason=f"its assertion could not be checked ({cause}); send it again")

    def refused_signal(self, decision: ApprovalDecision) -> bool:
        try:
            self.refuse_decision(decision)
        except ValueError as refusal:
            self.note_refused_signal(decision, str(refusal))
            return True
        return False

    def note_refused_signal(self, decision: ApprovalDecision, reason: str) -> None:
        who = decision.approver or "unknown"
        self.record.note("approval", f"refused signal from {who}: {reason}", who)

    def legacy_approve_signal(self, decision: ApprovalDecision) -> None:
        """A run begun before the patch, as it ran then: the rules, then the handler's own check."""
        if self.refused_signal(decision):
            return
        vouched = self.legacy_vouched(decision, decision.decision_id)
        self.count_decision(decision, via="signal", verified=vouched)

    def set_severity(self, change: SeverityChange) -> DecisionReceipt:
        if ignored := self.unvouched(change, change.by, f"severity change to {change.severity}"):
            return ignored
        self.grading.set_by_responder(change)
        return DecisionReceipt(message=f"severity is now {change.severity}")

    def check_severity(self, change: SeverityChange) -> None:
        self.refuse_if_over(change.by)
        if not change.reason.strip():
            raise ValueError("a severity change needs a reason")
        if change.severity == self.state.severity:
            raise ValueError(f"severity is already {change.severity}")
        if change.severity.rank < self.state.severity.rank and not SEVERITY_LOWERING_ROLES & set(change.roles):
            raise ValueError(
                f"lowering severity needs one of the roles {sorted(SEVERITY_LOWERING_ROLES)}; {change.by} holds {change.roles or 'none'}"
            )
        self.refuse_unvouched(change, f"severity change to {change.severity}")

    def triage(self, decision: TriageDecision) -> DecisionReceipt:
        if ignored := self.unvouched(decision, decision.by, f"triage as {decision.outcome}"):
            return ignored
        self.record.memory.triage_decision = decision
        self.acknowledge_by_acting(decision.by, "triaged")
        self.record.note("decision", f"triaged as {decision.outcome} by {decision.by}: {decision.reason}", decision.by)
        return DecisionReceipt(message=f"triaged as {decision.outcome}")

    def check_triage(self, decision: TriageDecision) -> None:
        self.refuse_if_over(decision.by)
        if self.state.status != IncidentStatus.triage:
            raise ValueError(f"incident is {self.state.status}, not waiting for triage")
        if not decision.reason.strip():
            raise ValueError("a triage decision needs a reason")
        self.refuse_unvouched(decision, f"triage as {decision.outcome}")

    def decide(self, decision: FailureDecision) -> DecisionReceipt:
        if ignored := self.unvouched(decision, decision.by, f"{decision.choice} after failure in {decision.stage}"):
            return ignored
        self.record.memory.failure_decision = decision
        self.acknowledge_by_acting(decision.by, f"decided {decision.choice}")
        self.record.note(
            "decision", f"{decision.choice} after failure in {decision.stage} by {decision.by}: {decision.reason}", decision.by
        )
        return DecisionReceipt(message=f"{decision.choice} recorded for {decision.stage}")

    def check_decide(self, decision: FailureDecision) -> None:
        self.refuse_if_over(decision.by)
        failed_stage, running = self.record.memory.failed_stage, self.record.memory.running_long_step
        if failed_stage is None and running is not None:
            # A long step (a fine-tune) may be aborted while it runs: it is cancelled, protections stay.
            if decision.stage != running or decision.choice != "abort":
                raise ValueError(f"a long step of {running!r} is running: it can only be aborted (choice abort, stage {running!r})")
            return self.refuse_unvouched(decision, f"abort of the running {running} step")
        if failed_stage is None:
            raise ValueError("no failed step is waiting for a decision")
        if decision.stage != failed_stage:
            raise ValueError(f"the failed step is {failed_stage!r}, not {decision.stage!r}")
        if decision.stage == "verify" and decision.choice == "skip":
            raise ValueError("verification cannot be skipped: only a pass moves the incident on (retry or abort)")
        self.refuse_unvouched(decision, f"{decision.choice} after failure in {decision.stage}")

    def resolve(self, request: ResolveRequest) -> DecisionReceipt:
        if ignored := self.unvouched(request, request.by, "resolve request"):
            return ignored
        self.record.memory.resolve_request = request
        self.acknowledge_by_acting(request.by, "resolved")
        self.record.note("decision", f"resolve requested by {request.by}: {request.reason}", request.by)
        return DecisionReceipt(message="remaining work skipped; restore and review will run")

    def check_resolve(self, request: ResolveRequest) -> None:
        self.refuse_if_over(request.by)
        if not request.reason.strip():
            raise ValueError("resolving needs a reason")
        if self.record.memory.resolve_request:
            raise ValueError(f"already resolved by {self.record.memory.resolve_request.by}")
        self.refuse_unvouched(request, "resolve request")

    def record_report_filed(self, report: ReportFiled) -> DecisionReceipt:
        if ignored := self.unvouched(report, report.by, "report filing"):
            return ignored
        self.state.regulatory.filed = report.model_copy(update={"filed_at": report.filed_at or workflow.now()})
        self.record.note("regulatory", f"serious-incident report filed by {report.by}: {report.reference}", report.by)
        return DecisionReceipt(message="report recorded as filed")

    def check_report(self, report: ReportFiled) -> None:
        if not self.state.regulatory.serious:
            raise ValueError("this incident is not marked serious: no report clock runs")
        if self.state.regulatory.filed:
            raise ValueError(f"the report was already recorded by {self.state.regulatory.filed.by}")
        if not report.reference.strip():
            raise ValueError("a filed report needs its reference")
        self.refuse_unvouched(report, "report filing")

    def add_note(self, note: Note) -> DecisionReceipt:
        if ignored := self.unvouched(note, note.by, "note"):
            return ignored
        self.record.note("note", note.text, note.by)
        return DecisionReceipt(message="note added to the timeline")

    def check_note(self, note: Note) -> None:
        if not note.by.strip():
            raise ValueError("a note must name who wrote it")
        self.refuse_unvouched(note, "note")

    def correct_answer(self, correction: AnswerCorrection) -> DecisionReceipt:
        """The answer a repro case should get; a fine-tune trains it on that instead of the runbook's."""
        if ignored := self.unvouched(correction, correction.by, "answer correction"):
            return ignored
        number = self.repro_case_number(correction)
        corrected = correction.model_copy(update={"case": number, "prompt": None})
        # The latest answer for a case replaces the earlier one: as many as there are repro cases, at most.
        kept = [earlier for earlier in self.record.memory.corrections if earlier.case != number]
        self.record.memory.corrections = [*kept, corrected]
        why = f": {correction.reason}" if correction.reason else ""
        self.record.note("decision", f"answer for repro case {number} corrected by {correction.by}{why}", correction.by, case=number)
        return DecisionReceipt(message=f"repro case {number} will be trained on the corrected answer")

    def check_correction(self, correction: AnswerCorrection) -> None:
        self.refuse_if_over(correction.by)
        self.repro_case_number(correction)
        self.refuse_unvouched(correction, "answer correction")

    def repro_case_number(self, correction: AnswerCorrection) -> int:
        """The repro case a correction names (1 for the first); ValueError naming the cases there are."""
        cases = self.state.repro
        if not cases:
            raise ValueError("this incident has no repro case to correct; report one with the incident first")
        if correction.case is not None:
            if correction.case > len(cases):
                raise ValueError(f"there is no repro case {correction.case}: this incident has {len(cases)} (1 to {len(cases)})")
            return correction.case
        for number, case in enumerate(cases, 1):
            if case.prompt == correction.prompt:
                return number
        raise ValueError(f"no repro case has that prompt; name the case by its number instead (1 to {len(cases)})")

    # --- the rules behind them ----------------------------------------------------------

    def refuse_unvouched(self, decision: Any, what: str) -> None:
        """In an update's validator: refuse, before it reaches history, a decision the API did not
        sign for this occurrence and this very update (the update id is the nonce)."""
        with workflow.unsafe.imports_passed_through():  # see legacy_vouched: a failed signature imports
            reason = assertions.check(self.state.occurrence, update_id(), decision)
        if reason:
            raise ValueError(f"{what} refused: {reason}; {self.through_the_api()}")

    def through_the_api(self) -> str:
        return THROUGH_THE_API.replace("{id}", self.state.id)

    def vouched_for(self, decision: Any, nonce: str) -> bool:
        """In an update's handler. From the patch on, its validator checked the assertion before
        the update was accepted, and validators do not run on replay: an accepted update was
        vouched for, and no key is needed to know it."""
        if workflow.patched(DECISION_VERDICT_PATCH):
            return True
        return self.legacy_vouched(decision, nonce)

    def legacy_vouched(self, decision: Any, nonce: str) -> bool:
        """A run begun before the patch: the handler checks the assertion itself, as it did then."""
        # cryptography's Rust core imports `cryptography.exceptions` when a signature fails; inside
        # the sandbox that import would load cryptography a second time, which aborts the process.
        with workflow.unsafe.imports_passed_through():
            return assertions.legacy_verdict(self.state.occurrence, nonce, decision, replaying=workflow.unsafe.is_replaying())

    def unvouched(self, decision: Any, who: str, what: str) -> DecisionReceipt | None:
        """Runs begun before the patch only: a decision that did not come through the Stanch API is
        on record, and has no effect. (From the patch on, the validator refused it.)"""
        if self.vouched_for(decision, update_id()):
            return None
        message = f"{what} from {who or 'unknown'} has no valid assertion from the Stanch API; recorded, not acted on"
        self.record.note("decision", message, who or "unknown")
        return DecisionReceipt(accepted=False, message=message)

    def acknowledge_by_acting(self, responder: str, how: str) -> None:
        """A responder who decides something is on the incident: escalation stops."""
        if self.state.acknowledged_at is None and responder.strip():
            self.state.acknowledged_by, self.state.acknowledged_at = responder, workflow.now()
            self.record.note("decision", f"acknowledged by {responder} ({how})", responder)

    def refuse_if_over(self, who: str | None = None) -> None:
        if self.record.is_over:
            raise ValueError(f"incident is closed ({self.state.status})")
        if who is not None and not who.strip():
            raise ValueError("a decision must name who made it")

    def refuse_decision(self, decision: ApprovalDecision) -> None:
        self.refuse_if_over()
        reason = approvals.refusal(self.state.pending_approval, decision, self.state.approvals)
        if reason:
            raise ValueError(reason)
        if not decision.approve and not decision.comment.strip():
            raise ValueError("a rejection needs a comment saying why")

    def count_decision(self, decision: ApprovalDecision, via: str, verified: bool | None = None) -> DecisionReceipt:
        """Count a decision; `verified` is the verdict when the caller has it (a signal), else the
        update's (`vouched_for`)."""
        if decision.decision_id:
            self.record.memory.seen_decision_ids.add(decision.decision_id)
        vote = ApprovalRecord(
            stage=decision.stage,
            approver=decision.approver,
            roles=decision.roles,
            approve=decision.approve,
            comment=decision.comment,
            at=workflow.now(),
            via=via,
            # An update is vouched for under its update id; a signal under its decision id,
            # which is then spent (seen_decision_ids), so a copied signal counts nowhere.
            verified=self.vouched_for(decision, update_id()) if verified is None else verified,
        )
        self.state.approvals.append(vote)
        if not vote.verified:
            message = (
                f"{decision.stage}: decision from {decision.approver} has no valid assertion from the Stanch API; recorded, not counted"
            )
            self.record.note("approval", message, decision.approver)
            return DecisionReceipt(accepted=False, message=message)
        self.acknowledge_by_acting(decision.approver, f"{'approved' if decision.approve else 'rejected'} {decision.stage}")
        pending = self.state.pending_approval
        if pending and decision.approve and pending.stage == decision.stage:
            pending.approvers.append(decision.approver)
        verb = "approved" if decision.approve else "rejected"
        self.record.note("approval", f"{decision.stage} {verb} by {decision.approver} ({', '.join(decision.roles)})", decision.approver)
        still = approvals.missing(pending, self.state.approvals) if pending and decision.approve else "nothing"
        return DecisionReceipt(message=f"{decision.stage} {verb} by {decision.approver}; still needed: {still}")


def update_id() -> str:
    """The id of the update being handled: the nonce its assertion is bound to."""
    info = workflow.current_update_info()
    return info.id if info else ""
