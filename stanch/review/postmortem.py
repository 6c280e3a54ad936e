"""The postmortem draft and the review tasks a runbook opens: what happened, what was done, what
each framework requirement shows, and what is left to do.
"""

from __future__ import annotations

from stanch.models.activity_io import ComplianceItem, ReviewInput
from stanch.models.incident import StageState
from stanch.review.cause import cause_lines
from stanch.review.compliance import compliance_mapping, is_drill, status_text
from stanch.review.exposure import blast_radius_lines
from stanch.review.facts import deadline_of, duration, signals_summary, stage_of, when

TASK_TITLES = {
    "root_cause": "Find the root cause: why did the update behave this way, and why did testing miss it?",
    "risk_assessment": "Update the risk assessment (NIST AI RMF MANAGE, ISO/IEC 42001 clause 10.2) with this failure mode",
    "testing_protocol": "Update the testing protocol: the repro cases now run in the regression suite",
    "monitoring": "Improve monitoring so this harm is detected sooner",
    "guardrails": "Improve guardrails so this harm is blocked before users see it",
}
EVIDENCE_SHOWN = 12  # per requirement in the postmortem; compliance.json keeps every item


def review_tasks(input: ReviewInput) -> list[dict]:
    """The runbook's review tasks for this incident, open."""
    name_of = input.occurrence or input.incident_id
    return [
        {"id": f"{name_of}/{name}", "kind": name, "title": TASK_TITLES.get(name, name.replace("_", " ")), "status": "open"}
        for name in input.runbook.review.tasks
    ]


def postmortem(input: ReviewInput, tasks: list[dict], added: int, mapping: list[ComplianceItem] | None = None) -> str:
    mapping = mapping if mapping is not None else compliance_mapping(input, tasks, added)
    lines = [
        f"# Postmortem draft: {input.occurrence or input.incident_id}",
        "",
        *(["_A dry run: every action below was only recorded, nothing was changed._", ""] if input.dry_run else []),
        *(
            ["_A DRILL: a rehearsal on a drill route (a copy of the model no user is served); not an incident._", ""]
            if is_drill(input)
            else []
        ),
        f"- Runbook: {input.runbook.name} — {input.runbook.description}",
        f"- Target: {input.target}",
        f"- Severity: {input.severity}" + (f" ({'; '.join(input.severity_reasons)})" if input.severity_reasons else ""),
        f"- Outcome: {input.status}",
        f"- Signals: {signals_summary(input)}",
        f"- Evidence snapshot sha256: {input.evidence_sha256 or 'none'}",
        f"- Repro cases added to the regression suite: {added}",
    ]
    if input.serious:
        lines.append(f"- Serious incident (EU AI Act Art. 3(49)): report due {when(deadline_of(input))}; see art73-report-draft.md")
    lines += ["", *time_to_contain(input)]
    lines += blast_radius_lines(input.exposure)
    lines += ["## Cause: the bad change", "", *cause_lines(input.cause), ""]
    lines += ["## Actions", ""]
    for action in input.actions:
        undone = f", undone {when(action.undone_at)}" if action.undone_at else ", still in place"
        lines.append(f"- {action.stage}: {action.kind} `{action.idempotency_key}` applied {when(action.applied_at)}{undone}")
    if not input.actions:
        lines.append("- none applied")
    lines += ["", "## Timeline", ""]
    lines += [f"- {entry['at']} [{entry['kind']}] {entry['actor']}: {entry['message']}" for entry in input.timeline]
    if input.timeline_omitted:
        lines.append(f"- … and {input.timeline_omitted} entries between, left out here: `stanch audit timeline` reads them from history")
    lines += ["", "## Compliance mapping", "", "What this incident's steps show for each requirement (all of it in compliance.json).", ""]
    for item in mapping:
        lines.append(f"### {item.framework} {item.reference}: {status_text(input, item)}")
        lines += ["", f"_{item.requirement}_", ""]
        lines += [f"- {line}" for line in item.evidence[:EVIDENCE_SHOWN]]
        if len(item.evidence) > EVIDENCE_SHOWN:
            lines.append(f"- … and {len(item.evidence) - EVIDENCE_SHOWN} more in compliance.json")
        lines += [f"- **gap:** {gap}" for gap in item.gaps]
        lines.append("")
    lines += ["## Follow-up tasks", ""]
    lines += [f"- [ ] {task['title']}" for task in tasks]
    return "\n".join(lines) + "\n"


def time_to_contain(input: ReviewInput) -> list[str]:
    """The containment objective, met or missed, and which wait took the time (machine or
    human), from what the incident recorded; then the other milestones it reached."""
    lines = ["## Time to contain", ""]
    contained = next((outcome for outcome in input.objectives if outcome.milestone == "contain"), None)
    stage = stage_of(input, "contain")
    if contained is None and stage is not None and stage.status == "done":
        lines.append(contained_before_objectives(input, stage))
    elif contained is None:
        lines.append(f"- Not contained: {stage.status}{' — ' + stage.detail if stage.detail else ''}" if stage else "- Not contained")
    else:
        if contained.objective_seconds is None:
            where = f"policy.{contained.severity}.objectives.contain"
            unset = f"no objective set at {contained.severity} ({where} in {input.runbook.name})"
            lines.append(f"- Contained in {duration(contained.elapsed_seconds)}; {unset}")
        else:
            verdict = "met" if contained.met else "MISSED"
            lines.append(
                f"- Objective at {contained.severity}: contain within {duration(contained.objective_seconds)} — {verdict}: "
                f"contained in {duration(contained.elapsed_seconds)}"
            )
        lines.append(
            f"- Machine time {duration(contained.machine_seconds)} (checks, evidence, grading, applying actions); "
            f"people {duration(contained.human_seconds)} (triage, approvals, decisions)"
        )
        if contained.took_longest:
            lines.append(f"- The gate that took the time ({contained.took_longest_by}): {contained.took_longest}")
    for wait in input.gate_waits:
        waited = f" for {wait.waited_for}" if wait.waited_for else ""
        lines.append(f"- Waited for people: {wait.gate} {when(wait.began_at)} → {when(wait.ended_at)} ({duration(wait.seconds)}){waited}")
    lines += [f"- {outcome.summary}" for outcome in input.objectives if outcome.milestone != "contain"]
    return [*lines, ""]


def contained_before_objectives(input: ReviewInput, stage: StageState) -> str:
    """Contained, with no outcome recorded: the incident contained before Stanch recorded
    objectives (and then ran on). The stage's own times say when; no breakdown is known."""
    if stage.finished_at is None:
        return f"- Contained ({stage.detail or 'done'}); when is not recorded"
    elapsed = duration(max((stage.finished_at - input.opened_at).total_seconds(), 0.0)) if input.opened_at else None
    took = f" in {elapsed}" if elapsed else ""
    return (
        f"- Contained{took} ({when(stage.finished_at)}: {stage.detail or 'done'}); recorded before Stanch kept objectives, "
        "so no objective or machine/people breakdown is known"
    )
