"""Durable timers: the ack clock escalating tier by tier, and the regulatory report clock."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError

from stanch.models.decisions import Acknowledgement, ReportFiled
from stanch.models.incident import IncidentStatus
from tests.workflow.conftest import alert, running_incident
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


def escalations(script: Script) -> list[tuple[int, list[str]]]:
    return [(n.tier, n.recipients) for n in script.notifications if n.kind == "escalation" and n.tier]


async def test_unacknowledged_incident_escalates_tier_by_tier_until_acknowledged(clock):
    script = Script()
    async with running_incident(clock.client, script) as handle:
        await until(handle, waiting_on("contain"))  # high: tiers at 15m and 30m
        assert escalations(script) == []
        await clock.sleep(timedelta(minutes=16))
        await until(handle, lambda s: s.escalation_tier == 1)
        assert escalations(script) == [(1, ["oncall-secondary"])]
        await clock.sleep(timedelta(minutes=15))
        await until(handle, lambda s: s.escalation_tier == 2)
        assert escalations(script)[-1] == (2, ["incident-commander"])
        await clock.sleep(timedelta(minutes=16))  # past the last tier: re-notify every ack SLA
        await until(handle, lambda s: s.escalation_tier == 3)
        await AsTheApi(handle).execute_update(IncidentWorkflow.acknowledge, Acknowledgement(responder="alice"))
        await clock.sleep(timedelta(hours=2))
        current = await state(handle)
        assert current.escalation_tier == 3 and current.acknowledged_by == "alice"
        with pytest.raises(WorkflowUpdateFailedError):
            await AsTheApi(handle).execute_update(IncidentWorkflow.acknowledge, Acknowledgement(responder="bob"))


async def test_serious_incident_runs_report_clock_until_filed(clock):
    script = Script()
    labels = {"alertname": "HarmfulOutput", "model": "support-bot", "severity": "critical", "harm": "death"}
    async with running_incident(clock.client, script, first=alert(labels=labels)) as handle:
        await AsTheApi(handle).execute_update(IncidentWorkflow.acknowledge, Acknowledgement(responder="alice"))
        current = await until(handle, waiting_on("contain"))
        report = current.regulatory
        assert report.serious and report.deadline - report.aware_at == timedelta(days=10)
        await approve_four_eyes(handle, "contain")
        await approve_four_eyes(handle, "rollback")
        await until(handle, waiting_on("restore"))
        await approve(handle, "restore", "alice", ["oncall"])
        await until(handle, lambda s: s.status == IncidentStatus.awaiting_report)
        await clock.sleep(timedelta(days=11))
        current = await until(handle, lambda s: s.regulatory.reminders_sent >= 10)
        reminders = [n for n in script.notifications if n.kind == "report_reminder"]
        assert "OVERDUE" in reminders[-1].message and "executive" in reminders[-1].recipients
        assert "incident-commander" not in reminders[0].recipients and "incident-commander" in reminders[-2].recipients
        await AsTheApi(handle).execute_update(IncidentWorkflow.record_report_filed, ReportFiled(by="sam", reference="EU-2026-0042"))
        final = await handle.result()
    assert final.status == IncidentStatus.closed and final.regulatory.filed.reference == "EU-2026-0042"
    assert script.reviews[0].serious is True


# --- the report clock, category by category ------------------------------------------------------

SERIOUS = {"alertname": "HarmfulOutput", "model": "support-bot", "severity": "critical"}


async def to_awaiting_report(handle) -> None:
    """Acknowledge and approve every gate of a critical harmful-output incident."""
    await AsTheApi(handle).execute_update(IncidentWorkflow.acknowledge, Acknowledgement(responder="alice"))
    await approve_four_eyes(handle, "contain")
    await approve_four_eyes(handle, "rollback")
    await until(handle, waiting_on("restore"))
    await approve(handle, "restore", "alice", ["oncall"])
    await until(handle, lambda s: s.status == IncidentStatus.awaiting_report)


def reminders(script: Script) -> list[tuple[list[str], bool]]:
    return [(n.recipients, "OVERDUE" in n.message) for n in script.notifications if n.kind == "report_reminder"]


@pytest.mark.parametrize(
    "harm, days, clock_reason",
    [
        ({"harm": "death"}, 10, "Art. 73(4) - death of a person"),
        ({"sector": "critical-infrastructure"}, 2, "Art. 73(3) - serious disruption of critical infrastructure"),
        ({"scope": "widespread"}, 2, "Art. 73(3) - widespread infringement"),
        ({"harm": "health-injury"}, 15, "15-day general clock"),
        ({"harm": "property-damage"}, 15, "15-day general clock"),
        ({"harm": "environment-spill"}, 15, "15-day general clock"),
    ],
    ids=["death", "critical-infrastructure", "widespread", "health", "property", "environment"],
)
async def test_serious_incident_shows_its_report_deadline(client, harm, days, clock_reason):
    async with running_incident(client, Script(), first=alert(labels={**SERIOUS, **harm})) as handle:
        current = await until(handle, waiting_on("contain"))
    report = current.regulatory
    assert report.serious and report.deadline - report.aware_at == timedelta(days=days)
    assert clock_reason in report.reason
    assert report.aware_at >= current.opened_at and report.filed is None
    notes = [e.message for e in current.timeline if e.kind == "regulatory"]
    assert notes == [f"serious incident ({report.reason}): report due {report.deadline.isoformat()}"]


async def test_an_incident_that_is_not_serious_runs_no_report_clock(client):
    async with running_incident(client, Script(), first=alert(labels={**SERIOUS, "harm": "embarrassment"})) as handle:
        current = await until(handle, waiting_on("contain"))
        with pytest.raises(WorkflowUpdateFailedError) as refusal:
            await AsTheApi(handle).execute_update(IncidentWorkflow.record_report_filed, ReportFiled(by="sam", reference="EU-1"))
    assert "not marked serious" in str(refusal.value.cause)
    assert not current.regulatory.serious and current.regulatory.deadline is None
    assert not any(e.kind == "regulatory" for e in current.timeline)


async def test_reminders_widen_as_the_deadline_nears_and_after_it_passes(clock):
    """15-day clock (serious harm to property): safety daily, the incident commander from two
    days before the deadline, an executive once it has passed — until a responder files."""
    script = Script()
    async with running_incident(clock.client, script, first=alert(labels={**SERIOUS, "harm": "property-damage"})) as handle:
        await to_awaiting_report(handle)
        await clock.sleep(timedelta(days=16, hours=1))
        current = await until(handle, lambda s: s.regulatory.reminders_sent >= 16)
        assert current.status == IncidentStatus.awaiting_report
        sent = reminders(script)[:16]
        assert (
            sent
            == [(["safety"], False)] * 13
            + [(["safety", "incident-commander"], False)]
            + [(["safety", "incident-commander", "executive"], True)] * 2
        )
        deadline = current.regulatory.deadline.isoformat()
        notes = [e.message for e in current.timeline if e.kind == "regulatory"]
        assert notes[1] == f"{current.id}: serious-incident report due {deadline}"
        assert notes[15] == f"{current.id}: serious-incident report OVERDUE since {deadline}"
        # A filing that did not come through the API is refused, and the incident still waits.
        with pytest.raises(WorkflowUpdateFailedError) as forged:
            await handle.execute_update(IncidentWorkflow.record_report_filed, ReportFiled(by="mallory", reference="FAKE-1"))
        assert "report filing refused: it carries no assertion from the Stanch API" in str(forged.value.cause)
        current = await state(handle)
        assert current.status == IncidentStatus.awaiting_report and current.regulatory.filed is None
        await AsTheApi(handle).execute_update(IncidentWorkflow.record_report_filed, ReportFiled(by="sam", reference="EU-2026-0077"))
        final = await handle.result()
        history = await handle.fetch_history()
    assert final.status == IncidentStatus.closed
    assert final.regulatory.filed.by == "sam" and final.regulatory.filed.reference == "EU-2026-0077"
    assert any(e.kind == "regulatory" and "filed by sam: EU-2026-0077" in e.message for e in final.timeline)
    accepted = [
        e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name
        for e in history.events
        if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    assert accepted.count("record_report_filed") == 1, "the refused filing never reached history"
    assert script.evidence_before_first_change is True, "Art. 73(6): evidence before the first change"
    # The review got what the Art. 73 draft needs.
    review = script.reviews[0]
    assert (
        review.serious
        and review.regulatory.deadline == final.regulatory.deadline
        and review.regulatory.aware_at == final.regulatory.aware_at
    )
    assert review.first_signal.labels["harm"] == "property-damage" and review.first_signal.raw == {}
    assert review.signal_count == 1 and review.signal_sources == {"alert": 1}
    assert review.findings and review.findings[0].outcome == "confirmed" and review.detectors_fired == ["secret"]
    assert review.evidence.sha256 == "ab" * 32 and review.runbook_sha256 == final.runbook_sha256
    assert review.severity_reasons == final.severity_reasons and review.acknowledged_by == "alice"
    assert {s.name: s.status.value for s in review.stages}["restore"] == "done"
    assert review.reviewed_at >= final.stage("restore").finished_at
    assert [a.stage for a in review.approvals if a.verified].count("contain") == 2


@pytest.mark.parametrize(
    "harm", [{"sector": "critical-infrastructure"}, {"scope": "widespread"}], ids=["critical-infrastructure", "widespread"]
)
async def test_two_day_clock_reminds_the_incident_commander_at_once_and_an_executive_when_overdue(clock, harm):
    script = Script()
    async with running_incident(clock.client, script, first=alert(labels={**SERIOUS, **harm})) as handle:
        await to_awaiting_report(handle)
        current = await state(handle)
        assert current.regulatory.deadline - current.regulatory.aware_at == timedelta(days=2)
        await clock.sleep(timedelta(days=2, hours=1))
        current = await until(handle, lambda s: s.regulatory.reminders_sent >= 2)
        assert reminders(script)[:2] == [(["safety", "incident-commander"], False), (["safety", "incident-commander", "executive"], True)]
        assert current.status == IncidentStatus.awaiting_report
        await AsTheApi(handle).execute_update(IncidentWorkflow.record_report_filed, ReportFiled(by="sam", reference="EU-2026-0078"))
        final = await handle.result()
    assert final.status == IncidentStatus.closed and final.closed_at > final.regulatory.deadline
