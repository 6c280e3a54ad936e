"""Intake refuses a signal whose model could climb a path or break out of a quoted string: routing
raises UnsafeSignal, and the API answers 422 naming the field, before anything reaches Temporal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stanch.api.app import create_app
from stanch.config.settings import Settings
from stanch.intake.routing import UnsafeSignal, route_signal
from stanch.models.signals import Signal
from stanch.runbooks.loader import RunbookCatalog, default_runbooks_dir, load_catalog

ALERTMANAGER = Path(__file__).resolve().parent.parent / "fixtures" / "alertmanager_v4.json"
UNSAFE_MODELS = {
    "../../etc": "climbs",
    "/etc/passwd": "absolute path",
    "a//b": "climbs",
    "a\\b": "backslash",
    "..": "climbs",
    "a\nb": "control character",
    "a\x00b": "control character",
    "a\u2028b": "control character",
    'x"}[5m]) or vector(1)': "quote",
    "o'brien": "quote",
}


@pytest.fixture(scope="module")
def catalog() -> RunbookCatalog:
    return load_catalog(default_runbooks_dir())


def signal(model: str, **labels: str) -> Signal:
    return Signal(signal_id="s-1", labels={"alertname": "HarmfulOutputSecret", **labels}, model=model)


@pytest.mark.parametrize(("model", "reason"), UNSAFE_MODELS.items())
def test_routing_refuses_a_model_that_is_not_safe_to_act_on(catalog: RunbookCatalog, model: str, reason: str) -> None:
    with pytest.raises(UnsafeSignal) as refusal:
        route_signal(signal(model), catalog)

    assert reason in str(refusal.value)


def test_a_model_taken_from_a_label_is_checked_too(catalog: RunbookCatalog) -> None:
    with pytest.raises(UnsafeSignal):
        route_signal(Signal(signal_id="s-1", labels={"alertname": "HarmfulOutputSecret", "model": "../x"}), catalog)


@pytest.mark.parametrize("model", ["support-bot", "llama-3.1_8b", "gpt-4o@eu", "Mistral 7B Instruct", "meta-llama/Llama-3.1-8B-Instruct"])
def test_ordinary_model_names_still_route(catalog: RunbookCatalog, model: str) -> None:
    assert route_signal(signal(model), catalog).target.model == model


class TemporalNeverReached:
    """The API's Temporal connection, for a request that must be refused before any call."""

    address = "nowhere:7233"
    connected = True

    async def client(self) -> object:
        return object()  # any call on it fails: reaching it at all would be a 500


@pytest.fixture
def api(tmp_path: Path, catalog: RunbookCatalog) -> TestClient:
    app = create_app(Settings(home=tmp_path, runbooks_dir=tmp_path), catalog=catalog, insecure_dev=True)
    app.state.temporal = TemporalNeverReached()
    return TestClient(app)


def assert_refused_naming_the_model(response: Any, model: str) -> None:
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["signal", "model"]
    assert error["type"] == "unsafe_model"
    assert "climbs" in error["msg"]
    assert json.dumps(model)[1:-1] not in response.text


def test_the_generic_intake_answers_422_for_an_unsafe_model(api: TestClient) -> None:
    response = api.post("/v1/alerts/generic", json={"signal_id": "s-1", "model": "../../etc", "labels": {"alertname": "HarmfulOutput"}})

    assert_refused_naming_the_model(response, "../../etc")


def test_an_alertmanager_label_with_an_unsafe_model_is_422(api: TestClient) -> None:
    payload = json.loads(ALERTMANAGER.read_text())
    payload["alerts"][0]["labels"]["model"] = "../../etc"

    response = api.post("/v1/alerts/alertmanager", json=payload)

    assert_refused_naming_the_model(response, "../../etc")
