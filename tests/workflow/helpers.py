"""Small helpers the workflow tests share: read state, wait for a condition, decide."""

from __future__ import annotations

import asyncio
import uuid

from temporalio.client import WorkflowHandle
from temporalio.service import RPCError

from stanch.models.decisions import ApprovalDecision
from stanch.models.incident import IncidentState, IncidentStatus
from stanch.trust import assertions
from workflows.incident import IncidentWorkflow


async def state(handle: WorkflowHandle) -> IncidentState:
    return await handle.query(IncidentWorkflow.current_state)


async def until(handle: WorkflowHandle, predicate, attempts: int = 200) -> IncidentState:
    current = None
    for _ in range(attempts):
        try:
            current = await state(handle)
        except RPCError:  # a query that reaches a run as it continues as new may time out: ask again
            continue
        if predicate(current):
            return current
        await asyncio.sleep(0.05)
    stages = [(s.name, s.status.value) for s in current.stages] if current else None
    raise AssertionError(f"condition never held; last status={current and current.status} stages={stages}")


def waiting_on(stage: str):
    return lambda s: s.pending_approval is not None and s.pending_approval.stage == stage


def stage_status(s: IncidentState) -> dict[str, str]:
    return {stage.name: stage.status.value for stage in s.stages}


class AsTheApi:
    """The handle, but every decision goes out vouched for, as the Stanch API sends it."""

    def __init__(self, handle: WorkflowHandle) -> None:
        self.handle = handle

    async def execute_update(self, update, message, **options):
        nonce = options.setdefault("id", str(uuid.uuid4()))
        occurrence = await occurrence_of(self.handle)
        vouched_message = message.model_copy(update={"assertion": assertions.sign(occurrence, nonce, message)})
        return await self.handle.execute_update(update, vouched_message, **options)


async def occurrence_of(handle: WorkflowHandle) -> str:
    for _ in range(5):
        try:
            return (await state(handle)).occurrence
        except RPCError:  # a query that reaches a run as it continues as new may time out: ask again
            continue
    return (await state(handle)).occurrence


async def vouched_signal(handle: WorkflowHandle, **fields) -> ApprovalDecision:
    """An approval for the signal variant, vouched for under its own decision id."""
    decision = ApprovalDecision(decision_id=str(uuid.uuid4()), **fields)
    occurrence = await occurrence_of(handle)
    return decision.model_copy(update={"assertion": assertions.sign(occurrence, decision.decision_id, decision)})


async def approve(handle: WorkflowHandle, stage: str, approver: str, roles: list[str]):
    return await AsTheApi(handle).execute_update(IncidentWorkflow.approve, ApprovalDecision(stage=stage, approver=approver, roles=roles))


async def approve_four_eyes(handle: WorkflowHandle, stage: str) -> None:
    await until(handle, waiting_on(stage))
    await approve(handle, stage, "alice", ["oncall"])
    await approve(handle, stage, "sam", ["safety"])


def failed(stage: str):
    """A step of `stage` failed and the incident waits for a responder's retry, skip or abort."""
    return lambda s: s.status == IncidentStatus.awaiting_decision and s.stage(stage).status == "failed"
