"""Closing notices (resolved, acknowledged elsewhere) reach an open incident as a record on its
timeline, never as harm: not counted, never graded, never raising severity."""

from __future__ import annotations

from stanch.models.signals import Severity
from tests.workflow.conftest import alert, running_incident
from tests.workflow.helpers import until, waiting_on
from tests.workflow.standins import Script
from workflows.incident import IncidentWorkflow


async def test_resolved_and_acknowledged_notices_are_recorded_not_counted(client):
    async with running_incident(client, Script()) as handle:
        before = await until(handle, waiting_on("contain"))
        # harmful-output grades critical at `signals_at_least: 5`: five notices must not get there.
        for n in range(5):
            await handle.signal(IncidentWorkflow.add_signal, alert(f"resolved-{n}", status="resolved", severity_hint=Severity.critical))
        await handle.signal(IncidentWorkflow.add_signal, alert("ack-1", sender="pagerduty", status="acknowledged", title="ack'd"))
        after = await until(handle, lambda s: s.closing_notices == 6)
    assert after.signal_count == before.signal_count == 1
    assert [s.signal_id for s in after.signals] == ["sig-1"]
    assert after.severity == before.severity, "a closing notice never raises severity"
    assert after.acknowledged_elsewhere and after.acknowledged_elsewhere.startswith("pagerduty")
    assert after.acknowledged_by is None, "a hint, not an acknowledgement: escalation goes on"
    notices = [e for e in after.timeline if e.data.get("notice")]
    assert len(notices) == 6 and all("a closing notice, not new harm" in e.message for e in notices)


async def test_an_incident_started_by_a_closing_notice_alone_closes_without_paging(client):
    script = Script()
    async with running_incident(client, script, first=alert("late-resolved", status="resolved")) as handle:
        final = await handle.result()
    assert final.status == "closed" and final.signal_count == 0
    assert "only a closing notice" in final.close_reason
    assert not script.notifications, "nobody is paged for a notice that harm stopped"
