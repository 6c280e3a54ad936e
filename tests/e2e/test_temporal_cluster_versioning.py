"""Worker versioning (STANCH_DEPLOYMENT_NAME + STANCH_BUILD_ID): an incident started on build 1
finishes on build 1 after build 2 became current, while a new incident runs on build 2 — the
rollout docs/VERSIONING.md describes, with the operator's `temporal worker deployment` command."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType, VersioningBehavior
from temporalio.client import Client

from stanch.temporal.devserver import temporal_cli
from tests.e2e.test_temporal_cluster_drain import REPO, temporal  # noqa: F401 (the dev server fixture)

pytestmark = pytest.mark.e2e


def start_worker(build_id: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    with (logs / f"worker-{build_id}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.stand_in_worker", "worker"],
            cwd=REPO,
            env={**env, "STANCH_BUILD_ID": build_id},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def set_current_version(address: str, deployment: str, build_id: str, timeout: float = 60) -> None:
    """What the operator runs once the new build's workers poll; retried until they have polled."""
    command = [str(temporal_cli()), "worker", "deployment", "set-current-version", "--address", address]
    command += ["--deployment-name", deployment, "--build-id", build_id, "--yes"]
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"set-current-version {build_id} kept failing: {done.stderr}")
        time.sleep(0.5)


async def first_activity_done(client: Client, workflow_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{workflow_id} never ran its first activity")


async def versioning_of(client: Client, workflow_id: str) -> tuple[str, str]:
    """The behaviour and build Temporal recorded for a workflow."""
    info = (await client.get_workflow_handle(workflow_id).describe()).raw_description.workflow_execution_info.versioning_info
    return VersioningBehavior.Name(info.behavior), info.deployment_version.build_id


def test_a_running_incident_stays_on_its_build_while_new_ones_go_to_the_current_one(temporal, tmp_path):  # noqa: F811
    deployment = f"stanch-{uuid.uuid4().hex[:8]}"
    task_queue = f"versioning-{uuid.uuid4()}"
    kept = {name: value for name, value in os.environ.items() if not name.startswith(("TEMPORAL_", "STANCH_"))}
    env = {
        **kept,
        "STANCH_HOME": str(tmp_path / "home"),
        "TEMPORAL_ADDRESS": temporal,
        "STANCH_TASK_QUEUE": task_queue,
        "STANCH_UPSERT_SEARCH_ATTRIBUTES": "false",
        "STANCH_DEPLOYMENT_NAME": deployment,
    }
    workers = [start_worker("build-1", env, tmp_path)]
    try:
        set_current_version(temporal, deployment, "build-1")

        async def scenario() -> tuple[str, str]:
            client = await Client.connect(temporal)
            before = await client.start_workflow("BuildStandIn", id=f"before-{uuid.uuid4().hex[:6]}", task_queue=task_queue)
            await first_activity_done(client, before.id)

            workers.append(start_worker("build-2", env, tmp_path))
            await asyncio.to_thread(set_current_version, temporal, deployment, "build-2")
            after = await client.start_workflow("BuildStandIn", id=f"after-{uuid.uuid4().hex[:6]}", task_queue=task_queue)
            for handle in (before, after):
                await handle.signal("proceed")
            results = await asyncio.wait_for(before.result(), 60), await asyncio.wait_for(after.result(), 60)
            return results, [await versioning_of(client, handle.id) for handle in (before, after)]

        (before, after), recorded = asyncio.run(scenario())
        assert before == "build-1->build-1"  # pinned: finished on the build that started it
        assert after == "build-2->build-2"  # new incidents: the current version
        # What Temporal recorded: each pinned to its build, so none moves while it runs.
        assert recorded == [("VERSIONING_BEHAVIOR_PINNED", "build-1"), ("VERSIONING_BEHAVIOR_PINNED", "build-2")]
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
