"""Shadow-verified restore: protections are lifted only after the fix held on mirrored live
traffic; otherwise everything stays in place and a human is asked, naming the failing samples."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.worker import Worker

from stanch.models.decisions import FailureDecision
from stanch.models.incident import IncidentStatus
from stanch.models.shadow import FailingSample, ShadowInput, ShadowResult
from stanch.runbooks.schema import RestoreSettings, Shadow
from tests.workflow.conftest import alert, incident_input
from tests.workflow.helpers import AsTheApi, approve, approve_four_eyes, failed, until, waiting_on
from tests.workflow.standins import Script, stand_ins
from workflows.incident import IncidentWorkflow

SHADOW = Shadow(clean_requests=3, sample_rate=0.5, timeout="10m")


@asynccontextmanager
async def incident_with_shadows(
    client: Client, script: Script, verdicts: list[bool], asked: list[ShadowInput]
) -> AsyncIterator[WorkflowHandle]:
    """The harmful-output incident with `restore.shadow` set; each shadow round passes or fails as `verdicts` say."""

    @activity.defn(name="verify_on_shadow")
    async def verify_on_shadow(input: ShadowInput) -> ShadowResult:
        asked.append(input)
        shadow_id = f"sh-{len(asked)}"
        if verdicts.pop(0):
            return ShadowResult(passed=True, shadow_id=shadow_id, clean=3, needed=3, mirrored=4)
        failing = [FailingSample(id=f"{shadow_id}-3", detectors=["secrets"])]
        read_at = f"GET http://gateway/admin/shadows/{shadow_id}?ids={shadow_id}-3"
        return ShadowResult(passed=False, shadow_id=shadow_id, clean=2, needed=3, mirrored=3, failing=failing, read_at=read_at)

    input = incident_input(restore=RestoreSettings(shadow=SHADOW))
    task_queue = f"tq-{uuid.uuid4()}"
    # This test's own shadow stand-in, in place of the shared one: it records every round's input.
    shared = [standin for standin in stand_ins(script) if standin.__name__ != "verify_on_shadow"]
    async with Worker(client, task_queue=task_queue, workflows=[IncidentWorkflow], activities=[*shared, verify_on_shadow]):
        handle = await client.start_workflow(
            IncidentWorkflow.run, input, id=input.incident_id, task_queue=task_queue, start_signal="add_signal", start_signal_args=[alert()]
        )
        try:
            yield handle
        finally:
            if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await handle.terminate("test finished")


async def to_restore(handle: WorkflowHandle) -> None:
    await approve_four_eyes(handle, "contain")
    await approve_four_eyes(handle, "rollback")
    await until(handle, waiting_on("restore"))
    await approve(handle, "restore", "alice", ["oncall"])


async def test_a_fix_that_leaks_on_mirrored_traffic_keeps_every_protection_and_retry_then_pass_restores(client: Client) -> None:
    script, asked = Script(), list[ShadowInput]()
    async with incident_with_shadows(client, script, [False, True], asked) as handle:
        await to_restore(handle)
        current = await until(handle, failed("restore"))
        assert script.undone == [] and all(a.undone_at is None for a in current.actions), "nothing lifted"
        assert current.status == IncidentStatus.awaiting_decision
        page = next(n for n in script.notifications if n.kind == "action_failed")
        assert "2 of 3 clean" in page.message and "sh-1-3 (secrets)" in page.message and "/admin/shadows/sh-1?ids=sh-1-3" in page.message

        await AsTheApi(handle).execute_update(IncidentWorkflow.decide, FailureDecision(stage="restore", by="alice", choice="retry"))
        final = await handle.result()
    assert final.status == IncidentStatus.closed and final.stage("restore").status == "done"
    assert len(script.undone) == len(final.actions) - len([a for a in final.actions if a.stage == "hotfix"])
    # Each round opens its own shadow, on the verified version, scored by the verify detectors.
    assert [i.idempotency_key.split("/")[2] for i in asked] == ["1", "2"] and asked[0].idempotency_key != asked[1].idempotency_key
    assert asked[0].clean_requests == 3 and asked[0].sample_rate == 0.5 and asked[0].limit == 12 and asked[0].timeout_seconds == 600
    assert asked[0].version == script.verified_versions[-1] and asked[0].detectors  # the version verification passed on
    notes = [entry for entry in final.timeline if entry.kind == "restore" and "shadow sh-1" in entry.message]
    assert notes and notes[0].data["samples"] == [{"id": "sh-1-3", "detectors": ["secrets"]}]


async def test_skipping_a_failed_shadow_is_a_recorded_choice_and_restore_goes_ahead(client: Client) -> None:
    script, asked = Script(), list[ShadowInput]()
    async with incident_with_shadows(client, script, [False], asked) as handle:
        await to_restore(handle)
        await until(handle, failed("restore"))
        await AsTheApi(handle).execute_update(IncidentWorkflow.decide, FailureDecision(stage="restore", by="alice", choice="skip"))
        final = await handle.result()
    assert final.status == IncidentStatus.closed and script.undone
    assert any(e.actor == "alice" and "shadow verification skipped by alice" in e.message for e in final.timeline)
    assert len(asked) == 1
