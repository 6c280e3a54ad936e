"""Closing notices (resolved, acknowledged) are not new harm: they reach the incident open for
their alert as a plain signal, and with none open they are answered 202 and dropped, counted.

The documented example payloads go through the real routes, routing and `open_or_join`; only
Temporal is a stand-in that keeps which incident ids are open, as the server would.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from temporalio.api.workflowservice.v1 import SignalWithStartWorkflowExecutionResponse
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode

from stanch.api.app import create_app
from stanch.config.settings import Settings
from stanch.intake.sources import examples
from stanch.intake.sources.cloudevents import event_status
from stanch.intake.sources.pagerduty import PagerDutyFollowUp, pagerduty_signals
from stanch.intake.start import open_or_join
from stanch.models.signals import Signal
from stanch.runbooks.loader import default_runbooks_dir, load_catalog

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


class FakeTemporal:
    """Which incident workflows are open, and what each was sent: signal-with-start opens one
    (or joins it), a plain signal reaches an open one or is NOT_FOUND, as on a real server."""

    namespace = "default"
    identity = "test"
    data_converter = pydantic_data_converter

    def __init__(self) -> None:
        self.open: dict[str, list[Signal]] = {}
        self.started: list[str] = []
        self.plain_signals: list[tuple[str, str]] = []
        self.down = False
        outer = self

        class Service:
            async def signal_with_start_workflow_execution(self, request, **_):
                [signal] = await outer.data_converter.decode(request.signal_input.payloads, [Signal])
                opened = request.workflow_id not in outer.open
                if opened:
                    outer.started.append(request.workflow_id)
                outer.open.setdefault(request.workflow_id, []).append(signal)
                return SignalWithStartWorkflowExecutionResponse(run_id="run-1", started=opened)

        self.workflow_service = Service()

    def close(self, incident_id: str) -> None:
        del self.open[incident_id]

    def get_workflow_handle(self, workflow_id: str, *, run_id: str | None = None) -> FakeHandle:
        return FakeHandle(self, workflow_id)


class FakeHandle:
    def __init__(self, temporal: FakeTemporal, workflow_id: str) -> None:
        self.temporal = temporal
        self.id = workflow_id

    async def signal(self, name: str, arg: Signal) -> None:
        if self.temporal.down:
            raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")
        if self.id not in self.temporal.open:
            # What the server says for an id never used and for one whose run has completed.
            raise RPCError("workflow execution already completed", RPCStatusCode.NOT_FOUND, b"")
        self.temporal.plain_signals.append((self.id, name))
        self.temporal.open[self.id].append(arg)


class FakeConnection:
    def __init__(self, temporal: FakeTemporal) -> None:
        self.temporal = temporal
        self.address = "fake:7233"
        self.connected = True

    async def client(self) -> FakeTemporal:
        return self.temporal


@pytest.fixture
def temporal() -> FakeTemporal:
    return FakeTemporal()


@pytest.fixture
def http(tmp_path: Path, temporal: FakeTemporal) -> TestClient:
    app = create_app(Settings(home=tmp_path), catalog=load_catalog(default_runbooks_dir()), insecure_dev=True)
    app.state.temporal = FakeConnection(temporal)
    return TestClient(app)


# One documented example per sender, and the same alert's closing notices.
def grafana_resolved() -> dict[str, Any]:
    body = copy.deepcopy(examples.GRAFANA)
    body["status"] = body["alerts"][0]["status"] = "resolved"
    return body


def pagerduty_follow_up(action: str) -> dict[str, Any]:
    body = copy.deepcopy(examples.PAGERDUTY)
    body["event_action"] = action
    body["payload"]["timestamp"] = "2026-11-26T10:30:00.000+0000"
    return body


def sentry_resolved() -> dict[str, Any]:
    body = copy.deepcopy(examples.SENTRY_METRIC_ALERT)
    body["action"] = "resolved"
    return body


def cloudevent_closing(status: str) -> dict[str, Any]:
    body = copy.deepcopy(examples.CLOUDEVENT)
    body["id"] = f"evt-0001-{status}"
    body["data"]["status"] = status
    return body


CE_HEADERS = {"Content-Type": "application/cloudevents+json"}
SENDERS: dict[str, tuple[str, dict[str, Any], list[dict[str, Any]], dict[str, str]]] = {
    "grafana": ("/v1/alerts/grafana", examples.GRAFANA, [grafana_resolved()], {}),
    "pagerduty": ("/v1/alerts/pagerduty", examples.PAGERDUTY, [pagerduty_follow_up("acknowledge"), pagerduty_follow_up("resolve")], {}),
    "sentry": ("/v1/alerts/sentry", examples.SENTRY_METRIC_ALERT, [sentry_resolved()], {}),
    "cloudevents": (
        "/v1/alerts/cloudevents",
        examples.CLOUDEVENT,
        [cloudevent_closing("acknowledged"), cloudevent_closing("resolved")],
        CE_HEADERS,
    ),
}


def post(http: TestClient, path: str, body: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    answer = http.post(path, content=json.dumps(body), headers={"Content-Type": "application/json", **headers})
    assert answer.status_code == 202, answer.text
    return answer.json()["incidents"]


def dropped_count(http: TestClient, source: str) -> float:
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "stanch_closing_notices_dropped_total" and sample.labels == {"source": source}:
                return sample.value
    raise AssertionError("stanch_closing_notices_dropped_total is not exported")


@pytest.mark.parametrize("sender", SENDERS)
def test_a_closing_notice_with_no_open_incident_is_answered_202_dropped_and_counted(
    http: TestClient, temporal: FakeTemporal, sender: str
) -> None:
    path, _, notices, headers = SENDERS[sender]
    for notice in notices:
        [answer] = post(http, path, notice, headers)
        assert (answer["opened"], answer["closing_notice"], answer["dropped"]) == (False, True, True)
    assert temporal.started == [] and temporal.open == {}
    assert dropped_count(http, sender) == len(notices)


@pytest.mark.parametrize("sender", SENDERS)
def test_the_example_opens_an_incident_and_its_closing_notices_reach_it_without_opening_another(
    http: TestClient, temporal: FakeTemporal, sender: str
) -> None:
    path, example, notices, headers = SENDERS[sender]
    [fired] = post(http, path, example, headers)
    assert fired["opened"] is True and fired["closing_notice"] is False
    for notice in notices:
        [answer] = post(http, path, notice, headers)
        assert answer["incident_id"] == fired["incident_id"]
        assert (answer["opened"], answer["closing_notice"], answer["dropped"]) == (False, True, False)
    # One incident, opened by the alert; every notice went to it as a plain signal.
    assert temporal.started == [fired["incident_id"]]
    assert temporal.plain_signals == [(fired["incident_id"], "add_signal")] * len(notices)
    recorded = temporal.open[fired["incident_id"]]
    assert [signal.is_closing_notice for signal in recorded] == [False] + [True] * len(notices)
    assert dropped_count(http, sender) == 0


@pytest.mark.parametrize("sender", SENDERS)
def test_a_closing_notice_after_the_incident_closed_opens_nothing(http: TestClient, temporal: FakeTemporal, sender: str) -> None:
    path, example, notices, headers = SENDERS[sender]
    [fired] = post(http, path, example, headers)
    temporal.close(fired["incident_id"])
    [answer] = post(http, path, notices[-1], headers)
    assert (answer["incident_id"], answer["opened"], answer["dropped"]) == (fired["incident_id"], False, True)
    assert temporal.started == [fired["incident_id"]] and temporal.open == {}


def test_each_alert_of_an_alertmanager_batch_is_handled_by_its_own_status(http: TestClient, temporal: FakeTemporal) -> None:
    batch = json.loads((FIXTURES / "alertmanager_v4.json").read_text())
    first, second = batch["alerts"]
    second = {**second, "labels": {**second["labels"], "alertname": "HarmfulOutputSecret"}}  # its own incident
    opened = post(http, "/v1/alerts/alertmanager", {**batch, "alerts": [first, second]}, {})
    assert [answer["opened"] for answer in opened] == [True, True]

    temporal.close(opened[0]["incident_id"])
    third = {**first, "labels": {**first["labels"], "alertname": "HarmfulOutputNew"}, "fingerprint": "feedfacecafe0001"}
    # The first is resolved (its incident has closed), the second resolved (its incident is
    # open), the third fires anew: one drop, one notice recorded, one incident opened.
    resolved = [{**first, "status": "resolved"}, {**second, "status": "resolved"}, third]
    answers = post(http, "/v1/alerts/alertmanager", {**batch, "status": "resolved", "alerts": resolved}, {})
    assert [(a["closing_notice"], a["dropped"], a["opened"]) for a in answers] == [
        (True, True, False),
        (True, False, False),
        (False, False, True),
    ]
    assert temporal.plain_signals == [(answers[1]["incident_id"], "add_signal")]
    assert answers[2]["incident_id"] in temporal.started and answers[0]["incident_id"] not in temporal.open
    assert dropped_count(http, "alertmanager") == 1


def test_temporal_being_away_for_a_closing_notice_is_a_503_not_a_drop(http: TestClient, temporal: FakeTemporal) -> None:
    temporal.down = True
    answer = http.post("/v1/alerts/sentry", json=sentry_resolved())
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert dropped_count(http, "sentry") == 0


async def test_open_or_join_never_signal_with_starts_a_closing_notice(temporal: FakeTemporal) -> None:
    [notice] = pagerduty_signals(PagerDutyFollowUp.model_validate(pagerduty_follow_up("resolve")))
    result = await open_or_join(temporal, load_catalog(default_runbooks_dir()), notice, task_queue="tq")  # type: ignore[arg-type]
    assert (result.closing_notice, result.dropped, result.opened) == (True, True, False)
    assert temporal.started == []


def test_an_incident_prefix_goes_before_every_incident_id(tmp_path: Path, temporal: FakeTemporal) -> None:
    app = create_app(
        Settings(home=tmp_path, incident_prefix="stanch-dev-alice-"), catalog=load_catalog(default_runbooks_dir()), insecure_dev=True
    )
    app.state.temporal = FakeConnection(temporal)
    http = TestClient(app)
    [fired] = post(http, "/v1/alerts/grafana", examples.GRAFANA, {})
    [notice] = post(http, "/v1/alerts/grafana", grafana_resolved(), {})
    assert fired["incident_id"].startswith("stanch-dev-alice-harmful-output-")
    assert notice["incident_id"] == fired["incident_id"] and notice["dropped"] is False


@pytest.mark.parametrize(
    ("event_type", "status", "expected"),
    [
        ("com.example.guardrail.violation", None, "firing"),
        ("com.example.guardrail.violation", "resolved", "resolved"),
        ("com.example.guardrail.violation", "Acknowledge", "acknowledged"),
        ("com.example.guardrail.violation", "firing", "firing"),
        ("com.example.guardrail.violation", "bogus", "firing"),
        ("com.example.guardrail.violation.resolved", None, "resolved"),
        ("com.example.guardrail.violation.acknowledged", None, "acknowledged"),
        ("com.example.guardrail.violation.resolved", "firing", "firing"),  # data.status wins
    ],
)
def test_a_cloudevent_is_a_closing_notice_by_its_data_status_or_its_type(event_type: str, status: str | None, expected: str) -> None:
    assert event_status(event_type, {} if status is None else {"status": status}) == expected
