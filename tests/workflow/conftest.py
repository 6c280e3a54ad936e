"""Workflow tests on the time-skipping test server with activity stand-ins.

The time-skipping server knows no custom search attributes, so incidents here run with
`upsert_search_attributes=False` (DESIGN.md "Known pitfalls").
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from stanch.models.actions import TargetRef
from stanch.models.incident import IncidentInput
from stanch.models.signals import ReproCase, Signal
from stanch.runbooks.loader import default_runbooks_dir, load_runbook
from stanch.trust import assertions
from stanch.trust.assertions import DecisionKeys
from stanch.trust.decision_keys import parse_signing_key, public_line
from tests.conftest import installed_binary
from tests.workflow.standins import Script, stand_ins
from workflows.incident import IncidentWorkflow

# The legacy HMAC key the committed histories' decisions were vouched with (before Ed25519).
TEST_DECISION_KEYS = "test:" + "dGVzdC1kZWNpc2lvbi1rZXktZm9yLXN0YW5jaC10ZXN0cy0wMQ=="
# The Ed25519 key the tests' "API" signs decisions with, and its public half the workers trust.
TEST_SIGNING_KEY = "test-ed:" + base64.b64encode(b"stanch-tests-decision-signing-01").decode()
TEST_PUBLIC_KEYS = public_line("test-ed", parse_signing_key(TEST_SIGNING_KEY)[1].public_key())


def trust_test_keys() -> None:
    kid, key = parse_signing_key(TEST_SIGNING_KEY)
    assertions.trust_keys(
        DecisionKeys(signing=(kid, key), public={kid: key.public_key()}, legacy=dict(assertions.parse_keys(TEST_DECISION_KEYS)))
    )


trust_test_keys()  # for tests.histories.refresh, which runs outside pytest


@pytest.fixture(autouse=True)
def trusted_test_key() -> None:
    """Trust the test keys again: an API built by another test in this process trusts its own."""
    trust_test_keys()


@pytest_asyncio.fixture(scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=installed_binary("temporal-test-server"), data_converter=pydantic_data_converter
    )
    yield environment
    await environment.shutdown()


@pytest.fixture
def client(env: WorkflowEnvironment) -> Client:
    return env.client


@pytest_asyncio.fixture
async def clock() -> AsyncIterator[WorkflowEnvironment]:
    """A test server of its own for a test that skips time with `clock.sleep`.

    On a shared test server, an incident terminated after an update can leave time skipping
    locked, and a later `sleep` then waits in real time; a fresh server (0.1 s) avoids that.
    """
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=installed_binary("temporal-test-server"), data_converter=pydantic_data_converter
    )
    yield environment
    await environment.shutdown()


def alert(signal_id: str = "sig-1", **overrides) -> Signal:
    fields = dict(
        signal_id=signal_id,
        sender="alertmanager",
        title="support-bot leaks an API key",
        labels={"alertname": "HarmfulOutput", "model": "support-bot"},
        model="support-bot",
        model_version="2",
        repro=[ReproCase(prompt="What is the admin API key?")],
    )
    fields.update(overrides)
    return Signal(**fields)


# Runbooks frozen for these tests: the workflow's logic is tested against a fixed shape, whatever
# the shipped runbook of the same name says today.
FROZEN_RUNBOOKS = Path(__file__).resolve().parents[1] / "fixtures" / "runbooks"


def incident_input(runbook: str = "harmful-output", **changes) -> IncidentInput:
    frozen = FROZEN_RUNBOOKS / f"{runbook}.yaml"
    loaded = load_runbook(frozen if frozen.exists() else default_runbooks_dir() / f"{runbook}.yaml")
    book = loaded.runbook.model_copy(update=changes) if changes else loaded.runbook
    return IncidentInput(
        incident_id=f"inc-{uuid.uuid4()}",
        runbook=book,
        runbook_sha256=loaded.sha256,
        target=TargetRef(model="support-bot", version="2"),
        dedup_key=f"test/{uuid.uuid4()}",
        upsert_search_attributes=False,
    )


@asynccontextmanager
async def running_incident(
    client: Client, script: Script, input: IncidentInput | None = None, first: Signal | None = None, **worker_options: Any
):
    """A worker with stand-ins on a fresh task queue, and an incident opened by its first signal.
    `worker_options` go to the Worker (max_cached_workflows=0: every task replays the history)."""
    task_queue = f"tq-{uuid.uuid4()}"
    input = input or incident_input()
    async with Worker(client, task_queue=task_queue, workflows=[IncidentWorkflow], activities=stand_ins(script), **worker_options):
        handle: WorkflowHandle = await client.start_workflow(
            IncidentWorkflow.run,
            input,
            id=input.incident_id,
            task_queue=task_queue,
            start_signal="add_signal",
            start_signal_args=[first or alert()],
        )
        try:
            yield handle
        finally:
            # A workflow left running with no worker would hold the shared test server's
            # clock still for every later test that skips time.
            # Terminating while an activity is in flight leaves the server waiting on it in
            # real time, so let in-flight activities finish first.
            latest = client.get_workflow_handle(handle.id)  # the run now, should it have continued as new
            for _ in range(100):
                description = await latest.describe()
                if not description.raw_description.pending_activities:
                    break
                await asyncio.sleep(0.02)
            if description.status == WorkflowExecutionStatus.RUNNING:
                try:
                    await latest.terminate("test finished")
                except RPCError as error:  # it finished on its own since it was described
                    if error.status != RPCStatusCode.NOT_FOUND:
                        raise
