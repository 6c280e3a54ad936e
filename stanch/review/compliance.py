"""The compliance mapping: NIST AI RMF MANAGE 2.3, 2.4, 4.1 and 4.3 and ISO/IEC 42001 clause 10.2,
each with the concrete steps of this incident that meet it — or "not performed", never made up.
"""

from __future__ import annotations

from stanch.models.activity_io import ComplianceItem, ReviewInput
from stanch.models.incident import is_drill_route
from stanch.review.facts import action_lines, deadline_of, entries, evidence_line, signals_summary, stage_line, stage_status, when

NIST = "NIST AI RMF 1.0"
ISO = "ISO/IEC 42001:2023"


def compliance_mapping(input: ReviewInput, tasks: list[dict], added: int) -> list[ComplianceItem]:
    """Each requirement with the concrete steps of this incident that meet it — or 'not performed'."""
    response_stages = ("contain", "rollback", "hotfix")
    responded = [name for name in response_stages if stage_status(input, name) == "done"]
    restored = stage_status(input, "restore") == "done"
    verified = stage_status(input, "verify") == "done"
    task_kinds = {task["kind"]: task for task in tasks}

    def item(framework, reference, requirement, performed, partly, evidence, gaps=()) -> ComplianceItem:
        status = "performed" if performed else "partly performed" if partly else "not performed"
        return ComplianceItem(
            framework=framework, reference=reference, requirement=requirement, status=status, evidence=evidence, gaps=list(gaps)
        )

    # MANAGE 2.3: a procedure was followed to respond and to recover.
    evidence_23 = [
        f"runbook {input.runbook.name}"
        + (f" sha256 {input.runbook_sha256}" if input.runbook_sha256 else "")
        + " followed as a durable workflow"
    ]
    evidence_23 += [f"confirm finding {f.check}: {f.outcome} — {f.detail}" for f in input.findings]
    evidence_23 += [stage_line(input, name) for name in ("confirm", *response_stages, "verify", "restore")]
    gaps_23 = [] if restored else ["service was not restored through the procedure: " + stage_line(input, "restore")]
    if not responded:
        gaps_23.append("no response stage (contain, rollback, hotfix) completed")
    manage_23 = item(
        NIST,
        "MANAGE 2.3",
        "Procedures are followed to respond to and recover from a previously unknown risk when it is identified.",
        bool(responded) and restored,
        bool(responded) or restored,
        evidence_23,
        gaps_23,
    )

    # MANAGE 2.4: supersede, disengage or deactivate — containment and rollback, and who decided.
    evidence_24 = action_lines(input, ("contain", "rollback"))
    evidence_24 += [
        f"approval {r.stage} {'approved' if r.approve else 'rejected'} by {r.approver} ({', '.join(r.roles)}) at {when(r.at)}"
        for r in input.approvals
        if r.verified
    ]
    evidence_24 += [stage_line(input, name) for name in ("contain", "rollback")]
    applied_24 = any(a.stage in ("contain", "rollback") for a in input.actions)
    gaps_24 = (
        []
        if applied_24
        else ["no containment or rollback action was applied: " + "; ".join(stage_line(input, n) for n in ("contain", "rollback"))]
    )
    manage_24 = item(
        NIST,
        "MANAGE 2.4",
        "Mechanisms are in place and applied, and responsibilities are assigned and understood, to supersede, disengage, or deactivate AI "
        "systems that demonstrate performance or outcomes inconsistent with intended use.",
        applied_24,
        False,
        evidence_24,
        gaps_24,
    )

    # MANAGE 4.1: post-deployment monitoring, incident response, recovery and change management.
    evidence_41 = [
        f"signals: {signals_summary(input)}"
        + (f"; first from {input.first_signal.sender}: {input.first_signal.title}" if input.first_signal else "")
    ]
    evidence_41 += entries(input, ("signal",))
    evidence_41 += [stage_line(input, name) for name in ("hotfix", "verify", "restore")]
    if added:
        evidence_41.append(f"{added} repro cases added to the regression suite")
    if "monitoring" in task_kinds:
        evidence_41.append(f"review task {task_kinds['monitoring']['id']}: {task_kinds['monitoring']['title']}")
    gaps_41 = [] if verified else ["change not verified: " + stage_line(input, "verify")]
    if "monitoring" not in task_kinds:
        gaps_41.append("the runbook opens no monitoring-improvement task")
    manage_41 = item(
        NIST,
        "MANAGE 4.1",
        "Post-deployment AI system monitoring plans are implemented, including mechanisms for capturing and evaluating input from users "
        "and other relevant AI actors, appeal and override, decommissioning, incident response, recovery, and change management.",
        input.signal_count > 0 and verified and "monitoring" in task_kinds,
        input.signal_count > 0 or bool(input.timeline),
        evidence_41,
        gaps_41,
    )

    # MANAGE 4.3: communicated, tracked, responded to, recovered from.
    notifications = entries(input, ("notification",))
    evidence_43 = notifications + entries(input, ("escalation", "regulatory"))
    if input.acknowledged_at:
        evidence_43.append(f"acknowledged by {input.acknowledged_by} at {when(input.acknowledged_at)}")
    evidence_43.append(
        f"tracked: {len(input.timeline)} timeline entries in the workflow history"
        + (f", evidence sha256 {input.evidence_sha256}" if input.evidence_sha256 else "")
    )
    if input.serious:
        evidence_43.append(f"serious incident: Art. 73 report draft written, due {when(deadline_of(input))}")
    gaps_43 = [] if notifications else ["no notification is on record"]
    gaps_43.append("affected users and communities are not told by Stanch: record how they were informed")
    # Never "performed" from Stanch's record alone: telling affected communities happens outside it.
    manage_43 = item(
        NIST,
        "MANAGE 4.3",
        "Incidents and errors are communicated to relevant AI actors, including affected communities. Processes for tracking, responding "
        "to, and recovering from incidents and errors are followed and documented.",
        False,
        bool(notifications),
        evidence_43,
        gaps_43,
    )

    # ISO/IEC 42001 10.2: react, evaluate causes, implement, review effectiveness, update, document.
    controlled = action_lines(input, ("contain", "rollback"))
    react = controlled + ([evidence_line(input)] if input.evidence else []) + entries(input, ("notification",), contains="page")
    iso_a = item(
        ISO,
        "10.2 a) react",
        "React to the nonconformity: take action to control and correct it, deal with the consequences.",
        bool(controlled),
        bool(react),
        react,
        [] if controlled else ["nothing was contained or rolled back"],
    )
    causes = [f"confirm finding {f.check}: {f.outcome} — {f.detail}" for f in input.findings]
    causes += [
        f"review task {task_kinds[k]['id']}: {task_kinds[k]['title']} ({task_kinds[k]['status']})"
        for k in ("root_cause",)
        if k in task_kinds
    ]
    iso_b = item(
        ISO,
        "10.2 b) evaluate the need for action",
        "Evaluate the need for action to eliminate the causes: review the nonconformity, determine its causes and whether similar ones "
        "exist or could occur.",
        False,
        bool(causes),
        causes,
        [
            "root cause still to be determined: the root-cause task is open"
            if "root_cause" in task_kinds
            else "the runbook opens no root-cause task"
        ],
    )
    implemented = action_lines(input, ("hotfix",))
    iso_c = item(
        ISO,
        "10.2 c) implement the action needed",
        "Implement any action needed.",
        bool(implemented),
        False,
        implemented + [stage_line(input, "hotfix")],
        [] if implemented else ["no corrective change (hotfix) was applied: " + stage_line(input, "hotfix")],
    )
    effectiveness = [stage_line(input, "verify")] + (entries(input, ("verify",)))
    iso_d = item(
        ISO,
        "10.2 d) review effectiveness",
        "Review the effectiveness of any corrective action taken.",
        verified,
        False,
        effectiveness,
        [] if verified else ["the corrective action was not verified"],
    )
    updates = [f"{added} repro cases added to the regression suite"] if added else []
    updates += [
        f"review task {task_kinds[k]['id']}: {task_kinds[k]['title']} ({task_kinds[k]['status']})"
        for k in ("risk_assessment", "testing_protocol", "guardrails")
        if k in task_kinds
    ]
    iso_e = item(
        ISO,
        "10.2 e) update the management system",
        "Make changes to the AI management system, if necessary (risk assessment, testing, controls).",
        False,
        bool(updates),
        updates,
        ["the update tasks are open: close them in the review"] if updates else ["no update to the management system is on record"],
    )
    documented = [
        f"workflow history of {input.occurrence or input.incident_id}: {len(input.timeline)} timeline entries",
        "postmortem.md, tasks.json and compliance.json in the artefact store (the review result names their locations and sha256)",
    ]
    if input.evidence:
        documented.append(f"evidence snapshot sha256 {input.evidence.sha256} at {input.evidence.location}")
    if input.serious:
        documented.append("art73-report-draft.md")
    iso_doc = item(
        ISO,
        "10.2 documented information",
        "Retain documented information as evidence of the nature of the nonconformity, the actions taken and the results of corrective "
        "action.",
        bool(input.timeline),
        True,
        documented,
        [] if input.evidence else ["no evidence snapshot was retained"],
    )
    mapping = [manage_23, manage_24, manage_41, manage_43, iso_a, iso_b, iso_c, iso_d, iso_e, iso_doc]
    if is_drill(input):
        return [drilled(entry) for entry in mapping]
    return [rehearsed(entry) for entry in mapping] if input.dry_run else mapping


