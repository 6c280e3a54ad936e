"""What a hand-over (continue-as-new of a long history) must not change: every wait resumes
exactly as it stood. Histories here are made long with notes, and each run hands over at
BOUND events."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio.client import WorkflowHandle
from temporalio.service import RPCError
from temporalio.worker import Worker

from stanch.models.decisions import FailureDecision, Note, ReportFiled, SeverityChange, TriageDecision
from stanch.models.incident import IncidentInput, IncidentStatus
from stanch.models.signals import Severity
from tests.workflow.conftest import alert, incident_input, running_incident
from tests.workflow.helpers import AsTheApi, approve, approve_four_eyes, failed, state, until, waiting_on
from tests.workflow.standins import Script, stand_ins
from tests.workflow.test_clocks import SERIOUS
from workflows.incident import IncidentWorkflow

BOUND = 150


def bounded(runbook: str = "harmful-output") -> IncidentInput:
    return incident_input(runbook).model_copy(update={"events_before_handing_over": BOUND})


async def hand_over(incident: WorkflowHandle) -> None:
    """Notes until the run hands over to the next."""
    runs = (await state(incident)).runs
    for n in range(200):
        await AsTheApi(incident).execute_update(IncidentWorkflow.add_note, Note(by="alice", text=f"note {n}"))
        if n % 10 == 9:
            try:
                if (await state(incident)).runs > runs:
                    return
            except RPCError:  # a query that reaches the run as it continues as new may time out: note on
                continue
    raise AssertionError("the run never handed over")


async def test_a_pending_restore_still_needs_its_approval_after_lowering_severity_and_a_hand_over(client):
    script = Script()
    async with running_incident(client, script, input=bounded()) as first_run:
        incident = client.get_workflow_handle(first_run.id)
        await approve_four_eyes(incident, "contain")
        await approve_four_eyes(incident, "rollback")
        await until(incident, waiting_on("restore"))
        lower = SeverityChange(severity=Severity.medium, by="sam", roles=["safety"], reason="fewer users than feared")
        await AsTheApi(incident).execute_update(IncidentWorkflow.set_severity, lower)  # medium restores automatically
        await hand_over(incident)
        after = await until(incident, lambda s: s.runs >= 2)
        assert after.pending_approval is not None and after.pending_approval.stage == "restore"
        assert not script.undone, "nothing lifted without the approval the step was gated with"
        await approve(incident, "restore", "alice", ["oncall"])
        done = await until(incident, lambda s: s.stage("restore").status == "done")
    assert script.undone and any(a.stage == "restore" and a.approver == "alice" for a in done.approvals)


async def test_an_undo_a_responder_skipped_stays_skipped_after_a_hand_over(client):
    script = Script(failing_kinds={"undo:rollback_to_previous", "undo:block_outputs"})
    async with running_incident(client, script, input=bounded()) as first_run:
        incident = client.get_workflow_handle(first_run.id)
        await approve_four_eyes(incident, "contain")
        await approve_four_eyes(incident, "rollback")
        await until(incident, waiting_on("restore"))
        await approve(incident, "restore", "alice", ["oncall"])
        await until(incident, failed("restore"))
        keep = FailureDecision(stage="restore", by="alice", choice="skip", reason="keep the previous version")
        await AsTheApi(incident).execute_update(IncidentWorkflow.decide, keep)
        await until(incident, lambda s: failed("restore")(s) and "block_outputs" in s.stage("restore").detail)
        script.failing_kinds.clear()
        await hand_over(incident)
        await AsTheApi(incident).execute_update(IncidentWorkflow.decide, FailureDecision(stage="restore", by="alice", choice="retry"))
        after = await until(incident, lambda s: s.stage("restore").status == "done")
    kinds = {a.kind: a.undone_at for a in after.actions if a.stage in ("contain", "rollback")}
    assert kinds["rollback_to_previous"] is None, "the undo alice skipped stays skipped"
    assert kinds["block_outputs"] is not None, "the retry undid the one that had failed"


async def test_triage_waits_for_a_person_after_a_hand_over(client):
    script = Script(confirm="inconclusive")
    async with running_incident(client, script, input=bounded()) as first_run:
        incident = client.get_workflow_handle(first_run.id)
        await until(incident, lambda s: s.status == IncidentStatus.triage)
        script.confirm = "not_confirmed"  # checks run again would now close it: they must not run
        await hand_over(incident)
        still = await until(incident, lambda s: s.runs >= 2)
        assert still.status == IncidentStatus.triage
        decision = TriageDecision(by="alice", outcome="confirmed", reason="seen it ourselves")
        await AsTheApi(incident).execute_update(IncidentWorkflow.triage, decision)
        after = await until(incident, lambda s: s.stage("confirm").status == "done")
    assert after.status != IncidentStatus.false_positive


async def test_after_a_hand_over_approval_auto_on_timeout_keeps_its_time(clock):
    """Critical containment acts after one reminder (auto_on_timeout): a hand-over in the middle
    of the wait must not start the timeout again."""
    script = Script()
    async with running_incident(clock.client, script, input=bounded(), first=alert(labels=SERIOUS)) as first_run:
        incident = clock.client.get_workflow_handle(first_run.id)
        waiting = await until(incident, waiting_on("contain"))
        timeout = incident_input().runbook.policy_for(waiting.severity).approval_timeout
        await clock.sleep(timeout * 2 / 3)
        await hand_over(incident)
        await clock.sleep(timeout / 3 + timedelta(minutes=1))
        after = await until(incident, lambda s: s.stage("contain").status != "awaiting_approval")
    assert after.stage("contain").status in ("running", "done"), "contained when the original wait ran out"


async def test_a_rule_on_a_label_still_grades_after_a_storm(client):
    """Past the first 100 signals only those the rules could tell apart are kept: an alert saying
    a person died (the `harm` label a seriousness rule reads) must be one of them."""
    async with running_incident(client, Script(), input=bounded(), first=alert(labels=SERIOUS)) as first_run:
        incident = client.get_workflow_handle(first_run.id)
        await until(incident, waiting_on("contain"))
        for n in range(110):
            await incident.signal(IncidentWorkflow.add_signal, alert(f"storm-{n}", labels={**SERIOUS, "instance": f"pod-{n}"}))
        await until(incident, lambda s: s.signal_count == 111)
        await incident.signal(IncidentWorkflow.add_signal, alert("death", labels={**SERIOUS, "harm": "death"}))
        after = await until(incident, lambda s: s.regulatory.serious)
    assert after.regulatory.deadline - after.regulatory.aware_at == timedelta(days=10)


async def test_an_aborted_incident_awaiting_its_report_hands_over_and_still_closes_as_aborted(client):
    script = Script(failing_kinds={"rollback_to_previous"})
    labels = {**SERIOUS, "harm": "health-injury"}
    async with running_incident(client, script, input=bounded(), first=alert(labels=labels)) as first_run:
        incident = client.get_workflow_handle(first_run.id)
        await approve_four_eyes(incident, "contain")
        await approve_four_eyes(incident, "rollback")
        await until(incident, failed("rollback"))
        abort = FailureDecision(stage="rollback", by="alice", choice="abort", reason="the registry is down")
        await AsTheApi(incident).execute_update(IncidentWorkflow.decide, abort)
        waiting = await until(incident, lambda s: s.status == IncidentStatus.awaiting_report)
        reviews = len(script.reviews)
        await hand_over(incident)
        still = await until(incident, lambda s: s.runs >= 2)
        assert still.status == IncidentStatus.awaiting_report and still.regulatory.deadline == waiting.regulatory.deadline
        await AsTheApi(incident).execute_update(IncidentWorkflow.record_report_filed, ReportFiled(by="sam", reference="EU-2026-0100"))
        final = await until(incident, lambda s: s.status == IncidentStatus.aborted)
    assert len(script.reviews) == reviews, "the review is not written again"
    assert all(a.undone_at is None for a in final.actions), "an abort keeps every protection in place"


async def test_a_storm_before_the_steps_run_hands_over_between_them_with_no_wait_at_all(client):
    """Low severity runs every stage automatically: no approval, no wait. A history made long
    by a storm hands over between steps all the same, and the incident ends as it would have."""
    script = Script(detectors=[])
    low = bounded().model_copy(deep=True)
    low.runbook.severity.default = Severity.low
    low.runbook.severity.rules = []  # a storm would grade it critical (`signals_at_least`), which waits for approvals
    task_queue = f"tq-{uuid.uuid4()}"
    handle = await client.start_workflow(
        IncidentWorkflow.run, low, id=low.incident_id, task_queue=task_queue, start_signal="add_signal", start_signal_args=[alert()]
    )
    for n in range(120):  # before any worker polls: the run's first task finds its history long
        await handle.signal(IncidentWorkflow.add_signal, alert(f"storm-{n}", labels={"instance": f"pod-{n}"}))
    async with Worker(client, task_queue=task_queue, workflows=[IncidentWorkflow], activities=stand_ins(script)):
        final = await client.get_workflow_handle_for(IncidentWorkflow.run, low.incident_id).result()
    assert final.status == IncidentStatus.closed and final.runs >= 2
    assert final.signal_count == 121
    assert len(script.applied) == len(set(script.applied)), "no step applied twice across the hand-over"
