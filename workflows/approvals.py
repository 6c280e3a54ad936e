"""The rules of a gated step: who may approve, and when enough people have.

Pure functions over the incident's records so validators, the signal variant and the gate
all apply exactly the same rules.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from stanch.models.decisions import ApprovalDecision
    from stanch.models.incident import ApprovalRecord, PendingApproval


def same_person(a: str, b: str) -> bool:
    """ "Sam " and "sam" are one person: four eyes must not be fooled by spelling."""
    return a.strip().casefold() == b.strip().casefold()


def refusal(pending: PendingApproval | None, decision: ApprovalDecision, records: list[ApprovalRecord]) -> str | None:
    """Why this decision cannot count, or None when it may."""
    if pending is None:
        return f"no step is waiting for approval, so {decision.stage!r} cannot be decided now"
    if decision.stage != pending.stage:
        return f"stage {decision.stage!r} is not waiting for approval; {pending.stage!r} is"
    if not decision.approver.strip():
        return "an approval must name the approver"
    if same_person(decision.approver, pending.requested_by):
        return f"{decision.approver} requested this step and cannot approve it (four eyes)"
    if any(same_person(decision.approver, who) for who in pending.lowered_by):
        return f"{decision.approver} lowered severity while {pending.stage!r} waited and cannot approve it (four eyes)"
    already = [r for r in current_votes(pending, records) if same_person(r.approver, decision.approver)]
    if already:
        return f"{decision.approver} has already decided on {pending.stage!r}; four eyes needs a different person"
    if not set(decision.roles) & set(pending.roles):
        return f"deciding on {pending.stage!r} needs one of the roles {pending.roles}; {decision.approver} holds {decision.roles or 'none'}"
    return None


def current_votes(pending: PendingApproval, records: list[ApprovalRecord]) -> list[ApprovalRecord]:
    """The verified decisions on this request; an unverified one is on record but never counts."""
    return [r for r in records if r.stage == pending.stage and r.at >= pending.requested_at and r.verified]


def is_rejected(pending: PendingApproval, records: list[ApprovalRecord]) -> bool:
    return any(not r.approve for r in current_votes(pending, records))


def is_satisfied(pending: PendingApproval, records: list[ApprovalRecord]) -> bool:
    approvals = [r for r in current_votes(pending, records) if r.approve]
    if len({r.approver.strip().casefold() for r in approvals}) < pending.count:
        return False
    held = {role for r in approvals for role in r.roles}
    return all(role in held for role in pending.required_roles)


def missing(pending: PendingApproval, records: list[ApprovalRecord]) -> str:
    """What is still needed, in words, for the board and the timeline."""
    approvals = [r for r in current_votes(pending, records) if r.approve]
    held = {role for r in approvals for role in r.roles}
    needs = []
    remaining = pending.count - len({r.approver.strip().casefold() for r in approvals})
    if remaining > 0:
        needs.append(f"{remaining} more approval(s) from {pending.roles}")
    lacking = [role for role in pending.required_roles if role not in held]
    if lacking:
        needs.append(f"an approver with role {lacking}")
    return "; ".join(needs) or "nothing"
