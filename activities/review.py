"""Review: the post-incident tasks, a postmortem draft with the timeline, the repro cases into
the regression suite, the compliance mapping and, for a serious incident, the EU AI Act Art. 73
report draft — written to the incident's review folder.

The documents are rendered by `stanch.review` from the `ReviewInput` the workflow sends.
"""

from __future__ import annotations

import json

from temporalio import activity

from stanch.models.activity_io import ReviewInput, ReviewResult
from stanch.review.art73 import report_draft
from stanch.review.compliance import compliance_mapping, status_text
from stanch.review.postmortem import postmortem, review_tasks
from stanch.stores.names import safe_file_name
from stanch.stores.regression import add_cases
from stanch.temporal.activity_deps import ActivityDeps


class ReviewActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="open_review")
    async def write_review(self, input: ReviewInput) -> ReviewResult:
        # As for evidence: named safely whatever the input says, never outside the reviews folder.
        folder = self.deps.settings.reviews_dir / safe_file_name(input.occurrence or input.incident_id)
        folder.mkdir(parents=True, exist_ok=True)
        added = 0
        # A rehearsal's repro cases were never confirmed against a change: they stay out of the suite.
        if input.runbook.review.add_repro_to_regression_suite and input.repro and not input.dry_run:
            added = add_cases(self.deps.settings.regression_dir, input.target.model, input.repro, input.incident_id)
        tasks = review_tasks(input)
        (folder / "tasks.json").write_text(json.dumps(tasks, indent=2))
        mapping = compliance_mapping(input, tasks, added)
        compliance = folder / "compliance.json"
        compliance.write_text(json.dumps([item.model_dump() for item in mapping], indent=2))
        postmortem_file = folder / "postmortem.md"
        postmortem_file.write_text(postmortem(input, tasks, added, mapping))
        report = None
        if input.serious:
            report = folder / "art73-report-draft.md"
            report.write_text(report_draft(input))
        return ReviewResult(
            tasks=tasks,
            postmortem=str(postmortem_file),
            report_draft=str(report) if report else None,
            regression_cases_added=added,
            compliance_file=str(compliance),
            compliance={f"{item.framework} {item.reference}": status_text(input, item) for item in mapping},
        )
