"""Autonomy by reversibility: under `reversible: auto` a stage's reversible steps go ahead at once,
the rest waits for four eyes, and the timeline and each applied action say which path it took."""

from __future__ import annotations

import pytest

from stanch.models.actions import ActionSpec
from stanch.models.decisions import ApprovalDecision, FailureDecision
from stanch.models.signals import Severity
from stanch.runbooks.schema import StageGate
from tests.workflow.conftest import incident_input, running_incident
from tests.workflow.helpers import AsTheApi, approve_four_eyes, failed, stage_status, until, waiting_on
from tests.workflow.standins import Script
from workflows.incident import IncidentWorkflow

BLOCK = ActionSpec(kind="block_outputs", params={"detectors": ["secret"]})
SWITCH_OFF = ActionSpec(kind="disable_version", params={"version": "{version}"})
FOUR_EYES_REVERSIBLE_AT_ONCE = StageGate.model_validate(
    {"approve": {"count": 2, "roles": ["oncall", "safety"], "required_roles": ["safety"]}, "reversible": "auto"}
)


def contained_by(*steps: ActionSpec):
    """The frozen harmful-output runbook (it grades high), containing with `steps` under the policy."""
    input = incident_input(containment=list(steps))
    high = input.runbook.policy[Severity.high]
    policy = {
        **input.runbook.policy,
        Severity.high: high.model_copy(update={"stages": {**high.stages, "contain": FOUR_EYES_REVERSIBLE_AT_ONCE}}),
    }
    return input.model_copy(update={"runbook": input.runbook.model_copy(update={"policy": policy})})


def actions_said(current) -> list[str]:
    return [entry.message for entry in current.timeline if entry.kind == "action"]


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "every-task-replayed"])
async def test_a_reversible_step_applies_at_once_and_the_irreversible_one_waits_for_four_eyes(client, cached):
    script = Script()
    replay = {} if cached else {"max_cached_workflows": 0}  # every workflow task replays the history: deterministic
    async with running_incident(client, script, input=contained_by(SWITCH_OFF, BLOCK), **replay) as handle:
        waiting = await until(handle, waiting_on("contain"))
        assert [key.split("/")[1:3] for key in script.applied] == [["contain", "1"]], "only the block went ahead"
        assert "contain: applied block_outputs at once: reversible (policy)" in actions_said(waiting)
        assert waiting.pending_approval and waiting.pending_approval.count == 2

        await approve_four_eyes(handle, "contain")
        after = await until(handle, waiting_on("rollback"))
        assert [key.split("/")[1:3] for key in script.applied] == [["contain", "1"], ["contain", "0"]]
        assert "contain: applied disable_version after approval by alice, sam" in actions_said(after)
        paths = {a.kind: a.went_ahead for a in after.actions if a.stage == "contain"}
        assert paths == {"block_outputs": "at once: reversible (policy)", "disable_version": "after approval by alice, sam"}
        assert stage_status(after)["contain"] == "done"


async def test_a_stage_of_only_reversible_steps_asks_nobody(client):
    script = Script()
    async with running_incident(client, script, input=contained_by(BLOCK)) as handle:
        after = await until(handle, waiting_on("rollback"))
        assert not any(a.stage == "contain" for a in after.approvals), "nobody was asked"
        assert stage_status(after)["contain"] == "done"
        assert [a.went_ahead for a in after.actions if a.stage == "contain"] == ["at once: reversible (policy)"]


async def test_a_rejection_leaves_the_reversible_step_in_place_for_restore(client):
    script = Script()
    async with running_incident(client, script, input=contained_by(BLOCK, SWITCH_OFF)) as handle:
        await until(handle, waiting_on("contain"))
        no = ApprovalDecision(approve=False, stage="contain", approver="sam", roles=["safety"], comment="switching off is too much")
        await AsTheApi(handle).execute_update(IncidentWorkflow.reject, no)
        after = await until(handle, lambda s: s.stage("contain").status == "rejected")
        assert [a.kind for a in after.actions if a.stage == "contain"] == ["block_outputs"], "the block stays; nothing else applied"
        assert [key.split("/")[1:3] for key in script.applied] == [["contain", "0"]]
        assert [a.kind for a in after.actions if a.undone_at is None] == ["block_outputs"]


async def test_a_failed_reversible_step_retried_by_a_responder_does_not_open_the_gate(client):
    script = Script(failures_left={"block_outputs": 1})
    async with running_incident(client, script, input=contained_by(BLOCK, SWITCH_OFF), max_cached_workflows=0) as handle:
        await until(handle, failed("contain"))
        await AsTheApi(handle).execute_update(IncidentWorkflow.decide, FailureDecision(stage="contain", by="alice", choice="retry"))
        waiting = await until(handle, waiting_on("contain"))
        assert [key.split("/")[1:3] for key in script.applied] == [["contain", "0"]], "the switch-off still waits for four eyes"
        assert stage_status(waiting)["contain"] == "awaiting_approval"
