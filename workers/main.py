"""The worker process: runs incident workflows and their activities on one task queue."""

from __future__ import annotations

import asyncio
import logging

from temporalio.client import Client
from temporalio.worker import Worker

from activities.confirm import ConfirmActivities
from activities.containment import ContainmentActivities
from activities.deps import ActivityDeps
from activities.evidence import EvidenceActivities
from activities.hotfix import HotfixActivities
from activities.notify import NotifyActivities
from activities.restore import RestoreActivities
from activities.review import ReviewActivities
from activities.rollback import RollbackActivities
from activities.severity import grade_severity
from stanch import assertions
from stanch.config import Settings
from stanch.temporal import connect
from workflows.incident import IncidentWorkflow

WORKFLOWS = [IncidentWorkflow]


def all_activities(deps: ActivityDeps) -> list:
    confirm, contain, evidence = ConfirmActivities(deps), ContainmentActivities(deps), EvidenceActivities(deps)
    hotfix, notify, restore = HotfixActivities(deps), NotifyActivities(deps), RestoreActivities(deps)
    review, rollback = ReviewActivities(deps), RollbackActivities(deps)
    return [
        confirm.confirm_incident,
        evidence.snapshot_evidence,
        grade_severity,
        contain.apply_containment,
        rollback.apply_rollback,
        hotfix.apply_hotfix,
        hotfix.verify_fix,
        restore.lift_action,
        review.open_review,
        notify.notify,
    ]


def build_worker(client: Client, settings: Settings, task_queue: str | None = None) -> Worker:
    assertions.trust(assertions.load_keys(settings.home))  # approvals count only with the API's assertion
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=WORKFLOWS,
        activities=all_activities(ActivityDeps.from_settings(settings)),
    )


async def run_worker(settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request's URL at INFO: a control plane's URLs are nobody's business in the
    # worker's log (and httpcore's connection chatter even less).
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    client = await connect(settings.temporal_address, settings.temporal_namespace, settings)
    worker = build_worker(client, settings)
    logging.getLogger("stanch.worker").info("worker polling %s on %s", settings.task_queue, settings.temporal_address or "env config")
    await worker.run()


if __name__ == "__main__":
    asyncio.run(run_worker())
