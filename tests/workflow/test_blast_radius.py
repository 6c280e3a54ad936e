"""Blast radius on confirmation: measured before severity is graded, so a rule may read how many
users got the harm; not measured is said plainly and satisfies no such rule; a new history
replays with its patch marker."""

from __future__ import annotations

from datetime import timedelta

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from stanch.models.signals import Severity
from stanch.runbooks.schema import Condition, Regulatory, ReportClock, SeverityRule
from tests.workflow.conftest import incident_input, running_incident
from tests.workflow.helpers import until
from tests.workflow.standins import Script
from workflows.incident import IncidentWorkflow

SEVEN = [f"user-{n}" for n in range(7)]
WIDESPREAD = Condition(affected_users_at_least=5)


def counted_runbook():  # harmful-output, with rules on the count of affected users
    book = incident_input().runbook
    rules = [*book.severity.rules, SeverityRule(when=WIDESPREAD, severity=Severity.critical, reason="5 or more users got the harm")]
    regulatory = Regulatory(
        serious_when=[WIDESPREAD],
        shorter_clocks=[ReportClock(when=WIDESPREAD, days=2, reason="Art. 73(3) - widespread infringement")],
    )
    return incident_input(severity=book.severity.model_copy(update={"rules": rules}), regulatory=regulatory)


def graded(state) -> bool:
    return state.stage("severity").status == "done"


async def test_affected_users_are_counted_before_grading_and_a_rule_reads_them(client):
    script = Script(affected_users=SEVEN)
    async with running_incident(client, script, counted_runbook()) as handle:
        state = await until(handle, graded)
        history = await handle.fetch_history()
    exposure = state.exposure
    assert exposure is not None and exposure.measured
    assert (exposure.users_affected, exposure.affected_user_ids, exposure.affected_tenant_ids) == (7, SEVEN, ["acme"])
    assert state.severity == Severity.critical and "critical: 5 or more users got the harm" in state.severity_reasons
    clock = state.regulatory
    assert clock.serious and clock.deadline is not None and clock.aware_at is not None
    assert clock.deadline - clock.aware_at == timedelta(days=2)
    asked = script.exposure_inputs[0]
    assert asked.detectors == ["secret"] and asked.until - asked.since == timedelta(days=7)
    assert any(entry.kind == "exposure" and "7 users and 1 tenants affected" in entry.message for entry in state.timeline)
    # The history holds the patch marker and replays as it ran.
    markers = [e.marker_recorded_event_attributes for e in history.events if e.HasField("marker_recorded_event_attributes")]
    assert any(b"blast-radius" in payload.data for m in markers for p in m.details.values() for payload in p.payloads)
    replayer = Replayer(workflows=[IncidentWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)


async def test_unmeasured_exposure_is_said_and_holds_no_count_rule(client):
    script = Script(affected_users=None)
    async with running_incident(client, script, counted_runbook()) as handle:
        state = await until(handle, graded)
    assert state.exposure is not None and not state.exposure.measured and state.exposure.users_affected is None
    assert state.severity == Severity.high and not state.regulatory.serious
    assert any("affected users not measured" in entry.message for entry in state.timeline)
