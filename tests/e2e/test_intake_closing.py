"""Closing notices end to end: the documented examples of Grafana, PagerDuty, Sentry and
CloudEvents open incidents; their resolve and acknowledge notices open none. Real dev server,
worker and API processes over real HTTP; Temporal's own history shows what reached whom.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus

from stanch.intake.sources import examples
from tests.e2e.processes import wait_for
from tests.e2e.test_intake import Stack

pytestmark = pytest.mark.e2e

CE = {"Content-Type": "application/cloudevents+json"}


# (source, body, headers): the same alerts' documented closing notices, sender by sender.
HARMFUL_OUTPUT_NOTICES = [
    ("grafana", examples.GRAFANA_RESOLVED, {}),
    ("pagerduty", examples.PAGERDUTY_ACKNOWLEDGE, {}),
    ("pagerduty", examples.PAGERDUTY_RESOLVE, {}),
    ("sentry", examples.SENTRY_METRIC_ALERT_RESOLVED, {}),
]
CLOUDEVENT_NOTICES = [("cloudevents", examples.CLOUDEVENT_ACKNOWLEDGED, CE), ("cloudevents", examples.CLOUDEVENT_RESOLVED, CE)]


def send(stack: Stack, source: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    answer = httpx.post(f"{stack.api}/v1/alerts/{source}", json=body, headers=headers, timeout=30)
    assert answer.status_code == 202, answer.text
    [incident] = answer.json()["incidents"]
    return incident


async def signals_received(address: str, incident_id: str) -> int:
    """How many signals the incident's current run was sent, by Temporal's own history."""
    client = await Client.connect(address)
    history = await client.get_workflow_handle(incident_id).fetch_history()
    return sum(1 for event in history.events if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)


async def terminate(address: str, incident_id: str) -> None:
    client = await Client.connect(address)
    await client.get_workflow_handle(incident_id).terminate(reason="the test closes it")


async def latest_status(address: str, incident_id: str) -> tuple[str, WorkflowExecutionStatus | None]:
    """The run id and status of the latest run under the id."""
    client = await Client.connect(address)
    description = await client.get_workflow_handle(incident_id).describe()
    return description.run_id, description.status


def dropped(stack: Stack, source: str) -> float:
    for line in httpx.get(f"{stack.api}/metrics", timeout=10).text.splitlines():
        if line.startswith(f'stanch_closing_notices_dropped_total{{source="{source}"}}'):
            return float(line.split()[-1])
    raise AssertionError("stanch_closing_notices_dropped_total is not exported")


def test_examples_open_incidents_and_their_closing_notices_open_none(tmp_path):
    with Stack(tmp_path) as stack:
        address = stack.env["TEMPORAL_ADDRESS"]
        notices = HARMFUL_OUTPUT_NOTICES + CLOUDEVENT_NOTICES

        # Nothing open yet: every notice is answered 202 and dropped, and opens nothing.
        for source, body, headers in notices:
            answer = send(stack, source, body, headers)
            assert (answer["closing_notice"], answer["dropped"], answer["opened"]) == (True, True, False), (source, answer)
            assert httpx.get(f"{stack.api}/v1/incidents/{answer['incident_id']}", timeout=15).status_code == 404
        assert (dropped(stack, "grafana"), dropped(stack, "pagerduty"), dropped(stack, "sentry"), dropped(stack, "cloudevents")) == (
            1,
            2,
            1,
            2,
        )

        # The documented examples: Grafana's opens the harmful-output incident, PagerDuty's and
        # Sentry's (the same alert rule on the same model) join it; the CloudEvent opens its own.
        grafana = send(stack, "grafana", examples.GRAFANA, {})
        assert grafana["opened"] is True
        for source, body in (("pagerduty", examples.PAGERDUTY), ("sentry", examples.SENTRY_METRIC_ALERT)):
            joined = send(stack, source, body, {})
            assert (joined["incident_id"], joined["opened"]) == (grafana["incident_id"], False)
        guardrail = send(stack, "cloudevents", examples.CLOUDEVENT, CE)
        assert guardrail["opened"] is True and guardrail["incident_id"] != grafana["incident_id"]

        # Now every notice reaches its open incident, and none opens another.
        owners = [grafana["incident_id"]] * len(HARMFUL_OUTPUT_NOTICES) + [guardrail["incident_id"]] * len(CLOUDEVENT_NOTICES)
        for (source, body, headers), expected in zip(notices, owners, strict=True):
            answer = send(stack, source, body, headers)
            assert (answer["incident_id"], answer["closing_notice"], answer["dropped"], answer["opened"]) == (expected, True, False, False)
        # A signal that arrives while the worker runs a workflow task is buffered, and in history
        # once that task completes: count until the history shows them all.
        for incident_id, expected in (
            (grafana["incident_id"], 3 + len(HARMFUL_OUTPUT_NOTICES)),
            (guardrail["incident_id"], 1 + len(CLOUDEVENT_NOTICES)),
        ):
            assert wait_for(lambda: asyncio.run(signals_received(address, incident_id)), lambda n: n >= expected, timeout=30) == expected  # noqa: B023
        listed = wait_for(
            lambda: {item["id"] for item in httpx.get(f"{stack.api}/v1/incidents", timeout=15).json()},
            lambda ids: len(ids) >= 2,
            timeout=30,
        )
        assert listed == {grafana["incident_id"], guardrail["incident_id"]}

        # Once the incident is closed, a late notice is dropped: no new run under its id.
        asyncio.run(terminate(address, guardrail["incident_id"]))
        closed = asyncio.run(latest_status(address, guardrail["incident_id"]))
        assert closed[1] == WorkflowExecutionStatus.TERMINATED
        late = send(stack, "cloudevents", {**examples.CLOUDEVENT_RESOLVED, "id": "evt-0002-late"}, CE)
        assert (late["incident_id"], late["dropped"], late["opened"]) == (guardrail["incident_id"], True, False)
        assert asyncio.run(latest_status(address, guardrail["incident_id"])) == closed
        assert dropped(stack, "cloudevents") == 3
