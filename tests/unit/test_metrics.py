"""`GET /metrics`: every intake answer counted by source and outcome, signals routed by
runbook, latency by source — read back through Prometheus' own parser."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from stanch.api.app import create_app
from stanch.api.deps import TemporalUnavailable, get_intake
from stanch.api.metrics import OUTCOMES, outcome_for
from stanch.config.settings import Settings
from stanch.intake.auth import INTAKE_SOURCES, load_intake_auth
from stanch.intake.start import IntakeResult
from stanch.models.signals import Signal

TOKEN = "metrics-test-token"


class NoCatalog:
    def __len__(self) -> int:
        return 0


class ScriptedIntake:
    """Routes signals to `harmful-output`; raises `errors[signal_id]` for the listed ones."""

    def __init__(self, errors: dict[str, Exception] | None = None) -> None:
        self.errors = errors or {}

    async def __call__(self, signal: Signal) -> IntakeResult:
        if signal.signal_id in self.errors:
            raise self.errors[signal.signal_id]
        return IntakeResult(incident_id="harmful-output-support-bot-1", runbook="harmful-output", dedup_key="k")


@pytest.fixture
def http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("T_TOKEN", TOKEN)
    path = tmp_path / "intake-auth.yaml"
    sources = {name: {"enabled": False} for name in INTAKE_SOURCES}
    path.write_text(yaml.safe_dump({**sources, "generic": [{"bearer": {"token_env": "T_TOKEN"}}]}))
    policy = load_intake_auth(path, explicit=True, insecure_dev=False)
    app = create_app(Settings(home=tmp_path, runbooks_dir=tmp_path), catalog=NoCatalog(), intake_auth=policy, insecure_dev=True)  # type: ignore[arg-type]
    app.dependency_overrides[get_intake] = lambda: ScriptedIntake(
        {"down": TemporalUnavailable("cannot reach Temporal"), "bug": RuntimeError("boom")}
    )
    return TestClient(app, raise_server_exceptions=False)


def samples(http: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    answer = http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def requests(values, source: str, outcome: str) -> float:
    return values[("stanch_intake_requests_total", frozenset({("source", source), ("outcome", outcome)}))]


def test_metrics_count_every_outcome_and_time_every_intake_request(http: TestClient) -> None:
    authorized = {"Authorization": f"Bearer {TOKEN}"}
    assert http.post("/v1/alerts/generic", json={"signal_id": "ok"}, headers=authorized).status_code == 202
    assert http.post("/v1/alerts/generic", json={"signal_id": "ok"}, headers={"Authorization": "Bearer guess"}).status_code == 401
    assert http.post("/v1/alerts/generic", json={"signal_id": "ok"}).status_code == 401
    assert http.post("/v1/alerts/generic", json={"severity_hint": "apocalyptic"}, headers=authorized).status_code == 422
    assert http.post("/v1/alerts/generic", content=b"x" * (1024 * 1024 + 1), headers=authorized).status_code == 413
    assert http.post("/v1/alerts/generic", json={"signal_id": "down"}, headers=authorized).status_code == 503
    assert http.post("/v1/alerts/generic", json={"signal_id": "bug"}, headers=authorized).status_code == 500
    assert http.post("/v1/alerts/alertmanager", json={}).status_code == 404  # disabled
    assert http.post("/v1/alerts/nagios", json={}).status_code == 404  # unknown
    http.get("/healthz")  # not intake: not counted

    values = samples(http)
    assert requests(values, "generic", "accepted") == 1
    assert requests(values, "generic", "rejected_auth") == 2
    assert requests(values, "generic", "rejected_invalid") == 1
    assert requests(values, "generic", "rejected_too_large") == 1
    assert requests(values, "generic", "temporal_unavailable") == 1
    assert requests(values, "generic", "error") == 1
    assert requests(values, "alertmanager", "rejected_unknown_source") == 1
    assert requests(values, "unknown", "rejected_unknown_source") == 1  # never the path: no series minted by callers
    assert not any(("source", "nagios") in labels for _, labels in values)
    assert requests(values, "sentry", "accepted") == 0  # known series exist before their first delivery

    routed = frozenset({("source", "generic"), ("runbook", "harmful-output")})
    assert values[("stanch_signals_routed_total", routed)] == 1

    generic = frozenset({("source", "generic")})
    assert values[("stanch_intake_latency_seconds_count", generic)] == 7
    assert values[("stanch_intake_latency_seconds_bucket", generic | {("le", "+Inf")})] == 7
    assert values[("stanch_intake_latency_seconds_sum", generic)] > 0
    assert ("stanch_intake_latency_seconds_bucket", generic | {("le", "0.005")}) in values


def test_each_app_keeps_its_own_numbers(http: TestClient, tmp_path: Path) -> None:
    http.post("/v1/alerts/generic", json={"signal_id": "ok"})
    other = TestClient(create_app(Settings(home=tmp_path, runbooks_dir=tmp_path), catalog=NoCatalog(), insecure_dev=True))  # type: ignore[arg-type]
    assert requests(samples(http), "generic", "rejected_auth") == 1
    assert requests(samples(other), "generic", "rejected_auth") == 0


def test_openmetrics_is_served_to_scrapers_that_ask_for_it(http: TestClient) -> None:
    answer = http.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.text.rstrip().endswith("# EOF")


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (202, "accepted"),
        (401, "rejected_auth"),
        (400, "rejected_invalid"),
        (405, "rejected_invalid"),
        (404, "rejected_unknown_source"),
        (413, "rejected_too_large"),
        (422, "rejected_invalid"),
        (503, "temporal_unavailable"),
        (500, "error"),
        (502, "error"),
    ],
)
def test_outcome_follows_the_answer(status: int, outcome: str) -> None:
    assert outcome_for(status) == outcome and outcome in OUTCOMES
