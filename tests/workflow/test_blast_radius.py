"""Blast radius on confirmation: measured beside the response, so containment never waits for it;
when it lands, severity is graded again, so a rule may read how many users got the harm, and the
review carries it; not measured is said plainly and satisfies no such rule; a new history replays
with its patch marker."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from stanch.models.decisions import FailureDecision
from stanch.models.signals import Severity
from stanch.runbooks.schema import Condition, Regulatory, ReportClock, SeverityRule
from tests.workflow.conftest import incident_input, running_incident
from tests.workflow.helpers import AsTheApi, approve, failed, until
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


async def test_containment_never_waits_for_the_blast_radius_and_its_count_grades_critical_when_it_lands(client):
    """The measure is slow (held by the test): containment goes on at the medium grade; when the
    count lands, the rule on affected users grades critical with the 2-day clock, and the review
    (after an abort) waits for it and carries it."""
    held = asyncio.Event()
    script = Script(detectors=["pii"], affected_users=SEVEN, exposure_held=held, failing_kinds={"rollback_to_previous"})
    async with running_incident(client, script, counted_runbook()) as handle:
        contained = await until(handle, lambda s: s.stage("contain").status == "done")
        assert contained.exposure is None and script.exposure_inputs  # measuring, and containment did not wait
        assert contained.severity == Severity.medium and not contained.regulatory.serious
        await approve(handle, "rollback", "alice", ["oncall"])
        await until(handle, failed("rollback"))
        abort = FailureDecision(stage="rollback", by="alice", choice="abort", reason="the leak is contained; review it")
        await AsTheApi(handle).execute_update(IncidentWorkflow.decide, abort)
        await until(handle, lambda s: any("review waits for the blast radius" in e.message for e in s.timeline))
        assert script.reviews == []
        held.set()
        state = await until(handle, lambda s: s.stage("review").status == "done")
        history = await handle.fetch_history()
    exposure = state.exposure
    assert exposure is not None and exposure.measured
    assert (exposure.users_affected, exposure.affected_user_ids, exposure.affected_tenant_ids) == (7, SEVEN, ["acme"])
    assert state.severity == Severity.critical and "critical: 5 or more users got the harm" in state.severity_reasons
    clock = state.regulatory
    assert clock.serious and clock.deadline is not None and clock.aware_at is not None
    assert clock.deadline - clock.aware_at == timedelta(days=2)
    asked = script.exposure_inputs[0]
    assert asked.detectors == ["pii"] and asked.until - asked.since == timedelta(days=7)
    kinds = [entry.kind for entry in state.timeline]
    measured = next(i for i, e in enumerate(state.timeline) if e.kind == "exposure" and "7 users and 1 tenants affected" in e.message)
    assert kinds.index("action") < measured  # containment went on first
    # The review carries the count and the grade it led to.
    review = script.reviews[0]
    assert review.exposure is not None and review.exposure.users_affected == 7
    assert review.severity == Severity.critical and review.serious
    # The history holds the patch marker and replays as it ran.
    markers = [e.marker_recorded_event_attributes for e in history.events if e.HasField("marker_recorded_event_attributes")]
    assert any(b"blast-radius" in payload.data for m in markers for p in m.details.values() for payload in p.payloads)
    replayer = Replayer(workflows=[IncidentWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)


async def test_unmeasured_exposure_is_said_and_holds_no_count_rule(client):
    script = Script(affected_users=None)
    async with running_incident(client, script, counted_runbook()) as handle:
        state = await until(handle, lambda s: graded(s) and s.exposure is not None)
    assert not state.exposure.measured and state.exposure.users_affected is None
    assert state.severity == Severity.high and not state.regulatory.serious
    assert any("affected users not measured" in entry.message for entry in state.timeline)


async def test_a_measure_that_cannot_run_is_tried_twice_then_said_not_measured(client):
    script = Script(affected_users=SEVEN, exposure_fails=True)
    async with running_incident(client, script, counted_runbook()) as handle:
        state = await until(handle, lambda s: s.exposure is not None)
    assert len(script.exposure_inputs) == 2
    assert not state.exposure.measured and "the exposure could not be read" in state.exposure.detail
