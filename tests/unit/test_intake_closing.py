"""Closing notices (resolved, acknowledged) are not new harm: they reach the incident open for
their alert as a plain signal, and with none open they are answered 202 and dropped, counted.

The documented example payloads go through the real routes, routing and `open_or_join`; only
Temporal is a stand-in that keeps which incident ids are open, as the server would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter
from temporalio.api.workflowservice.v1 import SignalWithStartWorkflowExecutionResponse
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode

from stanch.api.app import create_app
from stanch.config.settings import Settings
from stanch.intake.routing import route_signal
from stanch.intake.sources import examples
from stanch.intake.sources.cloudevents import STRUCTURED_CONTENT_TYPE, cloudevent_signal, event_status, parse_http
from stanch.intake.sources.datadog import DatadogWebhook, datadog_signals
from stanch.intake.sources.grafana import GrafanaWebhook, grafana_signals
from stanch.intake.sources.pagerduty import PagerDutyEvent, PagerDutyFollowUp, pagerduty_signals
from stanch.intake.sources.sentry import SentryMetricAlertWebhook, metric_alert_signals
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


# One documented example per sender, and the same alert's documented closing notices.
CE_HEADERS = {"Content-Type": "application/cloudevents+json"}
SENDERS: dict[str, tuple[str, dict[str, Any], list[dict[str, Any]], dict[str, str]]] = {
    "grafana": ("/v1/alerts/grafana", examples.GRAFANA, [examples.GRAFANA_RESOLVED], {}),
    "pagerduty": ("/v1/alerts/pagerduty", examples.PAGERDUTY, [examples.PAGERDUTY_ACKNOWLEDGE, examples.PAGERDUTY_RESOLVE], {}),
    "sentry": ("/v1/alerts/sentry", examples.SENTRY_METRIC_ALERT, [examples.SENTRY_METRIC_ALERT_RESOLVED], {}),
    "datadog": ("/v1/alerts/datadog", examples.DATADOG, [examples.DATADOG_RECOVERED], {}),
    "cloudevents": (
        "/v1/alerts/cloudevents",
        examples.CLOUDEVENT,
        [examples.CLOUDEVENT_ACKNOWLEDGED, examples.CLOUDEVENT_RESOLVED],
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
    answer = http.post("/v1/alerts/sentry", json=examples.SENTRY_METRIC_ALERT_RESOLVED)
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert dropped_count(http, "sentry") == 0


async def test_open_or_join_never_signal_with_starts_a_closing_notice(temporal: FakeTemporal) -> None:
    [notice] = pagerduty_signals(PagerDutyFollowUp.model_validate(examples.PAGERDUTY_RESOLVE))
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
    [notice] = post(http, "/v1/alerts/grafana", examples.GRAFANA_RESOLVED, {})
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


@pytest.mark.parametrize(
    ("firing", "closing"),
    [
        (examples.GRAFANA, examples.GRAFANA_RESOLVED),
        (examples.PAGERDUTY, examples.PAGERDUTY_ACKNOWLEDGE),
        (examples.PAGERDUTY, examples.PAGERDUTY_RESOLVE),
        (examples.SENTRY_METRIC_ALERT, examples.SENTRY_METRIC_ALERT_RESOLVED),
        (examples.DATADOG, examples.DATADOG_RECOVERED),
        (examples.CLOUDEVENT, examples.CLOUDEVENT_RESOLVED),
        (examples.CLOUDEVENT, examples.CLOUDEVENT_ACKNOWLEDGED),
    ],
)
def test_every_documented_closing_notice_routes_to_its_alerts_incident(firing: dict[str, Any], closing: dict[str, Any]) -> None:
    catalog = load_catalog(default_runbooks_dir())
    [alert], [notice] = signals_of(firing), signals_of(closing)
    assert not alert.is_closing_notice and notice.is_closing_notice
    assert notice.signal_id != alert.signal_id  # never dropped as a repeat of the alert
    assert route_signal(notice, catalog).incident_id == route_signal(alert, catalog).incident_id


def signals_of(body: dict[str, Any]) -> list[Signal]:
    if "orgId" in body:
        return grafana_signals(GrafanaWebhook.model_validate(body))
    if "event_action" in body:
        return pagerduty_signals(TypeAdapter(PagerDutyEvent).validate_python(body))
    if "alert_transition" in body:
        return datadog_signals(DatadogWebhook.model_validate(body))
    if "specversion" in body:
        received = parse_http({"content-type": STRUCTURED_CONTENT_TYPE}, json.dumps(body).encode())
        return [cloudevent_signal(event) for event in received]
    return metric_alert_signals(SentryMetricAlertWebhook.model_validate(body))
