"""What monitoring and responders send to an incident, and what they read from it: the
signal, update and query handlers Temporal sees on `IncidentWorkflow`, declared here so the
workflow's own module reads as the lifecycle. Each handler only hands over to the rules:
`monitoring.py` for alerts, `handlers.py` for responders, `attention.py` for the small query.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.attention import attention_of
from workflows.handlers import ResponderHandlers
from workflows.monitoring import Monitoring
from workflows.record import Record

with workflow.unsafe.imports_passed_through():
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
    from stanch.models.incident import Attention, IncidentState
    from stanch.models.signals import Signal


class IncidentMessages:
    """The handlers of `IncidentWorkflow` (its only base): the workflow sets these three parts."""

    record: Record
    monitoring: Monitoring
    responders: ResponderHandlers

    @workflow.signal
    def add_signal(self, signal: Signal) -> None:
        self.monitoring.add_signal(signal)

    @workflow.signal
    async def approve_signal(self, decision: ApprovalDecision) -> None:
        await self.responders.approve_signal(decision)

    @workflow.update
    def acknowledge(self, ack: Acknowledgement) -> DecisionReceipt:
        return self.responders.acknowledge(ack)

    @acknowledge.validator
    def check_acknowledge(self, ack: Acknowledgement) -> None:
        self.responders.check_acknowledge(ack)

    @workflow.update
    def approve(self, decision: ApprovalDecision) -> DecisionReceipt:
        return self.responders.approve(decision, approve=True)

    @approve.validator
    def check_approve(self, decision: ApprovalDecision) -> None:
        self.responders.check_approve(decision, approve=True)

    @workflow.update
    def reject(self, decision: ApprovalDecision) -> DecisionReceipt:
        return self.responders.approve(decision, approve=False)

    @reject.validator
    def check_reject(self, decision: ApprovalDecision) -> None:
        self.responders.check_approve(decision, approve=False)

    @workflow.update
    def set_severity(self, change: SeverityChange) -> DecisionReceipt:
        return self.responders.set_severity(change)

    @set_severity.validator
    def check_severity(self, change: SeverityChange) -> None:
        self.responders.check_severity(change)

    @workflow.update
    def triage(self, decision: TriageDecision) -> DecisionReceipt:
        return self.responders.triage(decision)

    @triage.validator
    def check_triage(self, decision: TriageDecision) -> None:
        self.responders.check_triage(decision)

    @workflow.update
    def decide(self, decision: FailureDecision) -> DecisionReceipt:
        return self.responders.decide(decision)

    @decide.validator
    def check_decide(self, decision: FailureDecision) -> None:
        self.responders.check_decide(decision)

    @workflow.update
    def resolve(self, request: ResolveRequest) -> DecisionReceipt:
        return self.responders.resolve(request)

    @resolve.validator
    def check_resolve(self, request: ResolveRequest) -> None:
        self.responders.check_resolve(request)

    @workflow.update
    def record_report_filed(self, report: ReportFiled) -> DecisionReceipt:
        return self.responders.record_report_filed(report)

    @record_report_filed.validator
    def check_report(self, report: ReportFiled) -> None:
        self.responders.check_report(report)

    @workflow.update
    def add_note(self, note: Note) -> DecisionReceipt:
        return self.responders.add_note(note)

    @add_note.validator
    def check_note(self, note: Note) -> None:
        self.responders.check_note(note)

    @workflow.update
    def correct_answer(self, correction: AnswerCorrection) -> DecisionReceipt:
        return self.responders.correct_answer(correction)

    @correct_answer.validator
    def check_correction(self, correction: AnswerCorrection) -> None:
        self.responders.check_correction(correction)

    @workflow.query(name="state")
    def current_state(self) -> IncidentState:
        return self.record.state

    @workflow.query(name="attention")
    def attention(self) -> Attention:
        return attention_of(self.record)
