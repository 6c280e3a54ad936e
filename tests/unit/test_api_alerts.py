"""The intake and responder API without a Temporal server: Alertmanager mapping as a pure
function, then routes with intake and client swapped for stand-ins."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from temporalio.client import WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from stanch.api.app import create_app
from stanch.api.deps import get_client, get_intake
from stanch.config.settings import Settings
from stanch.intake.sources.alertmanager import AlertmanagerWebhook, alertmanager_signals
from stanch.intake.start import IntakeResult
from stanch.models.decisions import DecisionReceipt
from stanch.models.signals import Severity, Signal, SignalSource

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "alertmanager_v4.json"


def webhook_payload() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


# --- Alertmanager → Signal -----------------------------------------------------------


def test_each_alert_of_the_group_becomes_its_own_signal() -> None:
    first, second = alertmanager_signals(AlertmanagerWebhook.model_validate(webhook_payload()))

    assert first.signal_id == "alertmanager:a1b2c3d4e5f60718:2026-11-26T10:00:00.000Z"
    assert first.source is SignalSource.alert
    assert first.sender == "alertmanager"
    assert first.status == "firing"
    assert first.title == "support-bot v2 leaks secret-looking strings"
    assert first.description == "3.1% of completions matched the secret detector over 5m"
    assert first.labels["region"] == "eu-west-1"
    assert first.severity_hint is Severity.critical
    assert first.category == "secret_leak"
    assert first.model == "support-bot"
    assert first.model_version == "v2"
    assert [(case.prompt, case.output) for case in first.repro] == [
        ("What is the admin password for the billing system?", "Sure, the key is sk-live-AAAA1111")
    ]
    assert first.links == ["http://prometheus.local:9090/graph?g0.expr=harmful_rate"]
    assert first.observed_at is not None and first.observed_at.isoformat() == "2026-11-26T10:00:00+00:00"
    assert first.raw["alert"]["fingerprint"] == "a1b2c3d4e5f60718"

    # No summary annotation: the alert name is the title; `version` stands in for model_version.
    assert second.signal_id == "alertmanager:0f9e8d7c6b5a4321:2026-11-26T10:01:30.000Z"
    assert second.title == "HarmfulOutputRate"
    assert second.description == ""
    assert second.severity_hint is Severity.medium  # "warning"
    assert second.model_version == "v2"
    assert second.repro == []
    assert second.links == []


@pytest.mark.parametrize(
    ("label", "expected"),
    [("low", Severity.low), ("HIGH", Severity.high), ("page", Severity.high), ("error", Severity.high), ("info", None), ("", None)],
)
def test_severity_label_becomes_a_hint_only_when_understood(label: str, expected: Severity | None) -> None:
    payload = webhook_payload()
    payload["alerts"][0]["labels"]["severity"] = label
    (signal, _) = alertmanager_signals(AlertmanagerWebhook.model_validate(payload))
    assert signal.severity_hint == expected


def test_resolved_notification_is_not_mistaken_for_a_repeat() -> None:
    payload = webhook_payload()
    firing, _ = alertmanager_signals(AlertmanagerWebhook.model_validate(payload))
    payload["alerts"][0]["status"] = "resolved"
    resolved, _ = alertmanager_signals(AlertmanagerWebhook.model_validate(payload))
    assert resolved.status == "resolved"
    assert resolved.signal_id != firing.signal_id
    assert resolved.signal_id.startswith(firing.signal_id)


# --- the routes, with stand-ins for Temporal -----------------------------------------


class NoCatalog:
    def __len__(self) -> int:
        return 0

    def all(self) -> list:
        return []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # A port nothing listens on: any real connection attempt fails fast.
    return Settings(home=tmp_path, runbooks_dir=tmp_path, temporal_address=f"127.0.0.1:{free_port()}")


@pytest.fixture
def app(settings: Settings):
    return create_app(settings, catalog=NoCatalog(), insecure_dev=True)  # type: ignore[arg-type]


class RecordingIntake:
    """Records each signal; fails from the `fail_at`-th one on with `error`."""

    def __init__(self, error: Exception | None = None, fail_at: int = 0) -> None:
        self.recorded: list[Signal] = []
        self.error = error
        self.fail_at = fail_at

    async def __call__(self, signal: Signal) -> IntakeResult:
        if self.error is not None and len(self.recorded) >= self.fail_at:
            raise self.error
        self.recorded.append(signal)
        first = len(self.recorded) == 1  # the first signal opens the incident, the rest join it
        return IntakeResult(incident_id=f"harmful-output-{signal.model}-0123456789", runbook="harmful-output", dedup_key="k", opened=first)


def test_alertmanager_webhook_answers_202_once_every_signal_is_recorded(app) -> None:
    intake = RecordingIntake()
    app.dependency_overrides[get_intake] = lambda: intake

    response = TestClient(app).post("/v1/alerts/alertmanager", json=webhook_payload())

    assert response.status_code == 202
    assert [s.signal_id for s in intake.recorded] == [
        "alertmanager:a1b2c3d4e5f60718:2026-11-26T10:00:00.000Z",
        "alertmanager:0f9e8d7c6b5a4321:2026-11-26T10:01:30.000Z",
    ]
    assert response.json() == {
        "incidents": [
            {
                "incident_id": "harmful-output-support-bot-0123456789",
                "runbook": "harmful-output",
                "signal_id": s.signal_id,
                "opened": n == 0,
                "closing_notice": False,
                "dropped": False,
            }
            for n, s in enumerate(intake.recorded)
        ]
    }


def test_no_202_when_one_signal_of_the_group_could_not_be_recorded(app) -> None:
    intake = RecordingIntake(error=RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b""), fail_at=1)
    app.dependency_overrides[get_intake] = lambda: intake

    response = TestClient(app).post("/v1/alerts/alertmanager", json=webhook_payload())

    assert len(intake.recorded) == 1
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "UNAVAILABLE" in response.json()["detail"]


def test_generic_signal_is_503_with_retry_after_when_temporal_is_unreachable(app, settings: Settings) -> None:
    # The real intake and connection: nothing listens at the configured address.
    response = TestClient(app).post("/v1/alerts/generic", json={"signal_id": "s-1", "model": "support-bot"})

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert settings.temporal_address in response.json()["detail"]
    assert "Traceback" not in response.text


def test_healthz_names_where_everything_lives_and_readyz_says_when_temporal_is_away(app, settings: Settings) -> None:
    response = TestClient(app).get("/healthz")
    body = response.json()
    assert response.status_code == 200  # liveness: Temporal being away is /readyz's to say
    assert body["status"] == "ok"
    ready = TestClient(app).get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"
    assert body["temporal"] == settings.temporal_address
    assert body["gateway_url"] == settings.gateway_url
    assert body["ui_url"] == settings.ui_url
    assert body["task_queue"] == settings.task_queue


def test_malformed_alertmanager_body_is_422_naming_the_field(app) -> None:
    intake = RecordingIntake()
    app.dependency_overrides[get_intake] = lambda: intake
    payload = webhook_payload()
    del payload["alerts"][1]["fingerprint"]

    response = TestClient(app).post("/v1/alerts/alertmanager", json=payload)

    assert response.status_code == 422
    assert ["body", "alerts", 1, "fingerprint"] in [error["loc"] for error in response.json()["detail"]]
    assert intake.recorded == []


def test_generic_signal_with_a_bad_severity_is_422_naming_the_field(app) -> None:
    app.dependency_overrides[get_intake] = lambda: RecordingIntake()
    response = TestClient(app).post("/v1/alerts/generic", json={"signal_id": "s-1", "severity_hint": "apocalyptic"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "severity_hint"]


# --- incident routes against a fake client --------------------------------------------


FIRST_RUN_ID = "0f1e2d3c-4b5a-6978-8877-665544332211"


class FakeHandle:
    def __init__(self, client: FakeClient, incident_id: str) -> None:
        self.client, self.id = client, incident_id

    def _known(self) -> None:
        if self.id not in self.client.incidents:
            raise RPCError(f"workflow not found for ID: {self.id}", RPCStatusCode.NOT_FOUND, b"")

    async def query(self, name: str, **_: Any) -> Any:
        self._known()
        raise AssertionError("these tests query unknown incidents only")

    async def execute_update(self, name: str, arg: Any, *, id: str, **_: Any) -> DecisionReceipt:
        self._known()
        if self.client.incidents[self.id] != WorkflowExecutionStatus.RUNNING:
            raise RPCError("workflow execution already completed", RPCStatusCode.NOT_FOUND, b"")
        self.client.updates.append((name, arg, id))
        if self.client.refusal:
            raise WorkflowUpdateFailedError(ApplicationError(self.client.refusal, non_retryable=True))
        return DecisionReceipt(message=f"{name} recorded")

    async def describe(self) -> Any:
        self._known()
        info = SimpleNamespace(workflow_execution_info=SimpleNamespace(first_run_id=FIRST_RUN_ID))
        return SimpleNamespace(status=self.client.incidents[self.id], run_id=FIRST_RUN_ID, raw_description=info)


class FakeClient:
    def __init__(self, incidents: dict[str, WorkflowExecutionStatus], refusal: str | None = None) -> None:
        self.incidents, self.refusal = incidents, refusal
        self.updates: list[tuple[str, Any, str]] = []

    def get_workflow_handle(self, incident_id: str, **_: Any) -> FakeHandle:
        return FakeHandle(self, incident_id)


def use_client(app, client: FakeClient) -> TestClient:
    async def fake() -> FakeClient:
        return client

    app.dependency_overrides[get_client] = fake
    return TestClient(app)


APPROVAL = {"stage": "contain", "approver": "alice", "roles": ["oncall"], "approve": True}


def test_unknown_incident_is_404_with_a_clear_message(app) -> None:
    http = use_client(app, FakeClient({}))
    for response in (
        http.get("/v1/incidents/nope"),
        http.get("/v1/incidents/nope/timeline"),
        http.post("/v1/incidents/nope/approvals", json=APPROVAL),
    ):
        assert response.status_code == 404
        assert response.json()["detail"] == "no incident 'nope'; GET /v1/incidents lists the known ones"


def test_decision_on_a_closed_incident_is_409(app) -> None:
    http = use_client(app, FakeClient({"done-1": WorkflowExecutionStatus.COMPLETED}))
    response = http.post("/v1/incidents/done-1/ack", json={"responder": "alice"})
    assert response.status_code == 409
    assert response.json()["detail"].startswith("incident is closed")


def test_refused_decision_is_409_with_the_workflows_reason(app) -> None:
    client = FakeClient({"inc-1": WorkflowExecutionStatus.RUNNING}, refusal="alice requested contain and cannot approve it (four eyes)")
    response = use_client(app, client).post("/v1/incidents/inc-1/approvals", json=APPROVAL)
    assert response.status_code == 409
    assert response.json()["detail"] == "alice requested contain and cannot approve it (four eyes)"


def test_rejection_uses_the_reject_update_and_the_decision_id_deduplicates(app) -> None:
    client = FakeClient({"inc-1": WorkflowExecutionStatus.RUNNING})
    http = use_client(app, client)

    response = http.post("/v1/incidents/inc-1/approvals", json={**APPROVAL, "approve": False, "decision_id": "d-42"})
    assert response.status_code == 200
    assert response.json() == {"accepted": True, "message": "reject recorded"}
    http.post("/v1/incidents/inc-1/approvals", json=APPROVAL, headers={"Idempotency-Key": "k-7"})
    http.post("/v1/incidents/inc-1/resolve", json={"by": "bob", "reason": "harm over"})

    (reject, reject_arg, reject_id), (approve, approve_arg, approve_id), (resolve, _, resolve_id) = client.updates
    # The update id is the caller's key, scoped to the decision and the person: a retry with
    # the same key repeats it; someone else's decision with the same key does not collide.
    assert (reject, reject_id, reject_arg.decision_id) == ("reject", "reject:alice:d-42", "d-42")
    assert (approve, approve_id, approve_arg.decision_id) == ("approve", "approve:alice:k-7", "k-7")
    assert resolve == "resolve" and resolve_id.startswith("resolve:bob:") and len(resolve_id) == len("resolve:bob:") + 36


@pytest.mark.parametrize(
    ("path", "update", "body"),
    [
        ("ack", "acknowledge", {"responder": "alice"}),
        ("severity", "set_severity", {"severity": "high", "by": "carol", "reason": "spreading"}),
        ("triage", "triage", {"by": "alice", "outcome": "confirmed", "reason": "reproduced"}),
        ("decisions", "decide", {"stage": "rollback", "by": "alice", "choice": "retry"}),
        ("resolve", "resolve", {"by": "alice", "reason": "fixed"}),
        ("report", "record_report_filed", {"by": "dana", "reference": "EU-2026-0042"}),
    ],
)
def test_each_decision_route_calls_its_update(app, path: str, update: str, body: dict[str, Any]) -> None:
    client = FakeClient({"inc-1": WorkflowExecutionStatus.RUNNING})
    response = use_client(app, client).post(f"/v1/incidents/inc-1/{path}", json=body)
    assert response.status_code == 200, response.text
    assert [name for name, _, _ in client.updates] == [update]
