"""Time-to-containment objectives: the incident records whether it contained within its runbook's
objective and which wait took the time, emits the lifecycle metrics once, and the postmortem
names it."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import MetricBuffer, MetricBufferDurationFormat, Runtime, TelemetryConfig
from temporalio.testing import WorkflowEnvironment

from stanch.config.settings import Settings
from stanch.models.actions import TargetRef
from stanch.models.decisions import Acknowledgement, FailureDecision
from stanch.models.incident import IncidentInput, IncidentStatus
from stanch.models.signals import Severity
from stanch.review.postmortem import postmortem, review_tasks
from stanch.runbooks.schema import Objectives
from stanch.temporal.client import INCIDENT_CLOCKS, metrics_runtime
from tests.conftest import installed_binary
from tests.postgres import free_port
from tests.workflow.conftest import incident_input, running_incident
from tests.workflow.helpers import AsTheApi, approve, approve_four_eyes, failed, state, until, waiting_on
from tests.workflow.standins import Script
from tests.workflow.test_hand_over import BOUND, hand_over
from workflows.incident import IncidentWorkflow
from workflows.objectives import DRILL_TIME_TO


class Metered:
    """A time-skipping server whose worker's metrics land in a buffer the test reads."""

    def __init__(self, environment: WorkflowEnvironment, buffer: MetricBuffer) -> None:
        self.environment = environment
        self.buffer = buffer
        self.updates: list = []

    def recorded(self, name: str) -> list[tuple[float, dict]]:
        self.updates += self.buffer.retrieve_updates()
        # The runtime adds its own labels (namespace, task_queue, workflow_type): Stanch's are these.
        return [
            (update.value, {key: value for key, value in update.attributes.items() if key in STANCH_LABELS})
            for update in self.updates
            if update.metric.name == name
        ]


STANCH_LABELS = ("runbook", "severity", "result", "outcome", "milestone")


@pytest_asyncio.fixture
async def metered() -> AsyncIterator[Metered]:
    buffer = MetricBuffer(10_000, duration_format=MetricBufferDurationFormat.SECONDS)
    runtime = Runtime(telemetry=TelemetryConfig(metrics=buffer))
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=installed_binary("temporal-test-server"), data_converter=pydantic_data_converter, runtime=runtime
    )
    yield Metered(environment, buffer)
    await environment.shutdown()


def with_objectives(severity: Severity, **objectives: str) -> IncidentInput:
    input = incident_input()
    policy = input.runbook.policy[severity].model_copy(update={"objectives": Objectives.model_validate(objectives)})
    runbook = input.runbook.model_copy(update={"policy": {**input.runbook.policy, severity: policy}})
    return input.model_copy(update={"runbook": runbook})


async def test_contained_within_the_objective_is_recorded_met_and_counted(metered: Metered) -> None:
    script = Script()  # the secret detector fires: high, contain needs two approvers, one from safety
    input = with_objectives(Severity.high, contain="15m")
    async with running_incident(metered.environment.client, script, input) as handle:
        await until(handle, waiting_on("contain"))
        await approve(handle, "contain", "alice", ["oncall"])
        await approve(handle, "contain", "sam", ["safety"])
        current = await until(handle, lambda s: any(o.milestone == "contain" for o in s.objectives))

    contained = next(o for o in current.objectives if o.milestone == "contain")
    assert contained.met is True and contained.objective_seconds == 15 * 60 and contained.severity == Severity.high
    assert contained.elapsed_seconds < 60
    assert contained.human_seconds + contained.machine_seconds == pytest.approx(contained.elapsed_seconds)
    assert "contained in" in contained.summary and "objective 15m: met" in contained.summary
    assert [wait.gate for wait in current.gate_waits] == ["the contain approval"]
    assert any(entry.kind == "objective" and entry.data["milestone"] == "contain" for entry in current.timeline)
    labels = {"runbook": "harmful-output", "severity": "high"}
    assert [attrs for _, attrs in metered.recorded("stanch_incident_containment_objective")] == [{**labels, "result": "met"}]
    [(seconds, attrs)] = metered.recorded("stanch_incident_time_to_contain")
    assert attrs == labels and seconds == pytest.approx(contained.elapsed_seconds, abs=0.001)


