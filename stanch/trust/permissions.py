"""Who may take which decision: an allow-list per decision, by role.

A role on no list — an IdP group such as `employee`, an auditor, a viewer — only reads.
Approving or rejecting a gated stage also needs one of the roles that stage's runbook gate
names, and four eyes; the workflow checks both, this list only keeps strangers out.
"""

from __future__ import annotations

from collections.abc import Iterable

from stanch.runbooks.schema import Runbook

# The people an incident pages and escalates to: they run the response (and, when no verified
# fix lets restore run on its own, approve it).
RESPONDER_ROLES = ("oncall", "safety", "incident-commander")
RESPONDERS = frozenset(RESPONDER_ROLES)

# decision (the workflow's update name) -> the roles that may take it, beside the approvers.
MAY_DECIDE: dict[str, frozenset[str]] = {
    "acknowledge": RESPONDERS,
    "triage": RESPONDERS,
    "set_severity": RESPONDERS,  # lowering it further needs safety or incident-commander (the workflow)
    "decide": RESPONDERS,  # retry, skip or abort a failed step
    "resolve": RESPONDERS,
    "correct_answer": RESPONDERS,  # the answer a repro case should get, which a fine-tune trains on
    "record_report_filed": frozenset({"safety", "incident-commander"}),  # the regulatory duty is theirs
}
# Decisions every approver a runbook names may take too, on the incidents they approve for.
APPROVER_DECISIONS = frozenset({"approve", "reject", "acknowledge", "add_note"})


def approver_roles(runbooks: Iterable[Runbook]) -> frozenset[str]:
    """Every role a runbook's gates name as an approver (a privacy officer, an ML engineer)."""
    roles: set[str] = set()
    for runbook in runbooks:
        for policy in runbook.policy.values():
            for gate in policy.stages.values():
                if gate.approve:
                    roles.update(gate.approve.roles)
    return frozenset(roles)


def allowed_roles(decision: str, approvers: frozenset[str]) -> frozenset[str]:
    allowed = MAY_DECIDE.get(decision, frozenset())
    if decision in APPROVER_DECISIONS:
        allowed = allowed | RESPONDERS | approvers
    return allowed


def refusal(decision: str, user: str, roles: Iterable[str], approvers: frozenset[str]) -> str | None:
    """Why `user` may not take `decision`, or None when one of their roles allows it."""
    allowed = allowed_roles(decision, approvers)
    if set(roles) & allowed:
        return None
    held = ", ".join(sorted(roles)) or "no role"
    return f"{user} holds {held}; {decision.replace('_', ' ')} needs one of the roles {', '.join(sorted(allowed))}"
