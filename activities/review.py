"""Review: the post-incident tasks, a postmortem draft with the timeline, the repro cases into
the regression suite, the compliance mapping (NIST AI RMF MANAGE 2.3/2.4/4.1/4.3, ISO/IEC
42001 clause 10.2) and, for a serious incident, the EU AI Act Art. 73 report draft.

Everything here reads the `ReviewInput` the workflow sends; what the incident did not record is
said to be unknown or not performed, never made up.
"""

from __future__ import annotations

import json
from datetime import datetime

from temporalio import activity

from activities.deps import ActivityDeps
from activities.models import ComplianceItem, ReviewInput, ReviewResult
from activities.regression import add_cases

TASK_TITLES = {
    "root_cause": "Find the root cause: why did the update behave this way, and why did testing miss it?",
    "risk_assessment": "Update the risk assessment (NIST AI RMF MANAGE, ISO/IEC 42001 clause 10.2) with this failure mode",
    "testing_protocol": "Update the testing protocol: the repro cases now run in the regression suite",
    "monitoring": "Improve monitoring so this harm is detected sooner",
    "guardrails": "Improve guardrails so this harm is blocked before users see it",
}
NIST = "NIST AI RMF 1.0"
ISO = "ISO/IEC 42001:2023"
FILL_IN = "— fill in"
EVIDENCE_SHOWN = 12  # per requirement in the postmortem; compliance.json keeps every item


class ReviewActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="open_review")
    async def open_review(self, input: ReviewInput) -> ReviewResult:
        folder = self.deps.settings.reviews_dir / (input.occurrence or input.incident_id)
        folder.mkdir(parents=True, exist_ok=True)
        added = 0
        # A rehearsal's repro cases were never confirmed against a change: they stay out of the suite.
        if input.runbook.review.add_repro_to_regression_suite and input.repro and not input.dry_run:
            added = add_cases(self.deps.settings.regression_dir, input.target.model, input.repro, input.incident_id)
        tasks = [
            {"id": f"{input.occurrence or input.incident_id}/{name}", "kind": name, "title": TASK_TITLES.get(name, name.replace("_", " ")), "status": "open"}
            for name in input.runbook.review.tasks
        ]
        (folder / "tasks.json").write_text(json.dumps(tasks, indent=2))
        mapping = compliance_mapping(input, tasks, added)
        compliance = folder / "compliance.json"
        compliance.write_text(json.dumps([item.model_dump() for item in mapping], indent=2))
        postmortem = folder / "postmortem.md"
        postmortem.write_text(self.postmortem(input, tasks, added, mapping))
        report = None
        if input.serious:
            report = folder / "art73-report-draft.md"
            report.write_text(self.report_draft(input))
        return ReviewResult(
            tasks=tasks,
            postmortem=str(postmortem),
            report_draft=str(report) if report else None,
            regression_cases_added=added,
            compliance_file=str(compliance),
            compliance={f"{item.framework} {item.reference}": status_text(input, item) for item in mapping},
        )

    def postmortem(self, input: ReviewInput, tasks: list[dict], added: int, mapping: list[ComplianceItem] | None = None) -> str:
        mapping = mapping if mapping is not None else compliance_mapping(input, tasks, added)
        lines = [
            f"# Postmortem draft: {input.occurrence or input.incident_id}",
            "",
            *(["_A dry run: every action below was only recorded, nothing was changed._", ""] if input.dry_run else []),
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
        lines += ["", "## Actions", ""]
        for action in input.actions:
            undone = f", undone {when(action.undone_at)}" if action.undone_at else ", still in place"
            lines.append(f"- {action.stage}: {action.kind} `{action.idempotency_key}` applied {when(action.applied_at)}{undone}")
        if not input.actions:
            lines.append("- none applied")
        lines += ["", "## Timeline", ""]
        lines += [f"- {entry['at']} [{entry['kind']}] {entry['actor']}: {entry['message']}" for entry in input.timeline]
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

    def report_draft(self, input: ReviewInput) -> str:
        """EU AI Act Art. 73 report draft: what the provider tells the market surveillance authority."""
        regulatory = input.runbook.regulatory
        clock = input.regulatory
        first = input.first_signal
        deadline = deadline_of(input)
        days = (clock.deadline - clock.aware_at).days if clock and clock.deadline and clock.aware_at else None
        versions = version_lines(input)
        lines = [
            f"# Serious incident report — DRAFT (EU AI Act Art. 73): {input.occurrence or input.incident_id}",
            "",
            "Prepared by Stanch from the incident's record. The provider completes, checks and files it;",
            f"record the filing on the incident (`stanch report-filed {input.incident_id} --reference …`, or `POST /v1/incidents/{input.incident_id}/report`) to stop the reminders.",
            "",
            f"**Report due: {when(deadline)}**" + (f" — {days}-day clock" if days is not None else "") + (f" ({clock.reason})" if clock and clock.reason else ""),
            "",
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
            lines.append(f"- First signal: {first.title or first.signal_id} ({first.source.value} from {first.sender}" + (f", category {first.category}" if first.category else "") + ")")
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
            "## 4. When the provider became aware",
            "",
            f"- Incident opened: {when(input.opened_at)}",
            f"- Aware that it is serious (the report clock started): {when(clock.aware_at if clock else None)}",
            f"- Report deadline: {when(deadline)}" + (f" ({days} days from awareness)" if days is not None else ""),
            f"- Report filed: {when(clock.filed.filed_at) + ' by ' + clock.filed.by + ', reference ' + clock.filed.reference if clock and clock.filed else 'not yet'}",
            "",
            "## 5. Causal link between the AI system and the harm",
            "",
        ]
        confirmed = [f for f in input.findings if f.outcome == "confirmed"]
        if confirmed:
            lines += [f"- {f.check}: {f.detail}" + (f" (detectors: {', '.join(f.detectors)})" if f.detectors else "") for f in confirmed]
            lines.append("- Established so far by replaying the reported prompts / re-querying the metric; the root cause is to be established by the root-cause task.")
        else:
            lines.append("- To be established: the confirm checks did not reproduce the harm" + (f" ({'; '.join(f.detail for f in input.findings)})" if input.findings else "") + "; see the root-cause task.")
        lines += ["", "## 6. Evidence kept (Art. 73(6))", "", f"- {evidence_line(input)}", "", "## 7. Corrective actions", ""]
        for action in input.actions:
            what = f"{action.stage}: {action.kind}" + (f" ({action.result['version']})" if "version" in action.result else "")
            undone = f"; lifted {when(action.undone_at)}" if action.undone_at else "; still in place"
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


# --- what the record says ----------------------------------------------------------------------


def when(at: datetime | str | None) -> str:
    if at is None:
        return "—"
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    return at.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def deadline_of(input: ReviewInput) -> datetime | str | None:
    return input.regulatory.deadline if input.regulatory and input.regulatory.deadline else input.report_deadline


def stage_of(input: ReviewInput, name: str):
    return next((stage for stage in input.stages if stage.name == name), None)


def stage_done_at(input: ReviewInput, name: str) -> datetime | None:
    stage = stage_of(input, name)
    return stage.finished_at if stage and stage.status == "done" else None


def signals_summary(input: ReviewInput) -> str:
    count = input.signal_count or (1 if input.first_signal else 0)
    by_source = ", ".join(f"{n} {source}" for source, n in sorted(input.signal_sources.items()))
    return f"{count}" + (f" ({by_source})" if by_source else "")


def version_lines(input: ReviewInput) -> list[str]:
    reported = (input.first_signal.model_version if input.first_signal else None) or input.target.version
    lines = [f"Version reported: {reported or 'unknown ' + FILL_IN}"]
    if input.evidence:
        served, release = input.evidence.summary.get("served_version"), input.evidence.summary.get("release_version")
        if served or release:
            lines.append(f"At the evidence snapshot ({when(input.evidence.taken_at)}): served {served or '?'}, release {release or '?'}")
    for action in input.actions:
        if action.stage in ("rollback", "hotfix") and action.result.get("version"):
            lines.append(f"After {action.stage} {action.kind} ({when(action.applied_at)}): version {action.result['version']}")
    verify = stage_of(input, "verify")
    if verify and verify.status == "done":
        lines.append(f"Verified: {verify.detail}")
    return lines


def evidence_line(input: ReviewInput) -> str:
    if not input.evidence:
        return "No evidence snapshot was taken: " + ("the step was skipped by a responder" if stage_of(input, "evidence") else "none recorded")
    first_change = min((a.applied_at for a in input.actions if a.applied_at), default=None)
    order = "before the first change to the system" if first_change is None or input.evidence.taken_at <= first_change else "AFTER the first change (check Art. 73(6))"
    return f"Snapshot sha256 {input.evidence.sha256}, taken {when(input.evidence.taken_at)}, {order}; kept at {input.evidence.location}"


def key_dates(input: ReviewInput) -> list[tuple[str, datetime | None]]:
    clock = input.regulatory
    return [
        ("opened", input.opened_at),
        ("aware (serious)", clock.aware_at if clock else None),
        ("acknowledged" + (f" by {input.acknowledged_by}" if input.acknowledged_by else ""), input.acknowledged_at),
        ("evidence taken", input.evidence.taken_at if input.evidence else None),
        ("contained", stage_done_at(input, "contain")),
        ("rolled back", stage_done_at(input, "rollback")),
        ("fix deployed", stage_done_at(input, "hotfix")),
        ("fix verified", stage_done_at(input, "verify")),
        ("restored", stage_done_at(input, "restore")),
        ("review opened", input.reviewed_at),
        ("report due", clock.deadline if clock else None),
    ]


# --- compliance mapping ------------------------------------------------------------------------------


def entries(input: ReviewInput, kinds: tuple[str, ...], *, contains: str = "") -> list[str]:
    """Timeline entries as evidence lines: `<at> [kind] actor: message`."""
    found = []
    for entry in input.timeline:
        if entry.get("kind") not in kinds or contains not in entry.get("message", ""):
            continue
        found.append(f"{entry['at']} [{entry['kind']}] {entry.get('actor', 'stanch')}: {entry['message']}")
    return found


def action_lines(input: ReviewInput, stages: tuple[str, ...]) -> list[str]:
    return [
        f"action {a.stage}:{a.kind} key {a.idempotency_key} applied {when(a.applied_at)}" + (f", undone {when(a.undone_at)} (key {a.undo_key})" if a.undone_at else ", still in place")
        for a in input.actions
        if a.stage in stages
    ]


def stage_line(input: ReviewInput, name: str) -> str:
    stage = stage_of(input, name)
    if stage is None:
        return f"stage {name}: not recorded"
    return f"stage {name}: {stage.status}" + (f" — {stage.detail}" if stage.detail else "")


def stage_status(input: ReviewInput, name: str) -> str | None:
    stage = stage_of(input, name)
    return str(stage.status) if stage else None


def compliance_mapping(input: ReviewInput, tasks: list[dict], added: int) -> list[ComplianceItem]:
    """Each requirement with the concrete steps of this incident that meet it — or 'not performed'."""
    response_stages = ("contain", "rollback", "hotfix")
    responded = [name for name in response_stages if stage_status(input, name) == "done"]
    restored = stage_status(input, "restore") == "done"
    verified = stage_status(input, "verify") == "done"
    task_kinds = {task["kind"]: task for task in tasks}

    def item(framework, reference, requirement, performed, partly, evidence, gaps=()) -> ComplianceItem:
        status = "performed" if performed else "partly performed" if partly else "not performed"
        return ComplianceItem(framework=framework, reference=reference, requirement=requirement, status=status, evidence=evidence, gaps=list(gaps))

    # MANAGE 2.3: a procedure was followed to respond and to recover.
    evidence_23 = [f"runbook {input.runbook.name}" + (f" sha256 {input.runbook_sha256}" if input.runbook_sha256 else "") + " followed as a durable workflow"]
    evidence_23 += [f"confirm finding {f.check}: {f.outcome} — {f.detail}" for f in input.findings]
    evidence_23 += [stage_line(input, name) for name in ("confirm", *response_stages, "verify", "restore")]
    gaps_23 = [] if restored else ["service was not restored through the procedure: " + stage_line(input, "restore")]
    if not responded:
        gaps_23.append("no response stage (contain, rollback, hotfix) completed")
    manage_23 = item(NIST, "MANAGE 2.3", "Procedures are followed to respond to and recover from a previously unknown risk when it is identified.",
                     bool(responded) and restored, bool(responded) or restored, evidence_23, gaps_23)

    # MANAGE 2.4: supersede, disengage or deactivate — containment and rollback, and who decided.
    evidence_24 = action_lines(input, ("contain", "rollback"))
    evidence_24 += [f"approval {r.stage} {'approved' if r.approve else 'rejected'} by {r.approver} ({', '.join(r.roles)}) at {when(r.at)}" for r in input.approvals if r.verified]
    evidence_24 += [stage_line(input, name) for name in ("contain", "rollback")]
    applied_24 = any(a.stage in ("contain", "rollback") for a in input.actions)
    gaps_24 = [] if applied_24 else ["no containment or rollback action was applied: " + "; ".join(stage_line(input, n) for n in ("contain", "rollback"))]
    manage_24 = item(NIST, "MANAGE 2.4", "Mechanisms are in place and applied, and responsibilities are assigned and understood, to supersede, disengage, or deactivate AI systems that demonstrate performance or outcomes inconsistent with intended use.",
                     applied_24, False, evidence_24, gaps_24)

    # MANAGE 4.1: post-deployment monitoring, incident response, recovery and change management.
    evidence_41 = [f"signals: {signals_summary(input)}" + (f"; first from {input.first_signal.sender}: {input.first_signal.title}" if input.first_signal else "")]
    evidence_41 += entries(input, ("signal",))
    evidence_41 += [stage_line(input, name) for name in ("hotfix", "verify", "restore")]
    if added:
        evidence_41.append(f"{added} repro cases added to the regression suite")
    if "monitoring" in task_kinds:
        evidence_41.append(f"review task {task_kinds['monitoring']['id']}: {task_kinds['monitoring']['title']}")
    gaps_41 = [] if verified else ["change not verified: " + stage_line(input, "verify")]
    if "monitoring" not in task_kinds:
        gaps_41.append("the runbook opens no monitoring-improvement task")
    manage_41 = item(NIST, "MANAGE 4.1", "Post-deployment AI system monitoring plans are implemented, including mechanisms for capturing and evaluating input from users and other relevant AI actors, appeal and override, decommissioning, incident response, recovery, and change management.",
                     input.signal_count > 0 and verified and "monitoring" in task_kinds, input.signal_count > 0 or bool(input.timeline), evidence_41, gaps_41)

    # MANAGE 4.3: communicated, tracked, responded to, recovered from.
    notifications = entries(input, ("notification",))
    evidence_43 = notifications + entries(input, ("escalation", "regulatory"))
    if input.acknowledged_at:
        evidence_43.append(f"acknowledged by {input.acknowledged_by} at {when(input.acknowledged_at)}")
    evidence_43.append(f"tracked: {len(input.timeline)} timeline entries in the workflow history" + (f", evidence sha256 {input.evidence_sha256}" if input.evidence_sha256 else ""))
    if input.serious:
        evidence_43.append(f"serious incident: Art. 73 report draft written, due {when(deadline_of(input))}")
    gaps_43 = [] if notifications else ["no notification is on record"]
    gaps_43.append("affected users and communities are not told by Stanch: record how they were informed")
    # Never "performed" from Stanch's record alone: telling affected communities happens outside it.
    manage_43 = item(NIST, "MANAGE 4.3", "Incidents and errors are communicated to relevant AI actors, including affected communities. Processes for tracking, responding to, and recovering from incidents and errors are followed and documented.",
                     False, bool(notifications), evidence_43, gaps_43)

    # ISO/IEC 42001 10.2: react, evaluate causes, implement, review effectiveness, update, document.
    controlled = action_lines(input, ("contain", "rollback"))
    react = controlled + ([evidence_line(input)] if input.evidence else []) + entries(input, ("notification",), contains="page")
    iso_a = item(ISO, "10.2 a) react", "React to the nonconformity: take action to control and correct it, deal with the consequences.",
                 bool(controlled), bool(react), react, [] if controlled else ["nothing was contained or rolled back"])
    causes = [f"confirm finding {f.check}: {f.outcome} — {f.detail}" for f in input.findings]
    causes += [f"review task {task_kinds[k]['id']}: {task_kinds[k]['title']} ({task_kinds[k]['status']})" for k in ("root_cause",) if k in task_kinds]
    iso_b = item(ISO, "10.2 b) evaluate the need for action", "Evaluate the need for action to eliminate the causes: review the nonconformity, determine its causes and whether similar ones exist or could occur.",
                 False, bool(causes), causes, ["root cause still to be determined: the root-cause task is open" if "root_cause" in task_kinds else "the runbook opens no root-cause task"])
    implemented = action_lines(input, ("hotfix",))
    iso_c = item(ISO, "10.2 c) implement the action needed", "Implement any action needed.", bool(implemented), False,
                 implemented + [stage_line(input, "hotfix")], [] if implemented else ["no corrective change (hotfix) was applied: " + stage_line(input, "hotfix")])
    effectiveness = [stage_line(input, "verify")] + (entries(input, ("verify",)))
    iso_d = item(ISO, "10.2 d) review effectiveness", "Review the effectiveness of any corrective action taken.", verified, False,
                 effectiveness, [] if verified else ["the corrective action was not verified"])
    updates = [f"{added} repro cases added to the regression suite"] if added else []
    updates += [f"review task {task_kinds[k]['id']}: {task_kinds[k]['title']} ({task_kinds[k]['status']})" for k in ("risk_assessment", "testing_protocol", "guardrails") if k in task_kinds]
    iso_e = item(ISO, "10.2 e) update the management system", "Make changes to the AI management system, if necessary (risk assessment, testing, controls).",
                 False, bool(updates), updates, ["the update tasks are open: close them in the review"] if updates else ["no update to the management system is on record"])
    documented = [f"workflow history of {input.occurrence or input.incident_id}: {len(input.timeline)} timeline entries", "postmortem.md, tasks.json and compliance.json in the review folder"]
    if input.evidence:
        documented.append(f"evidence snapshot sha256 {input.evidence.sha256} at {input.evidence.location}")
    if input.serious:
        documented.append("art73-report-draft.md")
    iso_doc = item(ISO, "10.2 documented information", "Retain documented information as evidence of the nature of the nonconformity, the actions taken and the results of corrective action.",
                   bool(input.timeline), True, documented, [] if input.evidence else ["no evidence snapshot was retained"])
    mapping = [manage_23, manage_24, manage_41, manage_43, iso_a, iso_b, iso_c, iso_d, iso_e, iso_doc]
    return [rehearsed(entry) for entry in mapping] if input.dry_run else mapping


DRY_RUN_STATUS = "not performed (dry run: rehearsal only)"
DRY_RUN_GAP = "dry run: a rehearsal only — no action changed the target, nobody was paged; nothing here was performed for a real incident"


def rehearsed(item: ComplianceItem) -> ComplianceItem:
    """A dry run performs no requirement: every item is not performed, with what it rehearsed as evidence."""
    return item.model_copy(
        update={"status": "not performed", "evidence": [f"rehearsed (dry run): {line}" for line in item.evidence], "gaps": [DRY_RUN_GAP, *item.gaps]}
    )


def status_text(input: ReviewInput, item: ComplianceItem) -> str:
    return DRY_RUN_STATUS if input.dry_run else item.status
