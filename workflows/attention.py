"""What needs someone now, read by the `attention` query: the few fields the API's metrics need
for every open incident (waiting approvals, the ack clock), without the whole state.

A query reads; it records nothing and adds no command.
"""

from __future__ import annotations

from temporalio import workflow

from workflows.record import Record

with workflow.unsafe.imports_passed_through():
    from stanch.models.incident import Attention


def attention_of(record: Record) -> Attention:
    state = record.state
    acknowledged = state.acknowledged_at is not None
    return Attention(
        status=state.status,
        severity=state.severity,
        runbook=state.runbook,
        dry_run=record.input.dry_run,
        pending_approval=state.pending_approval,
        acknowledged=acknowledged,
        # The severity now sets the SLA: a re-grade moves the deadline, as it moves escalation.
        ack_due_at=None if acknowledged else state.opened_at + record.policy.ack_sla,
        escalation_tier=state.escalation_tier,
    )
