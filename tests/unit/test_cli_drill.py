"""`stanch drill`: what it refuses before touching anything (exit 2, naming what to fix), the
signal it raises for a runbook, and the report it prints from an incident's record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stanch.cli.drill import CannotRun, drillable, signal_for
from stanch.cli.drill_report import drill_report
from stanch.cli.main import app
from stanch.models.actions import ActionSpec, TargetRef
from stanch.models.incident import GateWait, IncidentState, IncidentStatus, ObjectiveOutcome, fresh_stages
from stanch.runbooks.loader import load_runbook
from tests.e2e.processes import free_port

REPO = Path(__file__).resolve().parents[2]
ROUTE = "drill-0a1b2c3d.support-bot"


def runbook(name: str):
    return load_runbook(REPO / "runbooks" / f"{name}.yaml").runbook


def test_an_unknown_runbook_exits_2_naming_it_and_the_known_ones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STANCH_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["drill", "no-such-runbook", "--api", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 2 and "no runbook 'no-such-runbook'" in result.output and "pii-leak" in result.output


def test_without_a_running_stack_it_exits_2_saying_to_start_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STANCH_HOME", str(tmp_path))
    api = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["drill", "pii-leak", "--api", api])
    assert result.exit_code == 2 and f"no Stanch API answers at {api}" in result.output and "stanch up" in result.output
    report = CliRunner().invoke(app, ["drill", "report", "--api", api])
    assert report.exit_code == 2 and "needs the drill's incident id" in report.output


def test_a_runbook_without_a_demo_scenario_asks_for_model_version_and_prompt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STANCH_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["drill", "triage", "--api", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 2 and "--model, --version" in result.output


def test_the_drill_raises_a_signal_its_runbook_matches_about_the_drill_route() -> None:
    path, report = signal_for(runbook("pii-leak"), ROUTE, "2", "Can I have the customer's email?", "jane@example.com", "0a1b2c3d")
    assert path == "/v1/reports" and report["category"] == "pii-leak" and report["model"] == ROUTE
    by_alert_only = runbook("bad-model-update")
    by_alert_only = by_alert_only.model_copy(update={"match": by_alert_only.match.model_copy(update={"any": by_alert_only.match.any[:1]})})
    path, alert = signal_for(by_alert_only, ROUTE, "2", "hi", "", "0a1b2c3d")
    assert path == "/v1/alerts/alertmanager" and alert["alerts"][0]["labels"]["alertname"] == "BadModelUpdateDrill"
    assert alert["alerts"][0]["labels"]["model"] == ROUTE


def test_a_runbook_acting_on_a_fixed_target_cannot_be_drilled() -> None:
    fixed = runbook("pii-leak")
    fixed = fixed.model_copy(update={"target": fixed.target.model_copy(update={"model": "support-bot"})})
    with pytest.raises(CannotRun, match="drill route"):
        drillable(fixed)


def test_a_runbook_with_a_step_outside_the_gateway_cannot_be_drilled_and_the_step_is_named() -> None:
    recipe = load_runbook(REPO / "runbooks" / "recipes" / "litellm.yaml").runbook  # its target is the gateway, its steps litellm
    with pytest.raises(CannotRun, match=r"containment\[0\] \(http, target litellm\) would act outside the drill route"):
        drillable(recipe)
    shipped = runbook("pii-leak")
    http_on_gateway = ActionSpec(kind="http", params={"method": "POST", "url": "https://prod.example/disable"})
    with pytest.raises(CannotRun, match=r"rollback\[0\] \(http\)"):
        drillable(shipped.model_copy(update={"rollback": [http_on_gateway]}))
    drillable(shipped)  # every step on the gateway: drillable


def test_the_report_gives_each_milestone_against_its_objective_and_the_slowest_gate() -> None:
    opened = datetime(2026, 12, 1, tzinfo=UTC)

    def outcome(milestone: str, seconds: float, objective: float | None) -> ObjectiveOutcome:
        return ObjectiveOutcome(
            milestone=milestone,  # type: ignore[arg-type]
            reached_at=opened + timedelta(seconds=seconds),
            severity="high",
            elapsed_seconds=seconds,
            objective_seconds=objective,
            met=None if objective is None else seconds <= objective,
        )

    state = IncidentState(
        id="pii-leak-drill",
        drill=True,
        status=IncidentStatus.closed,
        severity="high",
        runbook="pii-leak",
        runbook_sha256="",
        target=TargetRef(model=ROUTE),
        dedup_key="k",
        opened_at=opened,
        closed_at=opened + timedelta(minutes=9),
        stages=fresh_stages(),
        objectives=[outcome("acknowledge", 30, 300), outcome("contain", 400, 300), outcome("restore", 500, None)],
        gate_waits=[
            GateWait(gate="the rollback approval", stage="rollback", began_at=opened, ended_at=opened + timedelta(seconds=20)),
            GateWait(gate="the restore approval", stage="restore", began_at=opened, ended_at=opened + timedelta(seconds=90)),
        ],
    )
    report = drill_report(state)
    assert [(m.milestone, m.seconds, m.met) for m in report.milestones] == [
        ("acknowledge", 30, True),
        ("contain", 400, False),
        ("restore", 500, None),
    ]
    assert report.objectives_met is False and report.slowest_gate is not None and report.slowest_gate.gate == "the restore approval"
    assert report.drill_route == ROUTE and report.finished
