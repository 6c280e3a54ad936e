"""The whole lifecycle, branch by branch, on the time-skipping server."""

from __future__ import annotations

import asyncio

from temporalio.client import WorkflowHandle

from stanch.incident import ApprovalDecision, IncidentState, IncidentStatus
from tests.workflow.conftest import alert, running_incident
from tests.workflow.standins import Script
from workflows.incident import IncidentWorkflow


async def state(handle: WorkflowHandle) -> IncidentState:
    return await handle.query(IncidentWorkflow.current_state)


async def until(handle: WorkflowHandle, predicate, attempts: int = 200) -> IncidentState:
    for _ in range(attempts):
        current = await state(handle)
        if predicate(current):
            return current
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition never held; last state: status={current.status} stages={[(s.name, s.status.value) for s in current.stages]}")


def waiting_on(stage: str):
    return lambda s: s.pending_approval is not None and s.pending_approval.stage == stage


async def approve(handle, stage, approver, roles):
    return await handle.execute_update(IncidentWorkflow.approve, ApprovalDecision(stage=stage, approver=approver, roles=roles))


async def test_high_severity_incident_runs_every_stage_with_four_eyes(client):
    script = Script()
    async with running_incident(client, script) as handle:
        await until(handle, waiting_on("contain"))
        await approve(handle, "contain", "alice", ["oncall"])
        await approve(handle, "contain", "sam", ["safety"])
        await until(handle, waiting_on("rollback"))
        await approve(handle, "rollback", "alice", ["oncall"])
        await approve(handle, "rollback", "sam", ["safety"])
        await until(handle, waiting_on("restore"))
        await approve(handle, "restore", "alice", ["oncall"])
        final = await handle.result()
    assert final.status == IncidentStatus.closed
    assert final.severity == "high"
    assert [s.status.value for s in final.stages] == ["done"] * 9
    assert script.evidence_before_first_change is True
    contained_and_rolled_back = [a.idempotency_key for a in final.actions if a.stage in ("contain", "rollback")]
    assert script.lifted == list(reversed(contained_and_rolled_back))
    assert all(a.undone_at for a in final.actions if a.stage in ("contain", "rollback"))
    assert not any(a.undone_at for a in final.actions if a.stage == "hotfix")
