"""Gated steps: four eyes, roles, rejection, timeouts and the signal variant."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError

from stanch.models.decisions import ApprovalDecision, ResolveRequest, SeverityChange
from stanch.models.incident import IncidentStatus
from stanch.models.signals import Severity
from tests.workflow.conftest import running_incident
from tests.workflow.helpers import (
    AsTheApi,
    approve,
    approve_four_eyes,
    stage_status,
    state,
    until,
    vouched_signal,
    waiting_on,
)
from tests.workflow.standins import Script
from workflows.incident import IncidentWorkflow


async def refused(handle, update, decision) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as failure:
        await AsTheApi(handle).execute_update(update, decision)
    return str(failure.value.cause)


async def test_four_eyes_refusals_each_say_why(client):
    async with running_incident(client, Script()) as handle:
        await until(handle, waiting_on("contain"))
        assert "'rollback' is not waiting" in await refused(
            handle, IncidentWorkflow.approve, ApprovalDecision(stage="rollback", approver="alice", roles=["oncall"])
        )
        assert "needs one of the roles" in await refused(
            handle, IncidentWorkflow.approve, ApprovalDecision(stage="contain", approver="eve", roles=["viewer"])
        )
        await approve(handle, "contain", "alice", ["oncall"])
        assert "already decided" in await refused(
            handle, IncidentWorkflow.approve, ApprovalDecision(stage="contain", approver="alice", roles=["oncall", "safety"])
        )
        assert "needs a comment" in await refused(
            handle, IncidentWorkflow.reject, ApprovalDecision(approve=False, stage="contain", approver="sam", roles=["safety"])
        )
        current = await state(handle)
        assert len(current.approvals) == 1 and current.pending_approval is not None


async def test_requester_cannot_approve_their_own_restore(client):
    async with running_incident(client, Script()) as handle:
        await until(handle, waiting_on("contain"))
        await approve_four_eyes(handle, "contain")
        await until(handle, waiting_on("rollback"))
        await AsTheApi(handle).execute_update(IncidentWorkflow.resolve, ResolveRequest(by="carol", reason="upstream fixed it"))
        await until(handle, waiting_on("restore"))
        assert "cannot approve it (four eyes)" in await refused(
            handle, IncidentWorkflow.approve, ApprovalDecision(stage="restore", approver="carol", roles=["incident-commander"])
        )
        await approve(handle, "restore", "alice", ["oncall"])
        final = await handle.result()
    stages = stage_status(final)
    assert stages["rollback"] == "skipped" and "while awaiting approval" in final.stage("rollback").detail
    assert stages["hotfix"] == "skipped" and stages["restore"] == "done"
    assert final.status == IncidentStatus.closed


async def test_rejected_containment_applies_nothing_and_moves_on(client):
    script = Script()
    async with running_incident(client, script) as handle:
        await until(handle, waiting_on("contain"))
        await AsTheApi(handle).execute_update(
            IncidentWorkflow.reject,
            ApprovalDecision(approve=False, stage="contain", approver="sam", roles=["safety"], comment="blocks too much"),
        )
        current = await until(handle, waiting_on("rollback"))
    assert current.stage("contain").status == "rejected"
    assert "sam: blocks too much" in current.stage("contain").detail
    assert not any("/contain/" in key for key in script.applied)


async def test_approval_timeout_escalates_and_keeps_waiting(clock):
    script = Script()
    async with running_incident(clock.client, script) as handle:
        await until(handle, waiting_on("contain"))
        await clock.sleep(timedelta(minutes=31))
        current = await until(handle, lambda s: any("approval of contain overdue" in n.message for n in script.notifications))
        assert current.pending_approval.stage == "contain" and script.applied == []


async def test_signal_approval_follows_the_same_rules_and_refusals_are_recorded(client):
    async with running_incident(client, Script()) as handle:
        await until(handle, waiting_on("contain"))
        await handle.signal(IncidentWorkflow.approve_signal, await vouched_signal(handle, stage="contain", approver="mallory", roles=[]))
        current = await until(handle, lambda s: any("refused signal" in e.message for e in s.timeline))
        assert current.approvals == []
        await handle.signal(
            IncidentWorkflow.approve_signal, await vouched_signal(handle, stage="contain", approver="alice", roles=["oncall"])
        )
        current = await until(handle, lambda s: len(s.approvals) == 1)
        assert current.approvals[0].via == "signal" and current.approvals[0].verified


async def test_forged_decisions_are_refused_before_history_and_never_count(client):
    """Straight to Temporal, without the API's assertion: a wrong one, none at all, or one made
    with the legacy HMAC key the worker still holds (whoever held it could forge approvals)."""
    import hashlib
    import hmac

    from stanch.trust import assertions
    from tests.workflow.helpers import occurrence_of

    async with running_incident(client, Script()) as handle:
        await until(handle, waiting_on("contain"))
        forged = (await vouched_signal(handle, stage="contain", approver="mallory", roles=["safety"])).model_copy(
            update={"approver": "sam"}
        )
        with pytest.raises(WorkflowUpdateFailedError) as update_refused:
            await handle.execute_update(IncidentWorkflow.approve, forged, id="forged-1")
        reason = str(update_refused.value.cause)
        assert "approval refused: its assertion does not verify" in reason and "decide through the Stanch API" in reason, reason
        unsigned = ApprovalDecision(stage="contain", approver="sam", roles=["safety"])
        with pytest.raises(WorkflowUpdateFailedError) as no_assertion:
            await handle.execute_update(IncidentWorkflow.approve, unsigned, id="forged-2")
        assert "carries no assertion from the Stanch API" in str(no_assertion.value.cause)
        # The legacy HMAC key verifies old histories only: it vouches for no new decision.
        message = assertions._message(await occurrence_of(handle), "forged-3", unsigned)
        legacy_key = assertions.held().legacy["test"]
        hmac_signed = unsigned.model_copy(update={"assertion": "test:" + hmac.new(legacy_key, message, hashlib.sha256).hexdigest()})
        with pytest.raises(WorkflowUpdateFailedError) as legacy:
            await handle.execute_update(IncidentWorkflow.approve, hmac_signed, id="forged-3")
        assert "HMAC assertion, which no longer vouches" in str(legacy.value.cause)

        await handle.signal(IncidentWorkflow.approve_signal, ApprovalDecision(stage="contain", approver="bob", roles=["oncall"]))
        await handle.signal(IncidentWorkflow.approve_signal, forged.model_copy(update={"approver": "carol"}))
        current = await until(handle, lambda s: sum("refused signal from" in e.message for e in s.timeline) == 2)
        refusals = [e.message for e in current.timeline if "refused signal from" in e.message]
        assert "refused signal from bob: it carries no assertion from the Stanch API; decide through the Stanch API" in refusals[0]
        assert "refused signal from carol: its assertion does not verify" in refusals[1]
        assert current.approvals == [], "a refused decision is not even recorded as a vote"
        assert current.pending_approval.approvers == [] and current.stage("contain").status == "awaiting_approval"
        await approve(handle, "contain", "sam", ["safety"])  # the real sam may still decide
        assert (await state(handle)).pending_approval.approvers == ["sam"]


async def test_lowering_severity_needs_safety_or_commander_and_a_reason(client):
    async with running_incident(client, Script()) as handle:
        await until(handle, waiting_on("contain"))
        assert "needs a reason" in await refused(
            handle, IncidentWorkflow.set_severity, SeverityChange(severity=Severity.low, by="alice", roles=["safety"], reason=" ")
        )
        assert "lowering severity needs one of the roles" in await refused(
            handle, IncidentWorkflow.set_severity, SeverityChange(severity=Severity.low, by="alice", roles=["oncall"], reason="minor")
        )
        await AsTheApi(handle).execute_update(
            IncidentWorkflow.set_severity, SeverityChange(severity=Severity.medium, by="sam", roles=["safety"], reason="internal only")
        )
        current = await state(handle)
        assert current.severity == Severity.medium
        assert "set by sam: internal only" in current.severity_reasons[0]


async def test_lowering_severity_never_shrinks_a_pending_approval(client):
    """Rollback waits at high for two approvers with a safety lead; lowering the incident to
    medium (one approver) must not let a single approval through: the rule it was gated with holds."""
    async with running_incident(client, Script()) as handle:
        await approve_four_eyes(handle, "contain")
        await until(handle, waiting_on("rollback"))
        lower = SeverityChange(severity=Severity.medium, by="carol", roles=["incident-commander"], reason="fewer users than feared")
        await AsTheApi(handle).execute_update(IncidentWorkflow.set_severity, lower)
        await approve(handle, "rollback", "alice", ["oncall"])
        current = await state(handle)
        assert current.severity == Severity.medium
        assert current.pending_approval is not None and current.pending_approval.stage == "rollback"
        assert current.pending_approval.count == 2 and current.pending_approval.required_roles == ["safety"]
        assert any("keeps the approval rule of high" in entry.message for entry in current.timeline)
        await approve(handle, "rollback", "sam", ["safety"])
        assert (await until(handle, lambda s: s.stage("rollback").status == "done")).stage("rollback").status == "done"


async def test_whoever_lowered_severity_while_a_step_waits_cannot_approve_it(client):
    """Lowering severity is no way past four eyes: like the requester, the one who lowered it
    cannot be an approver of the step that was waiting."""
    async with running_incident(client, Script()) as handle:
        await approve_four_eyes(handle, "contain")
        await until(handle, waiting_on("rollback"))
        lower = SeverityChange(severity=Severity.medium, by="sam", roles=["safety"], reason="fewer users than feared")
        await AsTheApi(handle).execute_update(IncidentWorkflow.set_severity, lower)
        await approve(handle, "rollback", "alice", ["oncall"])
        refusal = await refused(handle, IncidentWorkflow.approve, ApprovalDecision(stage="rollback", approver="Sam", roles=["safety"]))
        assert "Sam lowered severity while 'rollback' waited and cannot approve it (four eyes)" in refusal
        await approve(handle, "rollback", "sandra", ["safety"])
        assert (await until(handle, lambda s: s.stage("rollback").status == "done")).stage("rollback").status == "done"


async def test_closed_incident_refuses_decisions(client):
    async with running_incident(client, Script(confirm="not_confirmed")) as handle:
        await handle.result()
        with pytest.raises((WorkflowUpdateFailedError, RPCError)):
            await AsTheApi(handle).execute_update(
                IncidentWorkflow.approve, ApprovalDecision(stage="contain", approver="a", roles=["oncall"])
            )


async def test_a_responders_lower_severity_stands_until_new_signals_arrive(client):
    from tests.workflow.conftest import alert
    from tests.workflow.helpers import until

    async with running_incident(client, Script()) as handle:
        await until(handle, waiting_on("contain"))
        await AsTheApi(handle).execute_update(
            IncidentWorkflow.set_severity, SeverityChange(severity=Severity.medium, by="sam", roles=["safety"], reason="internal only")
        )
        await until(handle, lambda s: any("severity" in e.message and "regrad" not in e.message for e in s.timeline[-3:]))
        for _ in range(5):
            assert (await state(handle)).severity == Severity.medium
        await handle.signal(IncidentWorkflow.add_signal, alert("sig-new"))
        await until(handle, lambda s: s.severity == Severity.high)


async def test_critical_containment_goes_ahead_when_nobody_decides_in_time(clock):
    from datetime import timedelta

    from tests.workflow.conftest import alert

    script = Script()
    first = alert(labels={"alertname": "HarmfulOutput", "model": "support-bot", "severity": "critical"})
    async with running_incident(clock.client, script, first=first) as handle:
        await until(handle, waiting_on("contain"))
        assert script.applied == []
        await clock.sleep(timedelta(minutes=31))
        current = await until(handle, waiting_on("rollback"))  # rollback never goes ahead unattended
        assert current.stage("contain").status == "done" and "automatic, as the runbook says" in " ".join(
            e.message for e in current.timeline
        )
        assert [key.split("/")[-3] for key in script.applied] == ["contain", "contain"]
        await clock.sleep(timedelta(minutes=31))
        assert (await state(handle)).pending_approval.stage == "rollback"


async def test_notes_from_the_api_reach_the_timeline_and_forged_ones_are_refused(client):
    from stanch.models.decisions import Note

    async with running_incident(client, Script()) as handle:
        await until(handle, waiting_on("contain"))
        await AsTheApi(handle).execute_update(IncidentWorkflow.add_note, Note(by="alice", text="paged the vendor"))
        with pytest.raises(WorkflowUpdateFailedError) as forged:
            await handle.execute_update(IncidentWorkflow.add_note, Note(by="mallory", text="all clear"))
        current = await state(handle)
    assert "note refused: it carries no assertion from the Stanch API" in str(forged.value.cause)
    notes = [(e.actor, e.message) for e in current.timeline if e.kind == "note"]
    assert notes == [("alice", "paged the vendor")]
    assert not any("mallory" in e.message for e in current.timeline), "refused before it reached history"


async def test_a_vouched_decision_copied_under_another_update_id_is_refused(client):
    from stanch.trust import assertions
    from tests.workflow.helpers import occurrence_of

    async with running_incident(client, Script()) as handle:
        await until(handle, waiting_on("contain"))
        request = ResolveRequest(by="carol", reason="copied from an old history")
        signed = request.model_copy(update={"assertion": assertions.sign(await occurrence_of(handle), "update-1", request)})
        with pytest.raises(WorkflowUpdateFailedError) as copied:
            await handle.execute_update(IncidentWorkflow.resolve, signed, id="update-2")
        assert "resolve request refused: its assertion does not verify" in str(copied.value.cause)
        assert (await state(handle)).pending_approval.stage == "contain"
        other_occurrence = request.model_copy(update={"assertion": assertions.sign("someone-else@00000000", "update-3", request)})
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(IncidentWorkflow.resolve, other_occurrence, id="update-3")
        assert (await state(handle)).pending_approval.stage == "contain"