async def test_a_missed_objective_names_the_approval_that_waited_for_a_second_approver(metered: Metered) -> None:
    script = Script()
    input = with_objectives(Severity.high, contain="5m", restore="1h")
    clock = metered.environment
    async with running_incident(clock.client, script, input) as handle:
        await until(handle, waiting_on("contain"))
        await approve(handle, "contain", "alice", ["oncall"])
        await clock.sleep(timedelta(minutes=7))  # nobody from safety yet
        await approve(handle, "contain", "sam", ["safety"])
        current = await until(handle, waiting_on("rollback"))
        contained = next(o for o in current.objectives if o.milestone == "contain")
        assert contained.met is False and contained.elapsed_seconds >= 7 * 60
        assert contained.took_longest_by == "human"
        assert contained.took_longest.startswith("the contain approval waited 7m") and contained.took_longest.endswith(
            "for a second approver (sam)"
        )
        assert contained.human_seconds >= 7 * 60 and contained.machine_seconds < 60
        assert "MISSED" in contained.summary

        await approve(handle, "rollback", "alice", ["oncall"])
        await approve(handle, "rollback", "sam", ["safety"])
        await until(handle, waiting_on("restore"))
        await approve(handle, "restore", "alice", ["oncall"])
        final = await handle.result()

    assert final.status == IncidentStatus.closed
    # Alice acknowledged by approving, at once; restoring came within its hour.
    assert [o.milestone for o in final.objectives] == ["acknowledge", "contain", "restore"]
    acknowledged, _, restored = final.objectives
    assert acknowledged.elapsed_seconds < 60 and acknowledged.met is None
    assert restored.met is True and restored.objective_seconds == 3600
    labels = {"runbook": "harmful-output", "severity": "high"}
    assert [attrs for _, attrs in metered.recorded("stanch_incident_containment_objective")] == [{**labels, "result": "missed"}]
    assert metered.recorded("stanch_incident_ack_sla_breaches") == []
    assert len(metered.recorded("stanch_incident_time_to_acknowledge")) == 1
    assert len(metered.recorded("stanch_incident_time_to_restore")) == 1
    [(closed_after, closed_labels)] = metered.recorded("stanch_incident_time_to_close")
    assert closed_labels == {**labels, "outcome": "closed"} and closed_after >= 7 * 60

    # The review was given the recorded facts, and the postmortem names the gate.
    review = script.reviews[0]
    document = postmortem(review, review_tasks(review), added=0, mapping=[])
    section = document.split("## Time to contain", 1)[1].split("## Actions", 1)[0]
    assert "Objective at high: contain within 5m — MISSED: contained in 7m" in section
    assert "The gate that took the time (human): the contain approval waited 7m" in section
    assert "for a second approver (sam)" in section


async def test_without_objectives_the_times_are_recorded_and_an_unacknowledged_incident_breaches_its_ack_sla(
    metered: Metered,
) -> None:
    script = Script(detectors=[])  # nothing fired: medium, containment automatic, rollback waits for a responder
    async with running_incident(metered.environment.client, script) as handle:
        current = await until(handle, waiting_on("rollback"))
        assert current.gate_waits == []
        await metered.environment.sleep(timedelta(minutes=61))  # the ack SLA at medium is 1h
        await until(handle, lambda s: s.escalation_tier >= 1)
        await AsTheApi(handle).execute_update(IncidentWorkflow.acknowledge, Acknowledgement(responder="alice"))
        current = await until(handle, lambda s: len(s.objectives) == 2)
    acknowledged = current.objectives[-1]
    assert acknowledged.milestone == "acknowledge" and acknowledged.elapsed_seconds >= 61 * 60
    assert acknowledged.took_longest_by == "human"
    labels = {"runbook": "harmful-output", "severity": "medium"}
    assert [attrs for _, attrs in metered.recorded("stanch_incident_ack_sla_breaches")] == [labels]  # once, however late
    contained = next(o for o in current.objectives if o.milestone == "contain")
    assert contained.met is None and contained.objective_seconds is None and "no objective set" in contained.summary
    assert contained.took_longest_by == "machine"
    assert metered.recorded("stanch_incident_containment_objective") == []
    assert len(metered.recorded("stanch_incident_time_to_contain")) == 1


