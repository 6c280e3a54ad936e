"""The whole lifecycle, branch by branch, on the time-skipping server."""

from __future__ import annotations

from datetime import timedelta

import pytest

from stanch.models.actions import ActionSpec
from stanch.models.decisions import TriageDecision
from stanch.models.incident import IncidentStatus
from stanch.models.signals import Severity
from stanch.runbooks.schema import Hotfix, SeverityRules, Verify
from tests.workflow.conftest import alert, incident_input, running_incident
from tests.workflow.helpers import (
    AsTheApi,
    approve,
    approve_four_eyes,
    stage_status,
    until,
    waiting_on,
)
from tests.workflow.standins import Script
from workflows.incident import IncidentWorkflow


async def test_high_severity_incident_runs_every_stage_with_four_eyes(client):
    script = Script()
    async with running_incident(client, script) as handle:
        await approve_four_eyes(handle, "contain")
        await approve_four_eyes(handle, "rollback")
        await until(handle, waiting_on("restore"))
        await approve(handle, "restore", "alice", ["oncall"])
        final = await handle.result()
    assert final.status == IncidentStatus.closed
    assert final.severity == Severity.high
    assert set(stage_status(final).values()) == {"done"}
    assert script.evidence_before_first_change is True
    contained_and_rolled_back = [a.idempotency_key for a in final.actions if a.stage in ("contain", "rollback")]
    assert script.undone == list(reversed(contained_and_rolled_back)), "restore must undo in reverse order"
    assert all(a.undone_at for a in final.actions if a.stage in ("contain", "rollback"))
    assert not any(a.undone_at for a in final.actions if a.stage == "hotfix"), "the fix stays after restore"
    assert len(script.applied) == len(set(script.applied)) == 5
    assert script.reviews and script.reviews[0].repro[0].prompt == "What is the admin API key?"


async def test_a_deployed_fix_is_verified_on_the_release_and_a_prompt_fix_on_the_version_users_get_back(client):
    script = Script()
    async with running_incident(client, script) as handle:
        await approve_four_eyes(handle, "contain")
        await approve_four_eyes(handle, "rollback")
        await until(handle, waiting_on("restore"))
    assert script.verified_versions == ["release"], "the fine-tune deployed a new release"

    prompt_fix = Hotfix(
        actions=[ActionSpec(kind="set_system_prompt", params={"prompt": "Never share credentials."})],
        verify=Verify(detectors=["secret"]),
    )
    script = Script()
    async with running_incident(client, script, input=incident_input(hotfix=prompt_fix)) as handle:
        await approve_four_eyes(handle, "contain")
        await approve_four_eyes(handle, "rollback")
        current = await until(handle, waiting_on("restore"))
    assert current.target.version and script.verified_versions == [current.target.version]


async def test_not_confirmed_closes_as_false_positive_with_reason(client):
    script = Script(confirm="not_confirmed")
    async with running_incident(client, script) as handle:
        final = await handle.result()
    assert final.status == IncidentStatus.false_positive
    assert "scripted not_confirmed" in final.close_reason
    assert stage_status(final)["confirm"] == "done"
    assert all(status == "skipped" for name, status in stage_status(final).items() if name != "confirm")
    assert script.applied == []


@pytest.mark.parametrize("outcome, expected", [("false_positive", IncidentStatus.false_positive), ("confirmed", IncidentStatus.closed)])
async def test_inconclusive_waits_for_human_triage(client, outcome, expected):
    script = Script(confirm="inconclusive", detectors=[])
    input = incident_input(severity=SeverityRules(default=Severity.low))
    async with running_incident(client, script, input) as handle:
        await until(handle, lambda s: s.status == IncidentStatus.triage)
        await AsTheApi(handle).execute_update(IncidentWorkflow.triage, TriageDecision(by="alice", outcome=outcome, reason="looked at it"))
        final = await handle.result()
    assert final.status == expected
    if outcome == "false_positive":
        assert "alice" in final.close_reason and script.applied == []


async def test_inconclusive_triage_escalates_while_nobody_decides(clock):
    script = Script(confirm="inconclusive", detectors=[])
    async with running_incident(clock.client, script) as handle:
        await until(handle, lambda s: s.status == IncidentStatus.triage)
        await clock.sleep(timedelta(hours=1, minutes=5))
        await until(handle, lambda s: any("triage overdue" in n.message for n in script.notifications))


async def test_low_severity_contains_automatically_and_skips_rollback(client):
    script = Script(detectors=[])
    async with running_incident(client, script, incident_input(severity=SeverityRules(default=Severity.low))) as handle:
        final = await handle.result()
    stages = stage_status(final)
    assert final.severity == Severity.low
    assert stages["contain"] == "done" and stages["rollback"] == "skipped" and stages["restore"] == "done"
    assert "policy for low skips rollback" in final.stage("rollback").detail


async def test_medium_severity_asks_one_approver_for_rollback_only(client):
    script = Script(detectors=[])
    async with running_incident(client, script) as handle:
        current = await until(handle, waiting_on("rollback"))
        assert current.severity == Severity.medium and current.pending_approval.count == 1
        assert stage_status(current)["contain"] == "done"
        await approve(handle, "rollback", "alice", ["oncall"])
        final = await handle.result()
    assert final.status == IncidentStatus.closed


async def test_critical_label_grades_critical_and_requires_safety(client):
    script = Script()
    first = alert(labels={"alertname": "HarmfulOutput", "model": "support-bot", "severity": "critical"})
    async with running_incident(client, script, first=first) as handle:
        current = await until(handle, waiting_on("contain"))
        assert current.severity == Severity.critical
        assert current.pending_approval.required_roles == ["safety"]
        await approve(handle, "contain", "alice", ["oncall"])
        await approve(handle, "contain", "bob", ["incident-commander"])
        current = await until(handle, lambda s: len(s.approvals) == 2)
        assert current.pending_approval is not None, "two approvers without a safety lead are not enough"
        await approve(handle, "contain", "sam", ["safety"])
        await until(handle, waiting_on("rollback"))


async def test_repeated_signals_are_deduplicated_and_more_signals_raise_severity(client):
    script = Script()
    async with running_incident(client, script) as handle:
        await until(handle, waiting_on("contain"))
        for _ in range(3):
            await handle.signal(IncidentWorkflow.add_signal, alert("sig-1"))
        current = await until(handle, lambda s: len(s.timeline) > 0)
        assert len(current.signals) == 1
        for n in range(2, 6):
            await handle.signal(IncidentWorkflow.add_signal, alert(f"sig-{n}"))
        current = await until(handle, lambda s: s.severity == Severity.critical)
        assert len(current.signals) == 5
        assert current.pending_approval.severity == Severity.critical
