"""Bisection in the lifecycle: a confirmed incident on the gateway names the bad change (state and
timeline), its rollback step gets the last good change's version, and a bisection that cannot
run is noted while the response goes on."""

from __future__ import annotations

import asyncio

from temporalio import activity

from stanch.models.actions import ActionSpec
from stanch.models.bisection import BisectInput, Cause, ChangeVerdict
from stanch.models.decisions import ResolveRequest
from stanch.models.incident import IncidentStatus, StageStatus
from tests.workflow import conftest
from tests.workflow.conftest import incident_input, running_incident
from tests.workflow.helpers import AsTheApi, approve, stage_status, until, waiting_on
from tests.workflow.standins import Script, stand_ins
from workflows.incident import IncidentWorkflow

ROLLBACK_TO_LAST_GOOD = ActionSpec(
    kind="rollback_to_previous", params={"bad_version": "{version}", "target_version": "{last_good_version}"}
)
NAMED = Cause(
    ran=True,
    considered=[
        ChangeVerdict(sequence=1, release_version="1", verdict="good"),
        ChangeVerdict(sequence=2, release_version="2", verdict="bad", reason="2/2 samples harmful"),
        ChangeVerdict(sequence=3, release_version="2", verdict="bad", reason="2/2 samples harmful"),
    ],
    first_bad=2,
    last_good=1,
    last_good_version="1",
)


async def test_the_bad_change_is_named_and_the_rollback_gets_the_last_good_version(client):
    script = Script(detectors=[], cause=NAMED)
    async with running_incident(client, script, incident_input(rollback=[ROLLBACK_TO_LAST_GOOD])) as handle:
        await until(handle, waiting_on("rollback"))
        await approve(handle, "rollback", "alice", ["oncall"])
        final = await handle.result()
    assert final.status == IncidentStatus.closed
    assert final.cause is not None and (final.cause.first_bad, final.cause.last_good) == (2, 1)
    [asked] = script.bisect_inputs
    assert asked.window_end == final.opened_at and asked.repro, "the window ends at the first signal; the repro cases go along"
    [rollback] = [i for i in script.apply_inputs if i.stage == "rollback"]
    assert rollback.last_good_version == "1"
    assert any(e.kind == "bisect" and "first bad change is change #2" in e.message for e in final.timeline)
    assert script.reviews and script.reviews[-1].cause == final.cause, "the review (postmortem, Art. 73 draft) gets the cause"


async def test_a_bisection_that_cannot_run_is_noted_and_the_response_goes_on(client):
    script = Script(detectors=[], bisect_fails=True)
    async with running_incident(client, script, incident_input(rollback=[ROLLBACK_TO_LAST_GOOD])) as handle:
        await until(handle, waiting_on("rollback"))
        await approve(handle, "rollback", "alice", ["oncall"])
        final = await handle.result()
    assert final.status == IncidentStatus.closed and stage_status(final)["contain"] == "done"
    assert final.cause is not None and final.cause.first_bad is None and "could not run" in final.cause.note
    [rollback] = [i for i in script.apply_inputs if i.stage == "rollback"]
    assert rollback.last_good_version == "", "no cause: the rollback goes back as before"


async def test_resolving_the_incident_ends_the_rollbacks_wait_for_a_bisection_still_running(client, monkeypatch):
    """A slow bisection holds the rollback back (its last good change is what the rollback pins);
    a responder resolving the incident need not wait for it: the rollback is skipped at once."""
    held = asyncio.Event()

    def bisection_held(script: Script) -> list:
        @activity.defn(name="bisect_changes")
        async def bisect_changes(input: BisectInput) -> Cause:
            script.bisect_inputs.append(input)
            while not held.is_set():
                activity.heartbeat()
                await asyncio.sleep(0.05)
            return NAMED

        return [a for a in stand_ins(script) if a.__name__ != "bisect_changes"] + [bisect_changes]

    monkeypatch.setattr(conftest, "stand_ins", bisection_held)
    script = Script(detectors=[])
    try:
        async with running_incident(client, script, incident_input(rollback=[ROLLBACK_TO_LAST_GOOD])) as handle:
            await until(handle, lambda s: s.stage("contain").status == StageStatus.done and bool(script.bisect_inputs))
            await AsTheApi(handle).execute_update(IncidentWorkflow.resolve, ResolveRequest(by="carol", reason="upstream fixed it"))
            resolved = await until(handle, lambda s: s.stage("rollback").status == StageStatus.skipped)
            assert "resolved by carol" in resolved.stage("rollback").detail and resolved.cause is None, "bisection still runs"
            assert not [i for i in script.apply_inputs if i.stage == "rollback"]
            held.set()
            named = await until(handle, lambda s: s.cause is not None)
            assert named.cause is not None and named.cause.first_bad == 2, "bisection went on and noted the cause"
    finally:
        held.set()
