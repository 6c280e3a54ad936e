"""Review: the post-incident tasks, a postmortem draft with the timeline, the repro cases into
the regression suite, the compliance mapping and, for a serious incident, the EU AI Act Art. 73
report draft — kept in the artefact store (stanch.stores.artefacts), their locations and sha256
in the result.

The documents are rendered by `stanch.review` from the `ReviewInput` the workflow sends.
"""

from __future__ import annotations

import asyncio
import json

from temporalio import activity

from stanch.models.activity_io import ReviewInput, ReviewResult
from stanch.models.incident import is_drill_route
from stanch.review.art73 import report_draft
from stanch.review.compliance import compliance_mapping, status_text
from stanch.review.postmortem import postmortem, review_tasks
from stanch.temporal.activity_deps import ActivityDeps


class ReviewActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="open_review")
    async def write_review(self, input: ReviewInput) -> ReviewResult:
        added = 0
        # A rehearsal's repro cases were never confirmed against a change, and a drill's harm was
        # injected on purpose on its drill route: neither joins the suite that guards real changes.
        rehearsed = input.dry_run or is_drill_route(input.target.model)
        if input.runbook.review.add_repro_to_regression_suite and input.repro and not rehearsed:
            # The suite may be a database on another host: its round trips stay off the event loop.
            added = await asyncio.to_thread(self.deps.regression_suite.add, input.target.model, input.repro, input.incident_id)
        tasks = review_tasks(input)
        mapping = compliance_mapping(input, tasks, added)
        # Into the artefact store, by content, where any host reads them back; history keeps each
        # document's location and sha256. A retried review stores the same bytes under the same keys.
        store = self.deps.artefacts
        tasks_file = await store.put("reviews", json.dumps(tasks, indent=2).encode(), name="tasks.json")
        compliance = await store.put(
            "reviews", json.dumps([item.model_dump() for item in mapping], indent=2).encode(), name="compliance.json"
        )
        postmortem_file = await store.put("reviews", postmortem(input, tasks, added, mapping).encode(), name="postmortem.md")
        report = await store.put("reviews", report_draft(input).encode(), name="art73-report-draft.md") if input.serious else None
        return ReviewResult(
            tasks=tasks,
            postmortem=postmortem_file.location,
            postmortem_sha256=postmortem_file.sha256,
            report_draft=report.location if report else None,
            report_draft_sha256=report.sha256 if report else None,
            regression_cases_added=added,
            compliance_file=compliance.location,
            compliance_sha256=compliance.sha256,
            tasks_file=tasks_file.location,
            tasks_sha256=tasks_file.sha256,
            compliance={f"{item.framework} {item.reference}": status_text(input, item) for item in mapping},
        )
