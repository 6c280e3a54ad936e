"""/healthz is liveness: 200 while the process serves, whatever Temporal does, without trying
to reach it. /readyz is readiness: 200 only when Temporal answers, else 503 naming Temporal and
its address (never a credential)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from temporalio.service import RPCError, RPCStatusCode

from stanch.api import deps
from stanch.api.app import create_app
from stanch.config.settings import Settings
from stanch.temporal.setup import wanted_attributes
from tests.unit.test_api_alerts import NoCatalog, free_port

API_KEY = "tmprl-api-key-that-must-never-show"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, runbooks_dir=tmp_path, temporal_address=f"127.0.0.1:{free_port()}")


@pytest.fixture
def http(settings: Settings) -> TestClient:
    return TestClient(create_app(settings, catalog=NoCatalog(), insecure_dev=True))  # type: ignore[arg-type]


class FakeTemporal:
    """What TemporalConnection uses of a connected client: its address and GetSystemInfo."""

    def __init__(self, address: str, answer: Exception | None = None) -> None:
        self.answer = answer
        self.checks = 0
        self.service_client = SimpleNamespace(config=SimpleNamespace(target_host=address))
        self.workflow_service = SimpleNamespace(get_system_info=self.get_system_info)
        # The namespace has Stanch's search attributes: `stanch temporal setup` ran.
        self.namespace = "default"
        self.operator_service = SimpleNamespace(list_search_attributes=self.list_search_attributes)

    async def list_search_attributes(self, request: Any, **_: Any) -> Any:
        return SimpleNamespace(custom_attributes=wanted_attributes())

    async def get_system_info(self, request: Any, **_: Any) -> Any:
        self.checks += 1
        if self.answer is not None:
            raise self.answer
        return SimpleNamespace(server_version="1.29.0")


def connecting_to(monkeypatch: pytest.MonkeyPatch, fake: FakeTemporal) -> list[str]:
    attempts: list[str] = []

    async def connect(address: str | None, namespace: str | None, settings: Settings) -> FakeTemporal:
        attempts.append(address or "")
        return fake

    monkeypatch.setattr(deps, "connect", connect)
    return attempts


def test_healthz_is_200_while_temporal_is_away_and_never_tries_to_reach_it(
    http: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def connect(*_: Any) -> Any:
        raise AssertionError("liveness must not depend on Temporal")

    monkeypatch.setattr(deps, "connect", connect)
    answer = http.get("/healthz")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok"
    assert body["temporal"] == settings.temporal_address
    assert body["temporal_connected"] is False
    assert body["gateway_url"] == settings.gateway_url and body["ui_url"] == settings.ui_url


def test_readyz_is_503_naming_temporal_and_its_address_without_secrets(
    http: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_API_KEY", API_KEY)
    answer = http.get("/readyz")
    assert answer.status_code == 503
    body = answer.json()
    assert body["status"] == "not ready"
    assert body["temporal"] == settings.temporal_address
    assert body["namespace"] == "default"  # no TEMPORAL_NAMESPACE, no profile: Temporal's default
    assert body["detail"].startswith(f"cannot reach Temporal at {settings.temporal_address}")
    assert API_KEY not in answer.text


def test_readyz_is_200_when_temporal_answers(http: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTemporal("temporal.example:7233")
    connecting_to(monkeypatch, fake)
    answer = http.get("/readyz")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "ready", "temporal": "temporal.example:7233", "namespace": "default", "detail": None}
    assert fake.checks == 1
    # Readiness asks Temporal each time: a client connected earlier proves nothing now.
    http.get("/readyz")
    assert fake.checks == 2


@pytest.mark.parametrize(
    "answer",
    [RPCError("connection reset", RPCStatusCode.UNAVAILABLE, b""), TimeoutError()],
    ids=["rpc-error", "timeout"],
)
def test_readyz_is_503_when_a_connected_temporal_stops_answering(
    http: TestClient, monkeypatch: pytest.MonkeyPatch, answer: Exception
) -> None:
    connecting_to(monkeypatch, FakeTemporal("temporal.example:7233", answer))
    response = http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"].startswith("Temporal at temporal.example:7233 did not answer")
    assert http.get("/healthz").status_code == 200
