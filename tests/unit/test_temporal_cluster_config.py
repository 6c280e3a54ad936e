"""What a worker and the API take from the environment to run on a cluster: the namespace from
Temporal's env config (never overridden by Stanch), worker versioning (both variables or
neither), the retention `stanch temporal setup` registers, and the worker's probes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from temporalio.common import VersioningBehavior
from temporalio.service import RPCError, RPCStatusCode

from stanch.config.settings import Settings
from stanch.temporal.client import configured_namespace
from stanch.temporal.setup import SetupError, named_in_refusal, parse_retention, refused_for_missing_attributes
from tests.e2e.processes import free_port
from workers.health import WorkerHealth, serve_health
from workers.main import VersioningConfigError, deployment_config


def test_the_namespace_is_left_to_temporals_env_config_unless_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TEMPORAL_NAMESPACE", "TEMPORAL_ADDRESS", "TEMPORAL_PROFILE", "TEMPORAL_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env({"STANCH_HOME": str(tmp_path)})
    assert settings.temporal_namespace is None
    assert "TEMPORAL_NAMESPACE" not in settings.child_env()  # a child reads the profile too

    config = tmp_path / "temporal.toml"
    config.write_text('[profile.ops]\naddress = "temporal.example:7233"\nnamespace = "incidents-prod"\n')
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(config))
    monkeypatch.setenv("TEMPORAL_PROFILE", "ops")
    assert configured_namespace(settings.temporal_namespace) == "incidents-prod"

    chosen = Settings.from_env({"STANCH_HOME": str(tmp_path), "TEMPORAL_NAMESPACE": "elsewhere"})
    assert chosen.child_env()["TEMPORAL_NAMESPACE"] == "elsewhere"


def test_worker_versioning_needs_both_variables_and_pins_incidents(tmp_path: Path) -> None:
    assert deployment_config(Settings(home=tmp_path)) is None
    config = deployment_config(Settings.from_env({"STANCH_DEPLOYMENT_NAME": "stanch", "STANCH_BUILD_ID": "2026-12-06.1"}))
    assert config is not None and config.use_worker_versioning
    assert config.version.to_canonical_string() == "stanch.2026-12-06.1"
    assert config.default_versioning_behavior == VersioningBehavior.PINNED

    with pytest.raises(VersioningConfigError, match="STANCH_BUILD_ID is set, STANCH_DEPLOYMENT_NAME is not"):
        deployment_config(Settings.from_env({"STANCH_BUILD_ID": "7"}))
    with pytest.raises(VersioningConfigError, match="STANCH_DEPLOYMENT_NAME is set, STANCH_BUILD_ID is not"):
        deployment_config(Settings.from_env({"STANCH_DEPLOYMENT_NAME": "stanch"}))
    with pytest.raises(VersioningConfigError, match="no '.' allowed"):
        deployment_config(Settings.from_env({"STANCH_DEPLOYMENT_NAME": "stanch.prod", "STANCH_BUILD_ID": "7"}))


def test_shutdown_grace_and_health_port_come_from_the_environment() -> None:
    settings = Settings.from_env({"STANCH_WORKER_SHUTDOWN_SECONDS": "90", "STANCH_WORKER_HEALTH_PORT": "8400"})
    assert (settings.worker_shutdown_seconds, settings.worker_health_port) == (90.0, 8400)
    assert (Settings().worker_shutdown_seconds, Settings().worker_health_port) == (30.0, None)  # `stanch up`: no extra port


def test_retention_is_days_hours_or_minutes() -> None:
    assert parse_retention("30d").days == 30
    assert parse_retention("72h").total_seconds() == 72 * 3600
    for bad in ("30", "d", "0d", "-1d", "1w", "1.5d"):
        with pytest.raises(SetupError, match="--retention"):
            parse_retention(bad)


def test_a_start_refused_for_a_missing_attribute_is_told_apart_from_other_refusals() -> None:
    missing = RPCError("Namespace prod has no mapping defined for search attribute IncidentRunbook", RPCStatusCode.INVALID_ARGUMENT, b"")
    assert refused_for_missing_attributes(missing) and named_in_refusal(missing) == ["IncidentRunbook"]
    too_long = RPCError("WorkflowId length exceeds limit.", RPCStatusCode.INVALID_ARGUMENT, b"")
    assert not refused_for_missing_attributes(too_long)
    away = RPCError("search attribute service unavailable", RPCStatusCode.UNAVAILABLE, b"")
    assert not refused_for_missing_attributes(away)


def test_the_worker_probes_say_alive_and_ready_only_while_it_polls() -> None:
    async def scenario() -> list[tuple[str, int, str]]:
        health = WorkerHealth()
        port = free_port()
        server = await serve_health(health, "127.0.0.1", port)
        seen = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def probe(path: str) -> None:
                answer = await http.get(path)
                seen.append((path, answer.status_code, answer.json()["detail"]))

            await probe("/readyz")  # starting: not connected yet
            health.not_ready = None
            health.worker_task = asyncio.create_task(asyncio.sleep(3600))
            await probe("/readyz")
            await probe("/healthz")
            health.worker_task.cancel()
            await asyncio.sleep(0)
            await probe("/healthz")  # the worker's task ended while the process lives on
            assert (await http.get("/elsewhere")).status_code == 404
        server.close()
        return seen

    assert asyncio.run(scenario()) == [
        ("/readyz", 503, "starting: not connected to Temporal yet"),
        ("/readyz", 200, "polling"),
        ("/healthz", 200, "alive"),
        ("/healthz", 503, "the worker has stopped polling"),
    ]
