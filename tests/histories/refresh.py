"""Record the committed workflow histories that the replay test guards.

    .venv/bin/python -m tests.histories.refresh

Runs each lifecycle branch on a local dev server (custom search attributes registered) with
the activity stand-ins, and writes `tests/histories/<branch>.json` in the format
`temporal workflow show --output json` uses. Refresh after an intended change to the
workflow's command sequence — and only after guarding old histories with `workflow.patched`.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from stanch import search_attributes
from stanch.incident import FailureDecision, IncidentInput
from tests.conftest import installed_binary
from tests.workflow.conftest import alert, incident_input
from tests.workflow.helpers import AsTheApi, approve, approve_four_eyes, until, waiting_on
from tests.workflow.standins import Script, stand_ins
from stanch.incident import ApprovalDecision, IncidentStatus
from workflows.incident import IncidentWorkflow

HERE = Path(__file__).parent


async def high_severity_restored(handle) -> None:
    await approve_four_eyes(handle, "contain")
    await approve_four_eyes(handle, "rollback")
    await until(handle, waiting_on("restore"))
    await approve(handle, "restore", "alice", ["oncall"])


async def false_positive(handle) -> None:
    pass


async def containment_rejected(handle) -> None:
    await until(handle, waiting_on("contain"))
    await AsTheApi(handle).execute_update(IncidentWorkflow.reject, ApprovalDecision(approve=False, stage="contain", approver="sam", roles=["safety"], comment="too broad"))
    await approve_four_eyes(handle, "rollback")
    await until(handle, waiting_on("restore"))
    await approve(handle, "restore", "alice", ["oncall"])


async def failed_rollback_aborted(handle) -> None:
    await approve_four_eyes(handle, "contain")
    await approve_four_eyes(handle, "rollback")
    await until(handle, lambda s: s.status == IncidentStatus.awaiting_decision)
    await AsTheApi(handle).execute_update(IncidentWorkflow.decide, FailureDecision(stage="rollback", by="alice", choice="abort", reason="manual"))


BRANCHES = {
    "high_severity_restored": (Script(), high_severity_restored),
    "false_positive": (Script(confirm="not_confirmed"), false_positive),
    "containment_rejected": (Script(), containment_rejected),
    "failed_rollback_aborted": (Script(failing_kinds={"rollback_to_previous"}), failed_rollback_aborted),
}


async def record(client: Client, name: str) -> None:
    script, drive = BRANCHES[name]
    task_queue = f"histories-{uuid.uuid4()}"
    input: IncidentInput = incident_input().model_copy(update={"upsert_search_attributes": True, "incident_id": f"history-{name}"})
    async with Worker(client, task_queue=task_queue, workflows=[IncidentWorkflow], activities=stand_ins(script)):
        handle = await client.start_workflow(
            IncidentWorkflow.run, input, id=input.incident_id, task_queue=task_queue, start_signal="add_signal", start_signal_args=[alert()]
        )
        await drive(handle)
        await handle.result()
    history = await handle.fetch_history()
    (HERE / f"{name}.json").write_text(history.to_json())
    print(f"recorded {name}: {len(history.events)} events")


async def main() -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=installed_binary("temporal"),
        search_attributes=search_attributes.ALL,
        data_converter=pydantic_data_converter,
        dev_server_extra_args=["--ui-disable-news-fetch"],
        ui=False,
    )
    try:
        for name in BRANCHES:
            await record(env.client, name)
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
