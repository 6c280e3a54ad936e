"""Fail safe: a failed action keeps every protection in place and waits for a human."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import WorkflowUpdateFailedError

from stanch.models.decisions import FailureDecision
from stanch.models.incident import IncidentStatus
from tests.workflow.conftest import running_incident
from tests.workflow.helpers import (
    AsTheApi,
    approve,
    approve_four_eyes,
    state,
    until,
    waiting_on,
)
from tests.workflow.standins import Script
from workflows.incident import IncidentWorkflow


def failed(stage: str):
    return lambda s: s.status == IncidentStatus.awaiting_decision and s.stage(stage).status == "failed"


async def test_failed_rollback_keeps_containment_and_abort_leaves_it_in_place(client):
    script = Script(failing_kinds={"rollback_to_previous"})
    async with running_incident(client, script) as handle:
        await approve_four_eyes(handle, "contain")
        await approve_four_eyes(handle, "rollback")
        current = await until(handle, failed("rollback"))
        assert "rollback_to_previous failed" in current.stage("rollback").detail
        assert [a.stage for a in current.actions] == ["contain", "contain"]
        # The page goes out as the stage fails: on a loaded machine it may land just after.
        for _ in range(100):
            if any(n.kind == "action_failed" for n in script.notifications):
                break
            await asyncio.sleep(0.05)
        assert any(n.kind == "action_failed" for n in script.notifications)
        await AsTheApi(handle).execute_update(
            IncidentWorkflow.decide, FailureDecision(stage="rollback", by="alice", choice="abort", reason="manual")
        )
        final = await handle.result()
    assert final.status == IncidentStatus.aborted
    assert script.undone == [], "nothing is undone silently"
    assert all(a.undone_at is None for a in final.actions)
    assert final.stage("review").status == "done"


async def test_an_abort_while_reviewing_an_aborted_incident_ends_it_instead_of_wedging_it(client):
    """Rollback fails and is aborted; the review then fails too and is aborted: the incident ends,
    aborted, protections in place, and the timeline says the review is left to a person."""
    script = Script(failing_kinds={"rollback_to_previous"}, review_fails=True)
    async with running_incident(client, script) as handle:
        await approve_four_eyes(handle, "contain")
        await approve_four_eyes(handle, "rollback")
        await until(handle, failed("rollback"))
        abort = FailureDecision(stage="rollback", by="alice", choice="abort", reason="manual")
        await AsTheApi(handle).execute_update(IncidentWorkflow.decide, abort)
        await until(handle, failed("review"))
        abort_review = FailureDecision(stage="review", by="alice", choice="abort", reason="writing it by hand")
        await AsTheApi(handle).execute_update(IncidentWorkflow.decide, abort_review)
        final = await handle.result()
    assert final.status == IncidentStatus.aborted
    assert all(a.undone_at is None for a in final.actions) and len(final.actions) == 2
    assert any("review aborted: open it by hand" in entry.message for entry in final.timeline)


async def test_retry_after_failure_applies_the_action(client):
    script = Script(failures_left={"rollback_to_previous": 1})
    async with running_incident(client, script) as handle:
        await approve_four_eyes(handle, "contain")
        await approve_four_eyes(handle, "rollback")
        await until(handle, failed("rollback"))
        await AsTheApi(handle).execute_update(IncidentWorkflow.decide, FailureDecision(stage="rollback", by="alice", choice="retry"))
        current = await until(handle, waiting_on("restore"))
        assert current.stage("rollback").status == "done"
        assert [a.kind for a in current.actions if a.stage == "rollback"] == ["rollback_to_previous"]


async def test_failed_verification_cannot_be_skipped_and_retry_can_pass(client):
    script = Script(verify_passes=[False, True])
    async with running_incident(client, script) as handle:
        await approve_four_eyes(handle, "contain")
        await approve_four_eyes(handle, "rollback")
        await until(handle, failed("verify"))
        with pytest.raises(WorkflowUpdateFailedError) as refusal:
            await AsTheApi(handle).execute_update(IncidentWorkflow.decide, FailureDecision(stage="verify", by="alice", choice="skip"))
        assert "cannot be skipped" in str(refusal.value.cause)
        await AsTheApi(handle).execute_update(IncidentWorkflow.decide, FailureDecision(stage="verify", by="alice", choice="retry"))
        current = await until(handle, waiting_on("restore"))
        assert current.stage("verify").status == "done"
        await approve(handle, "restore", "alice", ["oncall"])
        assert (await handle.result()).status == IncidentStatus.closed


async def test_failed_undo_during_restore_keeps_that_protection(client):
    script = Script(failing_kinds={"undo:block_outputs"})
    async with running_incident(client, script) as handle:
        await approve_four_eyes(handle, "contain")
        await approve_four_eyes(handle, "rollback")
        await until(handle, waiting_on("restore"))
        await approve(handle, "restore", "alice", ["oncall"])
        await until(handle, failed("restore"))
        await AsTheApi(handle).execute_update(IncidentWorkflow.decide, FailureDecision(stage="restore", by="alice", choice="skip"))
        final = await handle.result()
    still_in_place = [a.kind for a in final.actions if a.undone_at is None and a.stage != "hotfix"]
    assert still_in_place == ["block_outputs"]
    assert any("block_outputs stays in place" in e.message for e in final.timeline)


async def test_a_forged_abort_straight_to_temporal_is_refused_and_changes_nothing(client):
    script = Script(failures_left={"rollback_to_previous": 1})
    async with running_incident(client, script) as handle:
        await approve_four_eyes(handle, "contain")
        await approve_four_eyes(handle, "rollback")
        await until(handle, failed("rollback"))
        with pytest.raises(WorkflowUpdateFailedError) as forged:
            await handle.execute_update(IncidentWorkflow.decide, FailureDecision(stage="rollback", by="mallory", choice="abort"))
        assert "abort after failure in rollback refused: it carries no assertion from the Stanch API" in str(forged.value.cause)
        current = await state(handle)
        assert current.status == IncidentStatus.awaiting_decision, "the forged abort changed nothing"
        await AsTheApi(handle).execute_update(IncidentWorkflow.decide, FailureDecision(stage="rollback", by="alice", choice="retry"))
        current = await until(handle, waiting_on("restore"))
        assert current.status != IncidentStatus.aborted


async def test_a_running_fine_tune_can_be_aborted_its_activity_cancelled_and_protections_kept(client):
    script = Script(long_running_kinds={"deploy_finetune"})
    async with running_incident(client, script) as handle:
        await approve_four_eyes(handle, "contain")
        await approve_four_eyes(handle, "rollback")
        await until(handle, lambda s: s.stage("hotfix").status == "running")
        with pytest.raises(WorkflowUpdateFailedError):  # only an abort, and only of the step that runs
            await AsTheApi(handle).execute_update(
                IncidentWorkflow.decide, FailureDecision(stage="hotfix", by="alice", choice="retry", reason="again")
            )
        abort = FailureDecision(stage="hotfix", by="alice", choice="abort", reason="the training data is wrong")
        await AsTheApi(handle).execute_update(IncidentWorkflow.decide, abort)
        final = await handle.result()
    assert script.cancelled == ["deploy_finetune"], "the fine-tune's activity was cancelled (it cancels the trainer's job)"
    assert final.status == IncidentStatus.aborted
    assert final.stage("hotfix").status == "skipped" and "aborted by alice" in final.stage("hotfix").detail
    assert script.undone == [] and all(a.undone_at is None for a in final.actions), "protections stay"
