"""Harm reported again after containment was lifted is never absorbed: on-call is paged at once,
what is still in place stays, and the incident id goes on as a new occurrence that contains
again — carrying the protections still in place and a report still owed."""

from __future__ import annotations

from temporalio.client import WorkflowHandle

from stanch.models.decisions import FailureDecision, ReportFiled
from stanch.models.incident import IncidentState, IncidentStatus
from tests.workflow.conftest import alert, running_incident
from tests.workflow.helpers import AsTheApi, approve, approve_four_eyes, failed, state, until, waiting_on
from tests.workflow.standins import Script
from tests.workflow.test_clocks import SERIOUS, to_awaiting_report
from workflows.incident import IncidentWorkflow


async def harm_back_while_an_undo_fails(incident: WorkflowHandle, script: Script) -> tuple[IncidentState, list[str]]:
    """Contained, rolled back, restoring: an undo failed and waits for a decision when harm is
    back. The state then, and what had been undone before harm came back."""
    await approve_four_eyes(incident, "contain")
    await approve_four_eyes(incident, "rollback")
    await until(incident, waiting_on("restore"))
    await approve(incident, "restore", "alice", ["oncall"])
    stuck = await until(incident, failed("restore"))
    undone_before = list(script.undone)
    await incident.signal(IncidentWorkflow.add_signal, alert("sig-again", title="the leak is back"))
    await until(incident, lambda s: any(e.data.get("recurrence") for e in s.timeline))
    return stuck, undone_before


def pages_for_recurrence(script: Script) -> list[str]:
    return [n.message for n in script.notifications if n.kind == "page" and "harm reported again" in n.message]


async def test_harm_back_while_the_report_is_awaited_opens_a_new_occurrence_that_owes_the_report(client):
    script = Script()
    labels = {**SERIOUS, "harm": "health-injury"}
    async with running_incident(client, script, first=alert(labels=labels)) as first_run:
        incident = client.get_workflow_handle(first_run.id)
        await to_awaiting_report(incident)
        before = await state(incident)
        contained_before = [key for key in script.applied if "/contain/" in key]

        await incident.signal(IncidentWorkflow.add_signal, alert("sig-again", labels=labels, title="the leak is back"))
        after = await until(incident, lambda s: s.occurrence != before.occurrence and s.stage("contain").status == "awaiting_approval")

        assert after.previous_occurrences == [before.occurrence]
        assert [s.signal_id for s in after.signals] == ["sig-again"]
        assert after.regulatory.serious and after.regulatory.deadline == before.regulatory.deadline, "the report still owed goes on"
        assert pages_for_recurrence(script), "on-call hears at once"
        await approve_four_eyes(incident, "contain")
        await until(incident, lambda s: s.stage("contain").status == "done")
        contained_again = [key for key in script.applied if "/contain/" in key and key not in contained_before]
        assert contained_again and all(after.occurrence in key for key in contained_again), "contained again, under its own keys"

        await AsTheApi(incident).execute_update(IncidentWorkflow.record_report_filed, ReportFiled(by="sam", reference="EU-2026-0099"))
        filed = await state(incident)
    assert filed.regulatory.filed is not None and filed.regulatory.filed.reference == "EU-2026-0099"


async def test_harm_back_while_restoring_keeps_what_is_still_in_place_for_the_next_occurrence(client):
    script = Script(failing_kinds={"undo:block_outputs"})
    async with running_incident(client, script) as first_run:
        incident = client.get_workflow_handle(first_run.id)
        stuck, undone_before = await harm_back_while_an_undo_fails(incident, script)
        assert pages_for_recurrence(script), "on-call is paged while the failed undo still waits for a decision"
        await AsTheApi(incident).execute_update(IncidentWorkflow.decide, FailureDecision(stage="restore", by="alice", choice="skip"))
        nxt = await until(incident, lambda s: s.occurrence != stuck.occurrence)

    assert script.undone == undone_before, "nothing more is lifted once harm is back"
    inherited = [a for a in nxt.actions if a.undone_at is None]
    assert {a.kind for a in inherited} >= {"block_outputs"}, "what is still in place goes to the next occurrence's restore"
    assert all(stuck.occurrence in a.idempotency_key for a in inherited)
    assert nxt.status != IncidentStatus.closed


async def test_a_next_occurrence_found_false_positive_still_lifts_what_the_last_left_in_place(client):
    """The protections left in place make the next occurrence's replay come back clean: it closes
    as a false positive, but only after a person approved lifting what it inherited."""
    script = Script(failing_kinds={"undo:block_outputs"})
    async with running_incident(client, script) as first_run:
        incident = client.get_workflow_handle(first_run.id)
        stuck, _ = await harm_back_while_an_undo_fails(incident, script)
        script.confirm = "not_confirmed"
        script.failing_kinds.clear()
        await AsTheApi(incident).execute_update(IncidentWorkflow.decide, FailureDecision(stage="restore", by="alice", choice="skip"))
        nxt = await until(incident, lambda s: s.occurrence != stuck.occurrence and waiting_on("restore")(s))
        assert {a.kind for a in nxt.actions if a.undone_at is None} >= {"block_outputs"}
        await approve(incident, "restore", "alice", ["oncall"])
        final = await until(incident, lambda s: s.status == IncidentStatus.false_positive)
    assert all(a.undone_at is not None for a in final.actions), "nothing an earlier occurrence applied is left behind"
