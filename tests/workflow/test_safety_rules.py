"""Rules that keep protections in place: restore needs a human unless a verified fix came first,
identities are compared as people, and aborting does not end the duty to report."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError

from stanch.models.decisions import ApprovalDecision, FailureDecision, ResolveRequest
from stanch.models.incident import IncidentStatus
from tests.workflow.conftest import alert, incident_input, running_incident
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


async def test_resolve_at_medium_still_needs_someone_else_to_approve_restore(client):
    script = Script(detectors=[])  # medium: restore is `auto` in the policy
    async with running_incident(client, script) as handle:
        await until(handle, waiting_on("rollback"))
        await AsTheApi(handle).execute_update(IncidentWorkflow.resolve, ResolveRequest(by="mallory", reason="looks fine"))
        current = await until(handle, waiting_on("restore"))
        assert current.pending_approval.requested_by == "mallory" and script.undone == []
        with pytest.raises(WorkflowUpdateFailedError):
            await approve(handle, "restore", "mallory", ["oncall"])
        await approve(handle, "restore", "alice", ["oncall"])
        final = await handle.result()
    assert final.status == IncidentStatus.closed and len(script.undone) == 2


async def test_rejected_hotfix_means_restore_waits_for_a_human(client):
    script = Script(detectors=[])
    input = incident_input()
    medium = input.runbook.policy["medium"].model_copy(deep=True)
    medium.stages["hotfix"] = medium.stages["rollback"]  # hotfix gated, so it can be rejected
    input.runbook.policy["medium"] = medium
    async with running_incident(client, script, input) as handle:
        await until(handle, waiting_on("rollback"))
        await approve(handle, "rollback", "alice", ["oncall"])
        await until(handle, waiting_on("hotfix"))
        await AsTheApi(handle).execute_update(
            IncidentWorkflow.reject,
            ApprovalDecision(approve=False, stage="hotfix", approver="sam", roles=["safety"], comment="fine-tune too risky"),
        )
        current = await until(handle, waiting_on("restore"))
    assert current.stage("verify").status == "skipped"
    assert script.undone == [], "no verified fix: nothing is undone without a human"
    assert any("restore needs an approval: no verified fix" in e.message for e in current.timeline)


async def test_the_same_person_spelled_differently_counts_once(client):
    async with running_incident(client, Script()) as handle:
        await until(handle, waiting_on("contain"))
        await approve(handle, "contain", "sam", ["safety"])
        with pytest.raises(WorkflowUpdateFailedError) as refusal:
            await approve(handle, "contain", " Sam ", ["oncall"])
        assert "already decided" in str(refusal.value.cause)
        assert (await state(handle)).pending_approval.approvers == ["sam"]


async def test_acting_on_an_incident_acknowledges_it(client):
    async with running_incident(client, Script()) as handle:
        await until(handle, waiting_on("contain"))
        await approve(handle, "contain", "alice", ["oncall"])
        current = await state(handle)
    assert current.acknowledged_by == "alice"


async def test_aborted_serious_incident_still_waits_for_its_report(clock):
    script = Script(failing_kinds={"rollback_to_previous"})
    labels = {"alertname": "HarmfulOutput", "model": "support-bot", "severity": "critical", "harm": "health-injury"}
    async with running_incident(clock.client, script, first=alert(labels=labels)) as handle:
        await approve_four_eyes(handle, "contain")
        await approve_four_eyes(handle, "rollback")
        await until(handle, lambda s: s.status == IncidentStatus.awaiting_decision)
        await AsTheApi(handle).execute_update(IncidentWorkflow.decide, FailureDecision(stage="rollback", by="alice", choice="abort"))
        current = await until(handle, lambda s: s.status == IncidentStatus.awaiting_report)
        assert current.regulatory.deadline - current.regulatory.aware_at == timedelta(days=15)
        await handle.signal(IncidentWorkflow.add_signal, alert("sig-death", labels={**labels, "harm": "death"}))
        current = await until(handle, lambda s: s.regulatory.deadline - s.regulatory.aware_at == timedelta(days=10))
        assert any("brought forward" in e.message for e in current.timeline)
