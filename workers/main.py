"""The worker process: runs incident workflows and their activities on one task queue."""

from __future__ import annotations

import asyncio
import logging

from temporalio.client import Client
from temporalio.worker import Worker

from activities.confirm import ConfirmActivities
from activities.contain import ContainActivities
from activities.decisions import verify_approval
from activities.evidence import EvidenceActivities
from activities.hotfix import HotfixActivities
from activities.notify import NotifyActivities
from activities.restore import RestoreActivities
from activities.review import ReviewActivities
from activities.rollback import RollbackActivities
from activities.severity import grade_by_runbook_rules
from activities.verify import VerifyActivities
from stanch.config.settings import Settings
from stanch.temporal.activity_deps import ActivityDeps
from stanch.temporal.client import connect
from stanch.trust import assertions, decision_keys
from workflows.incident import IncidentWorkflow

WORKFLOWS = [IncidentWorkflow]


def all_activities(deps: ActivityDeps) -> list:
    """Every activity an incident runs, one per stage, in the order of the lifecycle."""
    return [
        ConfirmActivities(deps).confirm_incident,
        EvidenceActivities(deps).snapshot_evidence,
        grade_by_runbook_rules,
        ContainActivities(deps).apply_containment,
        RollbackActivities(deps).apply_rollback,
        HotfixActivities(deps).apply_hotfix,
        VerifyActivities(deps).verify_fix,
        RestoreActivities(deps).undo_action,
        ReviewActivities(deps).write_review,
        NotifyActivities(deps).deliver,
        verify_approval,  # run as a local activity by the approval signal's handler
    ]


def trust_decision_keys(settings: Settings, *, insecure_dev: bool = False) -> list[str]:
    """Load the public keys decisions are verified with; raises DecisionKeyError naming the
    variable to set when the configuration cannot verify what the API signs."""
    keys = decision_keys.for_worker(settings.home, insecure_dev=insecure_dev)
    assertions.trust_keys(keys)
    return keys.ids


def build_worker(client: Client, settings: Settings, task_queue: str | None = None) -> Worker:
    """The worker; call `trust_decision_keys` first (run_worker does)."""
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=WORKFLOWS,
        activities=all_activities(ActivityDeps.from_settings(settings)),
    )


async def run_worker(settings: Settings | None = None, *, insecure_dev: bool = False) -> None:
    settings = settings or Settings.from_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request's URL at INFO: a control plane's URLs are nobody's business in the
    # worker's log (and httpcore's connection chatter even less).
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Decisions are accepted only with the API's assertion: a worker that cannot check it does not
    # start (DecisionKeyError names the variable to set), and says so before connecting.
    trust_decision_keys(settings, insecure_dev=insecure_dev)
    client = await connect(settings.temporal_address, settings.temporal_namespace, settings)
    worker = build_worker(client, settings)
    logging.getLogger("stanch.worker").info("worker polling %s on %s", settings.task_queue, settings.temporal_address or "env config")
    await worker.run()


if __name__ == "__main__":
    asyncio.run(run_worker())
