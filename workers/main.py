"""The worker process: runs incident workflows and their activities on one task queue."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.worker import Worker, WorkerDeploymentConfig
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.bisect import BisectActivities
from activities.confirm import ConfirmActivities
from activities.contain import ContainActivities
from activities.decisions import verify_approval
from activities.evidence import EvidenceActivities
from activities.exposure import ExposureActivities
from activities.hotfix import HotfixActivities
from activities.notify import NotifyActivities
from activities.restore import RestoreActivities
from activities.review import ReviewActivities
from activities.rollback import RollbackActivities
from activities.severity import grade_by_runbook_rules
from activities.shadow import ShadowActivities
from activities.verify import VerifyActivities
from stanch.config.settings import Settings
from stanch.telemetry.logs import configure_logging
from stanch.telemetry.tracing import start_tracing, stop_tracing
from stanch.temporal.activity_deps import ActivityDeps
from stanch.temporal.client import configured_address, connect, metrics_runtime
from stanch.temporal.setup import require_attributes
from stanch.trust import assertions, decision_keys
from workers.health import WorkerHealth
from workflows.incident import IncidentWorkflow

WORKFLOWS = [IncidentWorkflow]


def all_activities(deps: ActivityDeps) -> list:
    """Every activity an incident runs, one per stage, in the order of the lifecycle."""
    return [
        ConfirmActivities(deps).confirm_incident,
        ExposureActivities(deps).measure_exposure,
        BisectActivities(deps).bisect_changes,
        EvidenceActivities(deps).snapshot_evidence,
        grade_by_runbook_rules,
        ContainActivities(deps).apply_containment,
        RollbackActivities(deps).apply_rollback,
        HotfixActivities(deps).apply_hotfix,
        VerifyActivities(deps).verify_fix,
        ShadowActivities(deps).verify_on_shadow,
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


class VersioningConfigError(ValueError):
    """STANCH_DEPLOYMENT_NAME and STANCH_BUILD_ID must come together."""


def deployment_config(settings: Settings) -> WorkerDeploymentConfig | None:
    """Worker versioning from STANCH_DEPLOYMENT_NAME + STANCH_BUILD_ID (both, or neither: None).

    Incidents are PINNED: a running one finishes on the build that started it, and new ones go
    to the deployment's current version, which an operator sets (docs/VERSIONING.md)."""
    if not settings.deployment_name and not settings.build_id:
        return None
    if not (settings.deployment_name and settings.build_id):
        given, missing = (
            ("STANCH_DEPLOYMENT_NAME", "STANCH_BUILD_ID") if settings.deployment_name else ("STANCH_BUILD_ID", "STANCH_DEPLOYMENT_NAME")
        )
        raise VersioningConfigError(f"worker versioning needs both variables: {given} is set, {missing} is not (set both, or neither)")
    if "." in settings.deployment_name:
        raise VersioningConfigError(
            f"STANCH_DEPLOYMENT_NAME {settings.deployment_name!r}: no '.' allowed (Temporal writes versions as NAME.BUILD)"
        )
    return WorkerDeploymentConfig(
        version=WorkerDeploymentVersion(deployment_name=settings.deployment_name, build_id=settings.build_id),
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.PINNED,
    )


def build_worker(client: Client, settings: Settings, task_queue: str | None = None, deps: ActivityDeps | None = None) -> Worker:
    """The worker; call `trust_decision_keys` first (run_worker does). `deps`: what its
    activities use (run_worker hands in `ActivityDeps.for_worker`'s, its stores checked)."""
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=WORKFLOWS,
        activities=all_activities(deps or ActivityDeps.from_settings(settings)),
        deployment_config=deployment_config(settings),
        # The sandbox re-imports a workflow's own modules for every run: with workflows/ passed
        # through, 1,000 open incidents reach their first gate ~1.8x faster against the same
        # baseline and hold a third of the memory each (bench/open_incidents.py,
        # docs/BENCHMARKS.md). The sandbox's checks still guard that code where it is written:
        # tests/workflow runs it under the default sandbox, and the replay tests replay every
        # committed history.
        workflow_runner=SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows")),
        # On SIGTERM (a rollout, a scale-down) running activities get this long to finish before
        # they are cancelled; their retries then run on another worker.
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_seconds),
    )


async def run_worker(
    settings: Settings | None = None,
    *,
    insecure_dev: bool = False,
    stop: asyncio.Event | None = None,
    health: WorkerHealth | None = None,
) -> None:
    """Connect, check the namespace was prepared, and poll until `stop` is set; then drain:
    stop polling, let running activities finish (STANCH_WORKER_SHUTDOWN_SECONDS), return.

    Raises SearchAttributesMissing (naming `stanch temporal setup`) before polling when the
    namespace lacks Stanch's search attributes, VersioningConfigError for half a versioning config,
    RecordsError for a records database it cannot reach or upgrade, ArtefactError for an artefact
    store it cannot store in and read back from."""
    settings = settings or Settings.from_env()
    health = health or WorkerHealth()
    log = logging.getLogger("stanch.worker")
    configure_logging(settings.log_format)
    # httpx logs every request's URL at INFO: a control plane's URLs are nobody's business in the
    # worker's log (and httpcore's connection chatter even less).
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Decisions are accepted only with the API's assertion: a worker that cannot check it does not
    # start (DecisionKeyError names the variable to set), and says so before connecting.
    trust_decision_keys(settings, insecure_dev=insecure_dev)
    versioning = deployment_config(settings)
    # Traces, when OTEL_EXPORTER_OTLP_ENDPOINT asks: before connecting, so the client carries
    # Temporal's tracing interceptor and the worker built on it inherits it.
    start_tracing("stanch-worker", propagate_to=settings.trace_propagation_hosts)
    # The SDK's own metrics (task latencies, slots, polls), for Prometheus, when an address is set.
    client = await connect(settings.temporal_address, settings.temporal_namespace, settings, runtime=metrics_runtime(settings))
    if settings.upsert_search_attributes:
        health.not_ready = "checking Stanch's search attributes"
        await require_attributes(client)
    # The shared stores, before any task is taken: a bucket or database this worker cannot use
    # stops it here (ArtefactError, RecordsError), not at the first incident's evidence step.
    health.not_ready = "checking the records database and the artefact store"
    deps = await ActivityDeps.for_worker(settings)
    worker = build_worker(client, settings, deps=deps)
    version = f", version {versioning.version.to_canonical_string()} (pinned)" if versioning else ""
    log.info(
        "worker polling %s in namespace %s on %s%s",
        settings.task_queue,
        client.namespace,
        configured_address(settings.temporal_address),
        version,
    )
    polling = asyncio.create_task(worker.run())
    health.worker_task = polling
    health.not_ready = None
    stopping = asyncio.create_task((stop or asyncio.Event()).wait())
    try:
        await asyncio.wait([polling, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if polling.done():
        await polling  # the worker failed on its own: its error is the process's
        return
    health.not_ready = "draining: shutting down"
    log.info("draining: no new tasks; running activities have %ss to finish", settings.worker_shutdown_seconds)
    await worker.shutdown()
    await polling
    log.info("worker stopped")
    stop_tracing()  # spans still batched, within seconds even with the collector down


if __name__ == "__main__":
    asyncio.run(run_worker())