def is_drill(input: ReviewInput) -> bool:
    """A drill (`stanch drill`): its target is a drill route, a copy of the model no user is served."""
    return is_drill_route(input.target.model)


DRY_RUN_STATUS = "not performed (dry run: rehearsal only)"
DRY_RUN_GAP = "dry run: a rehearsal only — no action changed the target, nobody was paged; nothing here was performed for a real incident"


def rehearsed(item: ComplianceItem) -> ComplianceItem:
    """A dry run performs no requirement: every item is not performed, with what it rehearsed as evidence."""
    return item.model_copy(
        update={
            "status": "not performed",
            "evidence": [f"rehearsed (dry run): {line}" for line in item.evidence],
            "gaps": [DRY_RUN_GAP, *item.gaps],
        }
    )


DRILL_STATUS = "not performed (drill: a rehearsal, not an incident)"
DRILL_GAP = (
    "drill: a rehearsal on a drill route — the pages, approvals and actions were real, but they acted on a copy of the model "
    "no user is served; no incident happened and none is counted here"
)


def drilled(item: ComplianceItem) -> ComplianceItem:
    """A drill responds to no incident: every item is not performed, with what it drilled as evidence."""
    return item.model_copy(
        update={
            "status": "not performed",
            "evidence": [f"drilled: {line}" for line in item.evidence],
            "gaps": [DRILL_GAP, *item.gaps],
        }
    )


def status_text(input: ReviewInput, item: ComplianceItem) -> str:
    if is_drill(input):
        return DRILL_STATUS
    return DRY_RUN_STATUS if input.dry_run else item.status
