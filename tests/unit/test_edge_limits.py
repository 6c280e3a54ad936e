"""Size limits at the edge: an oversized field is a 413 naming the field and the limit, before
anything reaches Temporal, so a signal can never wedge an incident later (Temporal's 2 MB
payload limit on the evidence input). A responder's decision has its own, smaller body cap."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from temporalio.client import WorkflowExecutionStatus

from stanch.api.app import create_app
from stanch.api.deps import get_client, get_intake
from stanch.config.settings import Settings
from stanch.intake.start import IntakeResult
from stanch.models.decisions import DecisionReceipt
from stanch.models.signals import Signal
from tests.unit.test_api_alerts import NoCatalog

# The documented limits (README, Intake); stanch.intake.sources.limits holds them.
MAX_TEXT_BYTES = 32 * 1024  # one free-text value
MAX_FIELDS_BYTES = 64 * 1024  # an alert's labels, or its annotations, in total
MAX_SIGNAL_BYTES = 256 * 1024  # one signal as recorded, the sender's payload included


class RecordingIntake:
    def __init__(self) -> None:
        self.recorded: list[Signal] = []

    async def __call__(self, signal: Signal) -> IntakeResult:
        self.recorded.append(signal)
        return IntakeResult(incident_id="inc-1", runbook="harmful-output", dedup_key="k", opened=len(self.recorded) == 1)


@pytest.fixture
def intake() -> RecordingIntake:
    return RecordingIntake()


@pytest.fixture
def app(tmp_path: Path, intake: RecordingIntake):
    app = create_app(Settings(home=tmp_path, runbooks_dir=tmp_path), catalog=NoCatalog(), insecure_dev=True)  # type: ignore[arg-type]
    app.dependency_overrides[get_intake] = lambda: intake
    return app


@pytest.fixture
def http(app) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


def refused(answer: Any, source: str, field: str, size: int, limit: int, *, total: bool = False) -> None:
    assert answer.status_code == 413, answer.text
    in_total = " in total" if total else ""
    assert answer.json()["detail"].startswith(f"{source}: `{field}` is {size} bytes{in_total}; the limit is {limit} bytes")


REPORT = {"reporter": "agent-7", "surface": "support-chat", "model": "support-bot"}
FINDING = {"auditor": "red-team", "control": "no-secrets", "severity": "high"}


def alertmanager(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "alerts": [
            {"labels": {"alertname": "HarmfulOutput", "model": "support-bot"}, "startsAt": "2026-11-26T10:00:00Z", "fingerprint": f"fp{n}"}
            | alert
            for n, alert in enumerate(alerts)
        ],
    }


def test_the_limits_are_named_constants_in_one_place() -> None:
    from stanch.intake.sources import limits

    assert (limits.MAX_TEXT_BYTES, limits.MAX_FIELDS_BYTES, limits.MAX_SIGNAL_BYTES) == (MAX_TEXT_BYTES, MAX_FIELDS_BYTES, MAX_SIGNAL_BYTES)


# --- reports and findings ---------------------------------------------------------------


def test_a_600_kb_report_text_is_413_naming_the_field_and_the_limit(http: TestClient, intake: RecordingIntake) -> None:
    answer = http.post("/v1/reports", json={**REPORT, "text": "x" * 600_000})
    refused(answer, "reports", "text", 600_000, MAX_TEXT_BYTES)
    assert intake.recorded == []


def test_report_excerpts_are_limited_in_bytes_not_characters(http: TestClient, intake: RecordingIntake) -> None:
    at_limit = http.post("/v1/reports", json={**REPORT, "prompt_excerpt": "x" * MAX_TEXT_BYTES, "text": "leaked a key"})
    assert at_limit.status_code == 202, at_limit.text
    # 16,385 characters, 32,770 bytes in UTF-8: under any character limit, over the byte limit.
    accented = "é" * (MAX_TEXT_BYTES // 2 + 1)
    answer = http.post("/v1/reports", json={**REPORT, "response_excerpt": accented, "text": "leaked a key"})
    refused(answer, "reports", "response_excerpt", len(accented.encode()), MAX_TEXT_BYTES)
    assert len(intake.recorded) == 1


def test_a_findings_summary_evidence_and_prompts_are_limited(http: TestClient, intake: RecordingIntake) -> None:
    big = "y" * (MAX_TEXT_BYTES + 1)
    refused(http.post("/v1/findings", json={**FINDING, "summary": big}), "findings", "summary", len(big), MAX_TEXT_BYTES)
    refused(
        http.post("/v1/findings", json={**FINDING, "evidence": ["https://example.test/run/1", big]}),
        "findings",
        "evidence[1]",
        len(big),
        MAX_TEXT_BYTES,
    )
    refused(http.post("/v1/findings", json={**FINDING, "repro_prompts": [big]}), "findings", "repro_prompts[0]", len(big), MAX_TEXT_BYTES)
    # Each piece fits, but the summary and the evidence texts become one description.
    half = "z" * (MAX_TEXT_BYTES // 2)
    answer = http.post("/v1/findings", json={**FINDING, "summary": half, "evidence": [half, half]})
    assert answer.status_code == 413
    assert answer.json()["detail"].startswith("findings: `summary` with the texts of `evidence` is ")
    assert intake.recorded == []


# --- alerts ---------------------------------------------------------------------------


def test_an_alerts_annotation_is_limited_per_value_and_nothing_of_the_group_is_recorded(http: TestClient, intake: RecordingIntake) -> None:
    huge = "d" * 100_000
    payload = alertmanager({"annotations": {"summary": "fine"}}, {"annotations": {"description": huge}})
    answer = http.post("/v1/alerts/alertmanager", json=payload)
    refused(answer, "alertmanager", "alerts[1].annotations.description", 100_000, MAX_TEXT_BYTES)
    assert intake.recorded == [], "the first alert of the group must not be half-accepted"


def test_an_alerts_annotations_are_limited_in_total(http: TestClient, intake: RecordingIntake) -> None:
    each = "a" * (MAX_TEXT_BYTES - 100)
    annotations = {"description": each, "runbook_notes": each, "repro_output": each}
    total = sum(len(key) + len(value) for key, value in annotations.items())
    answer = http.post("/v1/alerts/alertmanager", json=alertmanager({"annotations": annotations}))
    refused(answer, "alertmanager", "alerts[0].annotations", total, MAX_FIELDS_BYTES, total=True)
    assert intake.recorded == []


def test_grafana_labels_are_limited_too(http: TestClient, intake: RecordingIntake) -> None:
    payload = {**alertmanager({"labels": {"alertname": "X", "query": "q" * 40_000}}), "version": "1", "orgId": 1}
    answer = http.post("/v1/alerts/grafana", json=payload)
    refused(answer, "grafana", "alerts[0].labels.query", 40_000, MAX_TEXT_BYTES)
    assert intake.recorded == []


def test_every_source_is_held_to_the_same_limits_on_the_signal_it_makes(http: TestClient, intake: RecordingIntake) -> None:
    description = http.post("/v1/alerts/generic", json={"signal_id": "s-1", "description": "d" * 50_000})
    refused(description, "generic", "description", 50_000, MAX_TEXT_BYTES)
    label = http.post("/v1/alerts/generic", json={"signal_id": "s-1", "labels": {"note": "n" * 40_000}})
    refused(label, "generic", "labels.note", 40_000, MAX_TEXT_BYTES)
    # PagerDuty's custom_details description becomes the signal's description: the same limit.
    event = {
        "event_action": "trigger",
        "payload": {"summary": "leak", "source": "gw", "severity": "critical", "custom_details": {"description": "p" * 40_000}},
    }
    pagerduty = http.post("/v1/alerts/pagerduty", json=event)
    assert pagerduty.status_code == 413
    assert pagerduty.json()["detail"].startswith("pagerduty: the signal's `description`")
    assert "the limit is 32768 bytes" in pagerduty.json()["detail"]
    assert intake.recorded == []


def test_in_a_batch_the_answer_says_which_signal_and_never_echoes_a_long_key(http: TestClient, intake: RecordingIntake) -> None:
    event = {"specversion": "1.0", "source": "/monitor", "type": "ai.harm"}
    batch = [{**event, "id": "e-1", "data": {"title": "fine"}}, {**event, "id": "e-2", "data": {"description": "d" * 40_000}}]
    answer = http.post("/v1/alerts/cloudevents", json=batch, headers={"content-type": "application/cloudevents-batch+json"})
    assert answer.status_code == 413
    assert answer.json()["detail"].startswith("cloudevents: signal 2 of 2: the signal's `description`")
    key = "k" * 1000
    long_key = http.post("/v1/alerts/generic", json={"signal_id": "s-1", "labels": {key: "v" * 40_000}})
    assert long_key.status_code == 413
    assert key not in long_key.text and f"`labels.{'k' * 64}...` is 40000 bytes" in long_key.json()["detail"]
    assert intake.recorded == []


def test_a_whole_signal_is_limited_with_its_raw_payload(http: TestClient, intake: RecordingIntake) -> None:
    raw = {f"part{n}": "r" * 30_000 for n in range(10)}  # each value is fine; together 300 KB
    answer = http.post("/v1/alerts/generic", json={"signal_id": "s-1", "raw": raw})
    assert answer.status_code == 413
    detail = answer.json()["detail"]
    assert detail.startswith("generic: the signal, as Stanch records it with your payload, is ")
    assert f"the limit is {MAX_SIGNAL_BYTES} bytes" in detail
    assert intake.recorded == []


def test_a_413_for_a_field_counts_as_rejected_too_large(http: TestClient) -> None:
    http.post("/v1/reports", json={**REPORT, "text": "x" * 600_000})
    assert 'stanch_intake_requests_total{outcome="rejected_too_large",source="reports"} 1.0' in http.get("/metrics").text


# --- responders' decisions ----------------------------------------------------------------


class DecidingClient:
    def __init__(self) -> None:
        self.updates: list[str] = []

    def get_workflow_handle(self, incident_id: str, **_: Any) -> Any:
        client = self

        class Handle:
            async def describe(self) -> Any:
                info = SimpleNamespace(workflow_execution_info=SimpleNamespace(first_run_id="0f1e2d3c-run"))
                return SimpleNamespace(status=WorkflowExecutionStatus.RUNNING, run_id="0f1e2d3c-run", raw_description=info)

            async def execute_update(self, name: str, arg: Any, **_: Any) -> DecisionReceipt:
                client.updates.append(name)
                return DecisionReceipt(message=f"{name} recorded")

        return Handle()


def test_a_decision_body_over_64_kib_is_413_naming_the_limit(app) -> None:
    client = DecidingClient()

    async def fake() -> DecidingClient:
        return client

    app.dependency_overrides[get_client] = fake
    http = TestClient(app, raise_server_exceptions=False)
    approval = {"stage": "contain", "approver": "alice", "roles": ["oncall"], "approve": True}

    answer = http.post("/v1/incidents/inc-1/approvals", json={**approval, "comment": "c" * 100_000})
    assert answer.status_code == 413
    assert answer.json()["detail"].startswith("request body is over the 64 KiB limit (65536 bytes) for a responder's decision")
    assert client.updates == []

    assert http.post("/v1/incidents/inc-1/approvals", json={**approval, "comment": "c" * 10_000}).status_code == 200
    assert client.updates == ["approve"]
    # Intake keeps its own, larger limit.
    assert (
        http.post("/v1/alerts/generic", json={"signal_id": "s-1", "raw": {"notes": "n" * 30_000} | {"more": "m" * 30_000}}).status_code
        == 202
    )