async def test_the_workers_prometheus_endpoint_serves_the_lifecycle_metrics_by_their_contract_names(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    runtime = metrics_runtime(Settings(home=tmp_path, worker_metrics_address=address))  # as the worker makes it
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=installed_binary("temporal-test-server"), data_converter=pydantic_data_converter, runtime=runtime
    )
    try:
        input = with_objectives(Severity.medium, contain="1h")  # nothing fired: medium, containment automatic
        async with running_incident(environment.client, Script(detectors=[]), input) as handle:
            await until(handle, waiting_on("rollback"))
            scraped = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode())
    finally:
        await environment.shutdown()

    def series(name: str) -> list[str]:
        return [line for line in scraped.splitlines() if line.startswith(name + "{")]

    [contained] = series("stanch_incident_containment_objective_total")
    assert 'runbook="harmful-output"' in contained and 'severity="medium"' in contained and 'result="met"' in contained
    assert 'workflow_type="IncidentWorkflow"' in contained and contained.endswith(" 1")
    [count] = series("stanch_incident_time_to_contain_seconds_count")
    assert 'runbook="harmful-output"' in count and count.endswith(" 1")
    bounds = {float(bound) for bound in re.findall(r'le="([0-9.]+)"', "\n".join(series("stanch_incident_time_to_contain_seconds_bucket")))}
    assert {300.0, 3600.0, 86400.0} <= bounds  # minutes to days, not the SDK's default that ends at 10 s


LIFECYCLE = (
    "stanch_incident_time_to_acknowledge",
    "stanch_incident_time_to_contain",
    "stanch_incident_time_to_restore",
    "stanch_incident_time_to_close",
    "stanch_incident_containment_objective",
    "stanch_incident_ack_sla_breaches",
)


def low_and_automatic(input: IncidentInput) -> IncidentInput:
    """Low severity runs every stage without a person: the incident closes on its own."""
    low = input.model_copy(deep=True)
    low.runbook.severity.default = Severity.low
    low.runbook.severity.rules = []
    return low


async def test_a_rehearsal_records_its_objectives_and_emits_no_lifecycle_metric(metered: Metered) -> None:
    real = low_and_automatic(with_objectives(Severity.low, contain="4h", restore="8h"))
    rehearsal = real.model_copy(update={"dry_run": True, "incident_id": f"{real.incident_id}-rehearsal"})
    async with running_incident(metered.environment.client, Script(detectors=[]), rehearsal) as handle:
        rehearsed = await handle.result()
    assert rehearsed.status == IncidentStatus.closed
    assert [(o.milestone, o.met) for o in rehearsed.objectives] == [("contain", True), ("restore", True)], "the report wants them"
    assert {name: metered.recorded(name) for name in LIFECYCLE} == {name: [] for name in LIFECYCLE}

    # The same incident for real: each counted once (so the buffer above was read, not empty by chance).
    async with running_incident(metered.environment.client, Script(detectors=[]), real) as handle:
        await handle.result()
    counted = {name: len(metered.recorded(name)) for name in LIFECYCLE}
    assert counted == {**{name: 1 for name in LIFECYCLE}, "stanch_incident_time_to_acknowledge": 0, "stanch_incident_ack_sla_breaches": 0}


async def test_each_lifecycle_metric_is_emitted_once_across_a_hand_over_and_replay_of_every_task(metered: Metered) -> None:
    """Every workflow task replays the whole history (no cache), and the run hands over after
    containing: still one observation per milestone."""
    input = with_objectives(Severity.high, contain="15m", restore="1h").model_copy(update={"events_before_handing_over": BOUND})
    client = metered.environment.client
    async with running_incident(client, Script(), input, max_cached_workflows=0) as first_run:
        incident = client.get_workflow_handle(first_run.id)  # the latest run, across hand-overs
        await approve_four_eyes(incident, "contain")
        await until(incident, lambda s: any(o.milestone == "contain" for o in s.objectives))
        await hand_over(incident)
        await approve_four_eyes(incident, "rollback")
        await until(incident, waiting_on("restore"))
        await approve(incident, "restore", "alice", ["oncall"])
        final = await client.get_workflow_handle_for(IncidentWorkflow.run, first_run.id).result()

    assert final.status == IncidentStatus.closed and final.runs >= 2
    assert [o.milestone for o in final.objectives] == ["acknowledge", "contain", "restore"]
    counted = {name: len(metered.recorded(name)) for name in LIFECYCLE}
    assert counted == {**{name: 1 for name in LIFECYCLE}, "stanch_incident_ack_sla_breaches": 0}


