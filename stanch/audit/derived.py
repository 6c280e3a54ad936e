"""What a timeline concludes from its events: decisions and steps in words, what became of
approval signals, warnings about keys, and how long the response took to reach each milestone.
"""

from __future__ import annotations

from typing import Any

from stanch.audit.models import Milestone, MilestoneName, Timeline

# A responder who decides any of these is on the incident: escalation stops (handlers.acknowledge_by_acting).
ACKNOWLEDGING = {"acknowledge", "approve", "reject", "triage", "decide", "resolve", "approve_signal"}
# Updates that return a receipt saying whether the workflow acted; it acts only on vouched ones.
VOUCHED_UPDATES = {
    "acknowledge",
    "approve",
    "reject",
    "set_severity",
    "triage",
    "decide",
    "resolve",
    "record_report_filed",
    "add_note",
    "correct_answer",
}


def settle_signal_decisions(t: Timeline, state: dict[str, Any]) -> None:
    """An approval signal leaves no receipt in history; the final state says what became of it:
    counted ones are in its approvals (via signal), refused ones in its timeline."""
    records = [r for r in state.get("approvals", []) if r.get("via") == "signal"]
    refusals = [
        e.get("message", "")
        for e in state.get("timeline", [])
        if e.get("kind") == "approval" and e.get("message", "").startswith("refused signal from ")
    ]
    spent: set[str] = set()
    for d in (d for d in t.decisions if d.name == "approve_signal"):
        decision_id = d.fields.get("decision_id") or ""
        if decision_id and decision_id in spent:
            d.outcome, d.message = "not acted on", f"a repeat of decision id {decision_id}: ignored"
            continue
        match = next(
            (r for r in records if (r.get("stage"), r.get("approver"), r.get("approve")) == (d.stage, d.who, d.fields.get("approve"))), None
        )
        refusal = next((m for m in refusals if m.startswith(f"refused signal from {d.who or 'unknown'}: ")), None)
        if match is not None:
            records.remove(match)
            spent.add(decision_id)
            if not d.checked_here:  # the key is not configured here: the workflow's verdict stands
                d.verified = bool(match.get("verified"))
                d.verification = f"the workflow's verdict, recorded in its state: {'counted' if d.verified else 'not counted'}"
            d.outcome = "accepted" if match.get("verified") else "not acted on"
            d.message = (
                "counted toward the gate" if match.get("verified") else "recorded, not counted: no valid assertion from the Stanch API"
            )
        elif refusal is not None:
            refusals.remove(refusal)
            d.outcome, d.message = "refused", refusal.partition(": ")[2]


def key_warnings(t: Timeline) -> list[str]:
    if not t.decisions:
        return []
    notes = []
    if not t.trusted_keys:
        notes.append(
            "no decision public keys configured here (STANCH_DECISION_PUBLIC_KEYS, or STANCH_HOME/decision-public-keys): each "
            "decision's verdict is the one the workflow recorded; configure them to check the signatures again"
        )
    # The workflow acts only on vouched decisions, so an accepted one whose signature does not
    # verify with the key it names, configured here, had its fields changed after the fact.
    odd = [d for d in t.decisions if d.outcome == "accepted" and d.name in VOUCHED_UPDATES and d.checked_here and not d.verified]
    return notes + [
        f"event {d.event_id}: the workflow acted on {d.name} by {d.who or 'unknown'}, but its assertion does not verify "
        f"with keys {t.trusted_keys}: altered after it was recorded"
        for d in odd
    ]


def step_summary(kind: str, r: dict[str, Any]) -> str:
    if kind == "confirm_incident":
        fired = ", ".join(r.get("detectors_fired", [])) or "none"
        return f"{r.get('outcome', '?')}; detectors fired: {fired}"
    if kind == "snapshot_evidence":
        return f"sha256 {r.get('sha256', '?')} at {r.get('location', '?')}"
    if kind == "grade_severity":
        text = f"{r.get('severity', '?')}: {'; '.join(r.get('reasons', []))}"
        return text + (f"; serious ({r.get('serious_reason')}), report within {r.get('report_days')} days" if r.get("serious") else "")
    if kind == "verify_fix":
        cases = r.get("cases", [])
        passed = sum(1 for case in cases if case.get("passed"))
        return f"{'passed' if r.get('passed') else 'FAILED'}: {passed}/{len(cases)} cases on version {r.get('version')}"
    if kind == "open_review":
        return f"{len(r.get('tasks', []))} review tasks, {r.get('regression_cases_added', 0)} regression cases added"
    return ""


