"""The EU AI Act Art. 73 serious-incident report draft: what the provider tells the market
surveillance authority, prepared from the incident's record for the provider to complete and file.
"""

from __future__ import annotations

from stanch.models.activity_io import ReviewInput
from stanch.models.incident import RegulatoryClock, is_drill_route
from stanch.review.cause import cause_lines
from stanch.review.exposure import blast_radius_lines
from stanch.review.facts import FILL_IN, deadline_of, evidence_line, key_dates, signals_summary, version_lines, when

DRILL_NOTICE = (
    "This is a drill (`stanch drill`): a rehearsal on a drill route, a copy of the model that no user is served. "
    "No one was harmed and nothing is to be reported to any authority; the draft below shows what a real report would hold."
)


def report_draft(input: ReviewInput) -> str:
    """EU AI Act Art. 73 report draft: what the provider tells the market surveillance authority."""
    regulatory = input.runbook.regulatory
    clock = input.regulatory
    first = input.first_signal
    deadline = deadline_of(input)
    days = (clock.deadline - clock.aware_at).days if clock and clock.deadline and clock.aware_at else None
    versions = version_lines(input)
    if is_drill_route(input.target.model):
        head = [
            f"# DRILL — not a serious incident, NOT TO FILE (EU AI Act Art. 73 draft rehearsed): {input.occurrence or input.incident_id}",
            "",
            DRILL_NOTICE,
            "",
        ]
    else:
        head = [
            f"# Serious incident report — DRAFT (EU AI Act Art. 73): {input.occurrence or input.incident_id}",
            "",
            "Prepared by Stanch from the incident's record. The provider completes, checks and files it;",
            f"record the filing on the incident (`stanch report-filed {input.incident_id} --reference …`, or `POST "
            f"/v1/incidents/{input.incident_id}/report`) to stop the reminders.",
            "",
            f"**Report due: {when(deadline)}**"
            + (f" — {days}-day clock" if days is not None else "")
            + (f" ({clock.reason})" if clock and clock.reason else ""),
            "",
        ]
    lines = [
        *head,
        "## 1. Provider",
        "",
        f"- {regulatory.provider or 'the provider named in the runbook ' + FILL_IN + ': name, address, contact point for this report'}",
        "",
        "## 2. AI system and version",
        "",
        f"- System: {regulatory.system or input.target.model + ' ' + FILL_IN + ': registered name, intended purpose, EU database id'}",
        f"- Model: `{input.target.model}` through the `{input.target.adapter}` control plane",
        *[f"- {line}" for line in versions],
        "",
        "## 3. What happened",
        "",
    ]
    if first:
        lines.append(
            f"- First signal: {first.title or first.signal_id} ({first.source.value} from {first.sender}"
            + (f", category {first.category}" if first.category else "")
            + ")"
        )
        if first.description:
            lines.append(f"- Description: {first.description}")
        harm = {k: v for k, v in first.labels.items() if k in ("harm", "sector", "scope")}
        if harm:
            lines.append("- Reported harm: " + ", ".join(f"{k}={v}" for k, v in sorted(harm.items())))
    else:
        lines.append(f"- First signal: not recorded {FILL_IN}")
    lines += [
        f"- Signals: {signals_summary(input)}",
        f"- Severity: {input.severity}" + (f" — {'; '.join(input.severity_reasons)}" if input.severity_reasons else ""),
        f"- Why serious (Art. 3(49)): {clock.reason if clock and clock.reason else 'marked serious by the runbook rules'}",
        f"- Detectors that fired on replay: {', '.join(input.detectors_fired) or 'none'}; repro cases: {len(input.repro)}",
        f"- Outcome so far: {input.status}",
        "",
        *blast_radius_lines(input.exposure),
        "## 4. When the provider became aware",
        "",
        f"- Incident opened: {when(input.opened_at)}",
        f"- Aware that it is serious (the report clock started): {when(clock.aware_at if clock else None)}",
        f"- Report deadline: {when(deadline)}" + (f" ({days} days from awareness)" if days is not None else ""),
        f"- Report filed: {filed_line(clock)}",
        "",
        "## 5. Causal link between the AI system and the harm",
        "",
    ]
    confirmed = [f for f in input.findings if f.outcome == "confirmed"]
    if confirmed:
        lines += [f"- {f.check}: {f.detail}" + (f" (detectors: {', '.join(f.detectors)})" if f.detectors else "") for f in confirmed]
        lines.append(
            "- Established so far by replaying the reported prompts / re-querying the metric; the root cause is to be established by the "
            "root-cause task."
        )
    else:
        lines.append(
            "- To be established: the confirm checks did not reproduce the harm"
            + (f" ({'; '.join(f.detail for f in input.findings)})" if input.findings else "")
            + "; see the root-cause task."
        )
    if input.cause is not None and input.cause.ran:  # which change of the system brought the harm
        lines += cause_lines(input.cause)
    lines += ["", "## 6. Evidence kept (Art. 73(6))", "", f"- {evidence_line(input)}", "", "## 7. Corrective actions", ""]
    for action in input.actions:
        what = f"{action.stage}: {action.kind}" + (f" ({action.result['version']})" if "version" in action.result else "")
        undone = f"; undone {when(action.undone_at)}" if action.undone_at else "; still in place"
        lines.append(f"- {what} — applied {when(action.applied_at)}{undone} (key `{action.idempotency_key}`)")
    if not input.actions:
        lines.append("- none applied by Stanch " + FILL_IN + " any taken outside it")
    lines += ["", "## 8. Key dates", ""]
    lines += [f"- {label}: {when(at)}" for label, at in key_dates(input)]
    lines += [
        "",
        "## 9. To complete before filing",
        "",
        "- Persons or groups affected, and the Member States where the incident occurred",
        "- Whether the deployer was informed, and its contact",
        "- The risk assessment of the incident and the follow-up investigation plan (Art. 73(6))",
        "",
    ]
    return "\n".join(lines)


def filed_line(clock: RegulatoryClock | None) -> str:
    if clock is None or clock.filed is None:
        return "not yet"
    return f"{when(clock.filed.filed_at)} by {clock.filed.by}, reference {clock.filed.reference}"
