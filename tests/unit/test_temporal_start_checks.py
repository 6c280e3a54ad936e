"""The checks a worker and the API make at start against a real cluster, where the identity may be
restricted and the configuration may be wrong: each failure is told apart and named, and only a
namespace that truly lacks Stanch's search attributes is answered with `stanch temporal setup`."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from temporalio.service import RPCError, RPCStatusCode
from typer.testing import CliRunner

from stanch.api.app import create_app
from stanch.cli import processes, up
from stanch.cli.main import app as stanch_cli
from stanch.config.settings import Settings
from stanch.stores.artefacts import ArtefactError
from stanch.temporal import setup as temporal_setup
from stanch.temporal.client import TemporalConnectError, configured_address, configured_namespace
from stanch.temporal.setup import (
    AttributesNotListed,
    SearchAttributesMissing,
    missing_behind_refusal,
    require_attributes,
    wanted_attributes,
)
from tests.e2e.processes import free_port
from tests.unit.test_api_alerts import NoCatalog
from tests.unit.test_edge_health import FakeTemporal, connecting_to

DENIED = RPCError("Request unauthorized.", RPCStatusCode.PERMISSION_DENIED, b"")


class RestrictedTemporal(FakeTemporal):
    """A Temporal whose operator service answers `listing` instead of the namespace's attributes
    (an exception to raise, or the attributes present)."""

    def __init__(self, listing: Exception | dict[str, int], namespace: str = "prod") -> None:
        super().__init__("temporal.example:7233")
        self.namespace = namespace
        self.listing = listing
        self.listed = 0

    async def list_search_attributes(self, request: Any, **_: Any) -> Any:
        self.listed += 1
        if isinstance(self.listing, Exception):
            raise self.listing
        return SimpleNamespace(custom_attributes=self.listing)


@pytest.fixture(autouse=True)
def warnings_said_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(temporal_setup, "_warned_cannot_list", set())


# --- 1. an identity that may not list search attributes ----------------------------------------


def test_an_identity_that_may_not_list_attributes_is_ready_and_warned_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(home=tmp_path, runbooks_dir=tmp_path, temporal_address="temporal.example:7233")
    fake = RestrictedTemporal(DENIED)
    connecting_to(monkeypatch, fake)
    http = TestClient(create_app(settings, catalog=NoCatalog(), insecure_dev=True))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="stanch.temporal.setup"):
        answers = [http.get("/readyz") for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert fake.listed >= 3  # asked each time, warned once
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'prod'" in warnings[0] and "PERMISSION_DENIED" in warnings[0] and "stanch temporal setup" in warnings[0]


def test_a_namespace_whose_attributes_temporal_does_not_list_for_another_reason_is_not_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path, runbooks_dir=tmp_path, temporal_address="temporal.example:7233")
    connecting_to(monkeypatch, RestrictedTemporal(RPCError("Namespace prod is not found.", RPCStatusCode.NOT_FOUND, b"")))
    http = TestClient(create_app(settings, catalog=NoCatalog(), insecure_dev=True))  # type: ignore[arg-type]
    answer = http.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["detail"].startswith("Temporal at temporal.example:7233 did not list the namespace's search attributes (NOT_FOUND")


def test_the_start_check_goes_on_when_it_may_not_list_and_refuses_naming_what_failed_otherwise() -> None:
    assert asyncio.run(require_attributes(RestrictedTemporal(wanted_attributes()))) is True  # type: ignore[arg-type]
    assert asyncio.run(require_attributes(RestrictedTemporal(DENIED))) is False  # type: ignore[arg-type]
    unimplemented = RPCError("unknown service temporal.api.operatorservice.v1.OperatorService", RPCStatusCode.UNIMPLEMENTED, b"")
    assert asyncio.run(require_attributes(RestrictedTemporal(unimplemented))) is False  # type: ignore[arg-type]
    with pytest.raises(SearchAttributesMissing, match="stanch temporal setup"):
        asyncio.run(require_attributes(RestrictedTemporal({})))  # type: ignore[arg-type]
    away = RPCError("connection reset", RPCStatusCode.UNAVAILABLE, b"")
    with pytest.raises(AttributesNotListed, match=r"namespace 'prod' \(UNAVAILABLE: connection reset\)"):
        asyncio.run(require_attributes(RestrictedTemporal(away)))  # type: ignore[arg-type]


# --- 3. a start refused over a search attribute ------------------------------------------------


def test_only_a_namespace_that_truly_lacks_attributes_is_answered_with_setup() -> None:
    too_large = RPCError("search attribute IncidentSummary value size 3000 exceeds size limit 2048", RPCStatusCode.INVALID_ARGUMENT, b"")
    undefined = RPCError("Namespace prod has no mapping defined for search attribute IncidentRunbook", RPCStatusCode.INVALID_ARGUMENT, b"")
    elsewhere = RPCError("WorkflowId length exceeds limit.", RPCStatusCode.INVALID_ARGUMENT, b"")

    def answer(client: RestrictedTemporal, error: RPCError) -> SearchAttributesMissing | None:
        return asyncio.run(missing_behind_refusal(client, error))  # type: ignore[arg-type]

    prepared = RestrictedTemporal(wanted_attributes())
    assert answer(prepared, too_large) is None  # a value too large: re-raised as before, not "run setup"
    assert answer(prepared, undefined) is None  # the namespace has them all (added since): not "run setup" either
    assert answer(prepared, elsewhere) is None and prepared.listed == 2  # not about attributes: Temporal not asked

    lacking = {name: kind for name, kind in wanted_attributes().items() if name != "IncidentRunbook"}
    missing = answer(RestrictedTemporal(lacking), too_large)
    assert isinstance(missing, SearchAttributesMissing) and missing.missing == ["IncidentRunbook"] and missing.namespace == "prod"

    # An identity that may not list them: Temporal's own words decide.
    denied = answer(RestrictedTemporal(DENIED), undefined)
    assert isinstance(denied, SearchAttributesMissing) and denied.missing == ["IncidentRunbook"]
    assert answer(RestrictedTemporal(DENIED), too_large) is None


# --- 2. `stanch up --temporal-address` with STANCH_UPSERT_SEARCH_ATTRIBUTES=false --------------


class NothingComesUp:
    """A supervisor that starts nothing and whose first wait gives up: `stanch up` stops there."""

    env: dict[str, str] = {}

    def start(self, name: str, command: list[str]) -> None:
        pass

    def wait_until(self, *_: Any) -> bool:
        return False


def test_up_runs_setup_on_a_cluster_only_when_incidents_carry_search_attributes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []

    def run(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        ran.append(command[-2:])
        return subprocess.CompletedProcess(command, 0, "+ search attribute IncidentRunbook (Keyword): added\n", "")

    monkeypatch.setattr(up.subprocess, "run", run)

    def joining_a_cluster(upsert: str) -> None:
        settings = Settings.from_env({"STANCH_HOME": str(tmp_path), "STANCH_UPSERT_SEARCH_ATTRIBUTES": upsert})
        plan = up.UpPlan(settings, embedded_temporal=False, temporal_port=0, ui_port=0, api_port=0, gateway_port=0, startup_timeout=1)
        up._start_and_watch(NothingComesUp(), plan, threading.Event())  # type: ignore[arg-type]

    joining_a_cluster("false")
    assert ran == []  # the setting for clusters where this identity may not register attributes
    joining_a_cluster("true")
    assert ran == [["temporal", "setup"]]


# --- 4. the worker tells a connect failure from everything after -------------------------------


def start_worker(home: Path, env: dict[str, str | None] | None = None) -> tuple[int, str]:
    isolated = {"TEMPORAL_CONFIG_FILE": str(home / "no-temporal.toml"), "TEMPORAL_PROFILE": None, "TEMPORAL_ADDRESS": None}
    isolated |= {"STANCH_ARTEFACTS": None, "STANCH_RECORDS_URL": None, "STANCH_DEPLOYMENT_NAME": None, "STANCH_BUILD_ID": None}
    result = CliRunner().invoke(
        stanch_cli, ["worker", "--insecure-dev"], env={"STANCH_HOME": str(home), "COLUMNS": "300", **isolated, **(env or {})}
    )
    return result.exit_code, " ".join(result.output.split())


def worker_failing_with(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    async def run(*_: Any) -> None:
        raise error

    monkeypatch.setattr(processes, "_worker_until_signalled", run)


def test_the_worker_says_it_cannot_reach_temporal_only_when_connecting_fails(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: a real connect failure
    code, output = start_worker(tmp_path, {"TEMPORAL_ADDRESS": f"127.0.0.1:{port}"})
    assert code == 1
    assert f"cannot reach Temporal at 127.0.0.1:{port}" in output and "TEMPORAL_ADDRESS" in output


def test_a_worker_failing_after_it_connected_is_not_reported_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    worker_failing_with(monkeypatch, RuntimeError("Worker failed: task queue poller gave up"))
    code, output = start_worker(tmp_path)
    assert code == 1
    assert "the worker stopped" in output and "task queue poller gave up" in output
    assert "cannot reach Temporal" not in output


def test_the_worker_refuses_to_start_naming_what_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failures: list[BaseException] = [
        ArtefactError("STANCH_ARTEFACTS s3://evidence: the bucket does not exist"),
        AttributesNotListed("prod", RPCError("Namespace prod is not found.", RPCStatusCode.NOT_FOUND, b"")),
        TemporalConnectError("temporal.example:7233", RuntimeError("Failed client connect: tls handshake")),
    ]
    outputs = []
    for failure in failures:
        worker_failing_with(monkeypatch, failure)
        code, output = start_worker(tmp_path)
        assert code == 1
        outputs.append(output)
    assert "refusing to start: STANCH_ARTEFACTS s3://evidence: the bucket does not exist" in outputs[0]
    assert "refusing to start: Temporal did not list the search attributes of namespace 'prod' (NOT_FOUND" in outputs[1]
    assert "cannot reach Temporal at temporal.example:7233: Failed client connect: tls handshake" in outputs[2]


# --- 5. a profile naming a certificate that is not there --------------------------------------


def test_a_profile_with_a_missing_certificate_is_named_not_mistaken_for_an_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "temporal.toml"
    config.write_text(
        '[profile.ops]\naddress = "temporal.example:7233"\nnamespace = "incidents-prod"\n'
        f'[profile.ops.tls]\nclient_cert_path = "{tmp_path}/absent.pem"\nclient_key_path = "{tmp_path}/absent.key"\n'
    )
    for name in ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(config))
    monkeypatch.setenv("TEMPORAL_PROFILE", "ops")
    assert (configured_address(), configured_namespace()) == ("temporal.example:7233", "incidents-prod")

    code, output = start_worker(tmp_path / "home", {"TEMPORAL_CONFIG_FILE": str(config), "TEMPORAL_PROFILE": "ops"})
    assert code == 1
    assert f"refusing to start: Temporal's environment configuration (profile 'ops' of {config}" in output
    assert f"{tmp_path}/absent.pem" in output
    assert "127.0.0.1:7233" not in output and "cannot reach" not in output
