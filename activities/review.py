"""Review: the post-incident tasks, a postmortem draft with the timeline, the repro cases into
the regression suite, and for a serious incident the regulatory report draft."""

from __future__ import annotations

import json

from temporalio import activity

from activities.deps import ActivityDeps
from activities.models import ReviewInput, ReviewResult
from activities.regression import add_cases

TASK_TITLES = {
    "root_cause": "Find the root cause: why did the update behave this way, and why did testing miss it?",
    "risk_assessment": "Update the risk assessment (NIST AI RMF MANAGE, ISO/IEC 42001 clause 10.2) with this failure mode",
    "testing_protocol": "Update the testing protocol: the repro cases now run in the regression suite",
    "monitoring": "Improve monitoring so this harm is detected sooner",
    "guardrails": "Improve guardrails so this harm is blocked before users see it",
}


class ReviewActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="open_review")
    async def open_review(self, input: ReviewInput) -> ReviewResult:
        folder = self.deps.settings.reviews_dir / (input.occurrence or input.incident_id)
        folder.mkdir(parents=True, exist_ok=True)
        added = 0
        if input.runbook.review.add_repro_to_regression_suite and input.repro:
            added = add_cases(self.deps.settings.regression_dir, input.target.model, input.repro, input.incident_id)
        tasks = [
            {"id": f"{input.occurrence or input.incident_id}/{name}", "kind": name, "title": TASK_TITLES.get(name, name.replace("_", " ")), "status": "open"}
            for name in input.runbook.review.tasks
        ]
        (folder / "tasks.json").write_text(json.dumps(tasks, indent=2))
        postmortem = folder / "postmortem.md"
        postmortem.write_text(self.postmortem(input, tasks, added))
        report = None
        if input.serious:
            report = folder / "art73-report-draft.md"
            report.write_text(self.report_draft(input))
        return ReviewResult(tasks=tasks, postmortem=str(postmortem), report_draft=str(report) if report else None, regression_cases_added=added)

    def postmortem(self, input: ReviewInput, tasks: list[dict], added: int) -> str:
        lines = [
            f"# Postmortem draft: {input.occurrence or input.incident_id}",
            "",
            f"- Runbook: {input.runbook.name} — {input.runbook.description}",
            f"- Target: {input.target}",
            f"- Severity: {input.severity}",
            f"- Outcome: {input.status}",
            f"- Evidence snapshot sha256: {input.evidence_sha256 or 'none'}",
            f"- Repro cases added to the regression suite: {added}",
            "",
            "## Actions",
            "",
        ]
        for action in input.actions:
            undone = f", undone {action.undone_at:%Y-%m-%d %H:%M:%S}" if action.undone_at else ", still in place"
            lines.append(f"- {action.stage}: {action.kind} `{action.idempotency_key}` applied {action.applied_at:%Y-%m-%d %H:%M:%S}{undone}")
        lines += ["", "## Timeline", ""]
        lines += [f"- {entry['at']} [{entry['kind']}] {entry['actor']}: {entry['message']}" for entry in input.timeline]
        lines += ["", "## Follow-up tasks", ""]
        lines += [f"- [ ] {task['title']}" for task in tasks]
        return "\n".join(lines) + "\n"

    def report_draft(self, input: ReviewInput) -> str:
        return "\n".join(
            [
                f"# Serious incident report draft (EU AI Act Art. 73): {input.incident_id}",
                "",
                f"- AI system and version: {input.target}",
                f"- Report deadline: {input.report_deadline}",
                f"- Severity: {input.severity}",
                "- What happened: see the postmortem timeline",
                "- Causal link: to be established by the root-cause task",
                f"- Corrective actions: {', '.join(f'{a.stage}:{a.kind}' for a in input.actions) or 'none'}",
                "",
            ]
        )
