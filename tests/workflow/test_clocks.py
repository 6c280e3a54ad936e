"""Durable timers: the ack clock escalating tier by tier, and the regulatory report clock."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError

from stanch.incident import Acknowledgement, IncidentStatus, ReportFiled
from tests.workflow.conftest import alert, running_incident
from tests.workflow.helpers import AsTheApi, approve, approve_four_eyes, state, until, waiting_on
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