def describe(name: str, f: dict[str, Any]) -> str:
    """A decision in words, as a responder would say it."""

    def why(key: str) -> str:
        return f": {f[key]}" if f.get(key) else ""

    if name in ("approve", "reject", "approve_signal"):
        verb = name if name != "approve_signal" else ("approve" if f.get("approve", True) else "reject")
        return f"{verb} {f.get('stage', '?')}" + why("comment")
    texts = {
        "acknowledge": lambda: "acknowledge" + why("note"),
        "set_severity": lambda: f"severity → {f.get('severity')}" + why("reason"),
        "triage": lambda: f"triage as {f.get('outcome')}" + why("reason"),
        "decide": lambda: f"{f.get('choice')} after failure in {f.get('stage')}" + why("reason"),
        "resolve": lambda: "resolve" + why("reason"),
        "record_report_filed": lambda: "report filed" + why("reference"),
        "add_note": lambda: "note" + why("text"),
        "correct_answer": lambda: f"correct the answer for repro case {f.get('case') or f.get('prompt')}" + why("reason"),
    }
    return texts[name]() if name in texts else name


MILESTONES: list[MilestoneName] = ["acknowledged", "contained", "rolled back", "fix verified", "restored", "closed"]


def milestones(t: Timeline) -> list[Milestone]:
    """Time to acknowledge, contain, roll back, verify the fix, restore and close — every one of
    them, in that order: those reached with when and how, the rest marked not reached (yet, while
    the run is running), so a running or failed run shows how far it got."""
    start = t.first_signal_at or t.started_at

    def reached(name: str, at, event_id: int | None, how: str) -> Milestone:
        return Milestone(name=name, at=at, event_id=event_id, seconds=(at - start).total_seconds(), how=how)

    found: list[Milestone] = []
    vouched = [d for d in t.decisions if d.name in ACKNOWLEDGING and (d.outcome == "accepted" or (d.outcome == "delivered" and d.verified))]
    if vouched:
        d = vouched[0]
        found.append(
            reached("acknowledged", d.completed_at or d.at, d.completed_event_id or d.event_id, f"{d.what} by {d.who} (event {d.event_id})")
        )
    for name, activity in (("contained", "apply_containment"), ("rolled back", "apply_rollback")):
        done = [a for a in t.actions if a.activity == activity and a.outcome == "completed" and a.finished_at is not None]
        if done:
            last = done[-1]
            found.append(
                reached(
                    name,
                    last.finished_at,
                    last.finished_event_id,
                    f"last {last.stage} action applied: {last.kind} (event {last.finished_event_id})",
                )
            )
    verified = [
        s
        for s in t.steps
        if s.activity == "verify_fix" and s.outcome == "completed" and s.result.get("passed") and s.finished_at is not None
    ]
    if verified:
        s = verified[0]
        found.append(reached("fix verified", s.finished_at, s.finished_event_id, f"{s.summary} (event {s.finished_event_id})"))
    undone = [a for a in t.actions if a.activity == "lift_action" and a.outcome == "completed" and a.finished_at is not None]
    if undone:
        last = undone[-1]
        found.append(
            reached(
                "restored",
                last.finished_at,
                last.finished_event_id,
                f"last protection undone: {last.kind} (event {last.finished_event_id})",
            )
        )
    if t.ended_at is not None:
        found.append(
            reached("closed", t.ended_at, t.ended_event_id, f"workflow {t.execution}" + (f": {t.final_status}" if t.final_status else ""))
        )
    by_name = {m.name: m for m in found}
    if t.ended_at is None:
        missing = f"not reached yet: the run is still running (history read at event {t.events})"
    else:
        missing = f"not reached: the run {t.execution} at event {t.ended_event_id}"
    return [by_name.get(name) or Milestone(name=name, how=missing) for name in MILESTONES]