async def test_a_restore_that_leaves_a_protection_in_place_is_not_counted_as_restored(metered: Metered) -> None:
    script = Script(failing_kinds={"undo:rollback_to_previous"})
    input = with_objectives(Severity.high, contain="15m", restore="1h")
    async with running_incident(metered.environment.client, script, input) as handle:
        await approve_four_eyes(handle, "contain")
        await approve_four_eyes(handle, "rollback")
        await until(handle, waiting_on("restore"))
        await approve(handle, "restore", "alice", ["oncall"])
        await until(handle, failed("restore"))
        keep = FailureDecision(stage="restore", by="alice", choice="skip", reason="keep the previous version for now")
        await AsTheApi(handle).execute_update(IncidentWorkflow.decide, keep)
        final = await handle.result()

    assert final.stage("restore").detail == "still in place: rollback_to_previous"
    restored = next(o for o in final.objectives if o.milestone == "restore")
    assert restored.reached is False and restored.met is None
    assert restored.summary.startswith("not restored: the restore stage ended after ")
    assert restored.summary.endswith("partial: still in place: rollback_to_previous")
    assert metered.recorded("stanch_incident_time_to_restore") == []
    assert len(metered.recorded("stanch_incident_time_to_close")) == 1
    document = postmortem(script.reviews[0], review_tasks(script.reviews[0]), added=0, mapping=[])
    assert "- not restored: the restore stage ended after" in document.split("## Time to contain", 1)[1]


DRILL_ROUTE = "drill-0a1b2c3d.support-bot"


async def test_a_drill_emits_its_times_and_objectives_as_a_drills_once_across_a_hand_over_and_replay(metered: Metered) -> None:
    """A drill (`stanch drill`: its target a drill route) shows in metrics as a drill, never in
    production's lifecycle metrics, each once though every task replays and the run hands over."""
    input = with_objectives(Severity.high, acknowledge="10m", contain="15m", restore="1h")
    drill = input.model_copy(
        update={"drill": True, "target": TargetRef(model=DRILL_ROUTE, version="2"), "events_before_handing_over": BOUND}
    )
    client = metered.environment.client
    async with running_incident(client, Script(), drill, max_cached_workflows=0) as first_run:
        incident = client.get_workflow_handle(first_run.id)  # the latest run, across hand-overs
        await until(incident, waiting_on("contain"))
        await approve(incident, "contain", "alice", ["oncall"])
        await metered.environment.sleep(timedelta(minutes=20))  # the safety approver comes late: contain missed
        await approve(incident, "contain", "sam", ["safety"])
        await until(incident, lambda s: any(o.milestone == "contain" for o in s.objectives))
        await hand_over(incident)
        await approve_four_eyes(incident, "rollback")
        await until(incident, waiting_on("restore"))
        await approve(incident, "restore", "alice", ["oncall"])
        final = await client.get_workflow_handle_for(IncidentWorkflow.run, first_run.id).result()

    assert final.status == IncidentStatus.closed and final.runs >= 2
    assert [(o.milestone, o.met) for o in final.objectives] == [("acknowledge", True), ("contain", False), ("restore", True)]
    assert {name: metered.recorded(name) for name in LIFECYCLE} == {name: [] for name in LIFECYCLE}, "production's numbers"
    labels = {"runbook": "harmful-output", "severity": "high"}
    for milestone in ("acknowledge", "contain", "restore"):
        [(seconds, attributes)] = metered.recorded(f"stanch_drill_time_to_{milestone}")
        reached = next(o for o in final.objectives if o.milestone == milestone)
        assert attributes == labels and seconds == pytest.approx(reached.elapsed_seconds, abs=0.001)
    objectives = [(attributes["milestone"], attributes["result"]) for _, attributes in metered.recorded("stanch_drill_objective")]
    assert objectives == [("acknowledge", "met"), ("contain", "missed"), ("restore", "met")]
    assert set(DRILL_TIME_TO.values()) <= set(INCIDENT_CLOCKS), "the worker gives a drill's clocks the incident clocks' buckets"
