"""`stanch up --temporal-address`: a cluster others use, production included. The stack runs on
a task queue of its home's own and puts the same name before every incident id, whatever
STANCH_TASK_QUEUE says, and says so; the embedded dev server keeps the configured queue."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stanch.cli import up
from stanch.cli.up import UpPlan, dev_prefix
from stanch.config.settings import DEFAULT_TASK_QUEUE
from tests.e2e.processes import free_port

PRODUCTION = {"STANCH_TASK_QUEUE": DEFAULT_TASK_QUEUE, "STANCH_INCIDENT_PREFIX": None, "STANCH_ENCRYPTION_KEYS": None}


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> list[UpPlan]:
    """What `stanch up` would start; nothing is started."""
    plans: list[UpPlan] = []

    def start_and_watch(supervisor, plan: UpPlan, stop) -> int:
        plans.append(plan)
        return 0

    monkeypatch.setattr(up, "_start_and_watch", start_and_watch)
    return plans


def stanch_up(home: Path, *args: str) -> str:
    from stanch.cli.main import app

    ports = [arg for name in ("--api-port", "--gateway-port", "--codec-port") for arg in (name, str(free_port()))]
    result = CliRunner().invoke(app, ["up", "--home", str(home), *ports, *args], env={**PRODUCTION, "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_on_a_shared_cluster_up_uses_its_own_task_queue_and_incident_ids_and_says_so(tmp_path: Path, planned: list[UpPlan]) -> None:
    output = stanch_up(tmp_path, "--temporal-address", "temporal.shared.example:7233")
    [plan] = planned
    settings = plan.settings
    assert not plan.embedded_temporal
    assert re.fullmatch(r"stanch-dev-[a-z0-9-]+-[0-9a-f]{4}", settings.task_queue)
    assert settings.task_queue != DEFAULT_TASK_QUEUE
    assert settings.incident_prefix == f"{settings.task_queue}-"
    # The worker and the API it starts read these, not the production values in the environment.
    assert settings.child_env()["STANCH_TASK_QUEUE"] == settings.task_queue
    assert settings.child_env()["STANCH_INCIDENT_PREFIX"] == settings.incident_prefix
    assert f"on task queue {settings.task_queue}, not the production queue '{DEFAULT_TASK_QUEUE}'" in output
    assert f"incident ids start with {settings.incident_prefix}" in output


def test_the_shared_cluster_name_is_kept_per_home_so_a_restart_finds_its_incidents(tmp_path: Path, planned: list[UpPlan]) -> None:
    stanch_up(tmp_path / "a", "--temporal-address", "temporal.shared.example:7233")
    stanch_up(tmp_path / "a", "--temporal-address", "temporal.shared.example:7233")
    stanch_up(tmp_path / "b", "--temporal-address", "temporal.shared.example:7233")
    first, again, other = (plan.settings.task_queue for plan in planned)
    assert first == again == dev_prefix(tmp_path / "a")
    assert other != first


def test_the_embedded_dev_server_keeps_the_configured_queue(tmp_path: Path, planned: list[UpPlan], monkeypatch) -> None:
    output = stanch_up(tmp_path, "--temporal-port", str(free_port()), "--ui-port", str(free_port()))
    [plan] = planned
    assert plan.embedded_temporal
    assert (plan.settings.task_queue, plan.settings.incident_prefix) == (DEFAULT_TASK_QUEUE, "")
    assert "not the production queue" not in output
