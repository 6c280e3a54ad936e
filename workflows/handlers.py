"""What responders and monitoring send to a running incident, and the rules each must pass.

Alerts are signals (deduplicated by signal id). Decisions are updates whose validators refuse
a bad request before it reaches history, so the caller hears why. `approve_signal` exists for
tools that can only signal; a refused one is recorded in the timeline, never counted.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.record import IncidentRecord

with workflow.unsafe.imports_passed_through():
    from stanch.models.activity_io import Finding
    from stanch.trust import assertions
    from stanch.models.decisions import Acknowledgement, ApprovalDecision, DecisionReceipt, FailureDecision, Note, ReportFiled, ResolveRequest, SeverityChange, TriageDecision
    from stanch.models.incident import ApprovalRecord, IncidentInput, IncidentState, IncidentStatus
    from stanch.models.signals import ReproCase, Signal
    from workflows import approvals

# Lowering severity lowers the protection an incident gets: only these roles may.
SEVERITY_LOWERING_ROLES = {"incident-commander", "safety"}


class IncidentAborted(Exception):
    """A responder chose abort after a failure: the lifecycle stops, protections stay."""

    def __init__(self, by: str, reason: str) -> None:
        super().__init__(reason)
        self.by = by


class ResponderHandlers(IncidentRecord):
    def __init__(self, input: IncidentInput) -> None:
        super().__init__(input)
        self.seen_signal_ids: set[str] = set()
        self.seen_decision_ids: set[str] = set()
        self.detectors_fired: list[str] = []
        self.findings: list[Finding] = []
        self.triage_decision: TriageDecision | None = None
        self.failure_decision: FailureDecision | None = None
        self.failed_stage: str | None = None
        self.resolve_request: ResolveRequest | None = None
        self.severity_set_by_human = False
        self.signals_at_human_severity = 0  # a responder's severity stands until newer signals arrive
        self.regrade_requested = False
        self.signals_graded = 0
        self.notifications_sent = 0
        self.last_escalation_at = self.state.opened_at

    # --- monitoring --------------------------------------------------------------------

    @workflow.signal
    def add_signal(self, signal: Signal) -> None:
        if signal.signal_id in self.seen_signal_ids:
            return  # a redelivery, not a second signal
        self.seen_signal_ids.add(signal.signal_id)
        self.state.signals.append(signal)
        self.merge_repro(signal.repro)
        self.note("signal", f"{signal.sender} {signal.status}: {signal.title or signal.signal_id}", signal.sender, signal_id=signal.signal_id)

    # --- responders --------------------------------------------------------------------

    @workflow.update
    def acknowledge(self, ack: Acknowledgement) -> DecisionReceipt:
        if ignored := self.unvouched(ack, ack.responder, "acknowledgement"):
            return ignored
        self.state.acknowledged_by, self.state.acknowledged_at = ack.responder, workflow.now()
        self.note("decision", f"acknowledged by {ack.responder}" + (f": {ack.note}" if ack.note else ""), ack.responder)
        return DecisionReceipt(message=f"{self.state.id} acknowledged by {ack.responder}")

    @acknowledge.validator
    def _check_acknowledge(self, ack: Acknowledgement) -> None:
        self.refuse_if_over()
        if not ack.responder.strip():
            raise ValueError("an acknowledgement must name the responder")
        if self.state.acknowledged_by:
            raise ValueError(f"already acknowledged by {self.state.acknowledged_by} at {self.state.acknowledged_at}")

    @workflow.update
    def approve(self, decision: ApprovalDecision) -> DecisionReceipt:
        return self.count_decision(decision.model_copy(update={"approve": True}), via="update")

    @approve.validator
    def _check_approve(self, decision: ApprovalDecision) -> None:
        self.refuse_decision(decision.model_copy(update={"approve": True}))

    @workflow.update
    def reject(self, decision: ApprovalDecision) -> DecisionReceipt:
        return self.count_decision(decision.model_copy(update={"approve": False}), via="update")

    @reject.validator
    def _check_reject(self, decision: ApprovalDecision) -> None:
        self.refuse_decision(decision.model_copy(update={"approve": False}))

    @workflow.signal
    def approve_signal(self, decision: ApprovalDecision) -> None:
        """For tools that can only signal: the same rules, and a refusal is recorded, not counted."""
        if decision.decision_id and decision.decision_id in self.seen_decision_ids:
            return
        try:
            self.refuse_decision(decision)
        except ValueError as refusal:
            self.note("approval", f"refused signal from {decision.approver or 'unknown'}: {refusal}", decision.approver or "unknown")
            return
        self.count_decision(decision, via="signal")

    @workflow.update
    def set_severity(self, change: SeverityChange) -> DecisionReceipt:
        if ignored := self.unvouched(change, change.by, f"severity change to {change.severity}"):
            return ignored
        self.severity_set_by_human = True
        self.signals_at_human_severity = len(self.state.signals)
        self.change_severity(change.severity, [f"set by {change.by}: {change.reason}"], change.by)
        self.refresh_pending_approval()
        self.regrade_requested = True  # seriousness may follow severity
        return DecisionReceipt(message=f"severity is now {change.severity}")

    @set_severity.validator
    def _check_severity(self, change: SeverityChange) -> None:
        self.refuse_if_over(change.by)
        if not change.reason.strip():
            raise ValueError("a severity change needs a reason")
        if change.severity == self.state.severity:
            raise ValueError(f"severity is already {change.severity}")
        if change.severity.rank < self.state.severity.rank and not SEVERITY_LOWERING_ROLES & set(change.roles):
            raise ValueError(f"lowering severity needs one of the roles {sorted(SEVERITY_LOWERING_ROLES)}; {change.by} holds {change.roles or 'none'}")

    @workflow.update
    def triage(self, decision: TriageDecision) -> DecisionReceipt:
        if ignored := self.unvouched(decision, decision.by, f"triage as {decision.outcome}"):
            return ignored
        self.triage_decision = decision
        self.acknowledge_by_acting(decision.by, "triaged")
        self.note("decision", f"triaged as {decision.outcome} by {decision.by}: {decision.reason}", decision.by)
        return DecisionReceipt(message=f"triaged as {decision.outcome}")

    @triage.validator
    def _check_triage(self, decision: TriageDecision) -> None:
        self.refuse_if_over(decision.by)
        if self.state.status != IncidentStatus.triage:
            raise ValueError(f"incident is {self.state.status}, not waiting for triage")
        if not decision.reason.strip():
            raise ValueError("a triage decision needs a reason")

    @workflow.update
    def decide(self, decision: FailureDecision) -> DecisionReceipt:
        if ignored := self.unvouched(decision, decision.by, f"{decision.choice} after failure in {decision.stage}"):
            return ignored
        self.failure_decision = decision
        self.acknowledge_by_acting(decision.by, f"decided {decision.choice}")
        self.note("decision", f"{decision.choice} after failure in {decision.stage} by {decision.by}: {decision.reason}", decision.by)
        return DecisionReceipt(message=f"{decision.choice} recorded for {decision.stage}")

    @decide.validator
    def _check_decide(self, decision: FailureDecision) -> None:
        self.refuse_if_over(decision.by)
        if self.failed_stage is None:
            raise ValueError("no failed step is waiting for a decision")
        if decision.stage != self.failed_stage:
            raise ValueError(f"the failed step is {self.failed_stage!r}, not {decision.stage!r}")
        if decision.stage == "verify" and decision.choice == "skip":
            raise ValueError("verification cannot be skipped: only a pass moves the incident on (retry or abort)")

    @workflow.update
    def resolve(self, request: ResolveRequest) -> DecisionReceipt:
        if ignored := self.unvouched(request, request.by, "resolve request"):
            return ignored
        self.resolve_request = request
        self.acknowledge_by_acting(request.by, "resolved")
        self.note("decision", f"resolve requested by {request.by}: {request.reason}", request.by)
        return DecisionReceipt(message="remaining work skipped; restore and review will run")

    @resolve.validator
    def _check_resolve(self, request: ResolveRequest) -> None:
        self.refuse_if_over(request.by)
        if not request.reason.strip():
            raise ValueError("resolving needs a reason")
        if self.resolve_request:
            raise ValueError(f"already resolved by {self.resolve_request.by}")

    @workflow.update
    def record_report_filed(self, report: ReportFiled) -> DecisionReceipt:
        if ignored := self.unvouched(report, report.by, "report filing"):
            return ignored
        self.state.regulatory.filed = report.model_copy(update={"filed_at": report.filed_at or workflow.now()})
        self.note("regulatory", f"serious-incident report filed by {report.by}: {report.reference}", report.by)
        return DecisionReceipt(message="report recorded as filed")

    @record_report_filed.validator
    def _check_report(self, report: ReportFiled) -> None:
        if not self.state.regulatory.serious:
            raise ValueError("this incident is not marked serious: no report clock runs")
        if self.state.regulatory.filed:
            raise ValueError(f"the report was already recorded by {self.state.regulatory.filed.by}")
        if not report.reference.strip():
            raise ValueError("a filed report needs its reference")

    @workflow.update
    def add_note(self, note: Note) -> DecisionReceipt:
        if ignored := self.unvouched(note, note.by, "note"):
            return ignored
        self.note("note", note.text, note.by)
        return DecisionReceipt(message="note added to the timeline")

    @add_note.validator
    def _check_note(self, note: Note) -> None:
        if not note.by.strip():
            raise ValueError("a note must name who wrote it")

    @workflow.query(name="state")
    def current_state(self) -> IncidentState:
        return self.state

    # --- the rules behind them ---------------------------------------------------------------

    def vouched_for(self, decision, nonce: str) -> bool:
        """Signed by the API for this occurrence and this very update (or signal decision id)."""
        return bool(nonce) and assertions.verified(self.state.occurrence, nonce, decision)

    def unvouched(self, decision, who: str, what: str) -> DecisionReceipt | None:
        """A decision that did not come through the Stanch API is on record, and has no effect."""
        if self.vouched_for(decision, workflow.current_update_info().id):
            return None
        message = f"{what} from {who or 'unknown'} has no valid assertion from the Stanch API; recorded, not acted on"
        self.note("decision", message, who or "unknown")
        return DecisionReceipt(accepted=False, message=message)

    def acknowledge_by_acting(self, responder: str, how: str) -> None:
        """A responder who decides something is on the incident: escalation stops."""
        if self.state.acknowledged_at is None and responder.strip():
            self.state.acknowledged_by, self.state.acknowledged_at = responder, workflow.now()
            self.note("decision", f"acknowledged by {responder} ({how})", responder)

    def refuse_if_over(self, who: str | None = None) -> None:
        if self.is_over:
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

    def count_decision(self, decision: ApprovalDecision, via: str) -> DecisionReceipt:
        if decision.decision_id:
            self.seen_decision_ids.add(decision.decision_id)
        record = ApprovalRecord(
            stage=decision.stage,
            approver=decision.approver,
            roles=decision.roles,
            approve=decision.approve,
            comment=decision.comment,
            at=workflow.now(),
            via=via,
            # An update is vouched for under its update id; a signal under its decision id,
            # which is then spent (seen_decision_ids), so a copied signal counts nowhere.
            verified=self.vouched_for(decision, workflow.current_update_info().id if via == "update" else decision.decision_id),
        )
        self.state.approvals.append(record)
        if not record.verified:
            message = f"{decision.stage}: decision from {decision.approver} has no valid assertion from the Stanch API; recorded, not counted"
            self.note("approval", message, decision.approver)
            return DecisionReceipt(accepted=False, message=message)
        self.acknowledge_by_acting(decision.approver, f"{'approved' if decision.approve else 'rejected'} {decision.stage}")
        pending = self.state.pending_approval
        if pending and decision.approve and pending.stage == decision.stage:
            pending.approvers.append(decision.approver)
        verb = "approved" if decision.approve else "rejected"
        self.note("approval", f"{decision.stage} {verb} by {decision.approver} ({', '.join(decision.roles)})", decision.approver)
        still = approvals.missing(pending, self.state.approvals) if pending and decision.approve else "nothing"
        return DecisionReceipt(message=f"{decision.stage} {verb} by {decision.approver}; still needed: {still}")

    def refresh_pending_approval(self) -> None:
        """A severity change while a step waits applies the new policy's approval rule."""
        pending = self.state.pending_approval
        if pending is None:
            return
        gate = self.policy.gate(pending.stage)
        if gate.mode == "approve" and gate.approve:
            pending.count, pending.roles, pending.required_roles = gate.approve.count, gate.approve.roles, gate.approve.required_roles
            pending.severity = self.state.severity
            self.note("approval", f"{pending.stage} now needs {approvals.missing(pending, self.state.approvals)}")

    def regrade_wanted(self) -> bool:
        return self.regrade_requested or len(self.state.signals) > self.signals_graded

    def merge_repro(self, cases: list[ReproCase]) -> None:
        known = {case.prompt for case in self.state.repro}
        for case in cases:
            if case.prompt not in known:
                self.state.repro.append(case.model_copy(update={"output": None}))  # outputs may hold the leaked secret
                known.add(case.prompt)
            else:
                existing = next(c for c in self.state.repro if c.prompt == case.prompt)
                existing.detectors = sorted(set(existing.detectors) | set(case.detectors))

    def close_reason_for_false_positive(self) -> str:
        if self.triage_decision:
            return f"not confirmed by {self.triage_decision.by}: {self.triage_decision.reason}"
        return "; ".join(f.detail for f in self.findings) or "checks did not reproduce the harm"
