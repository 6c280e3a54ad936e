"""`stanch runbooks plan`: every call an incident would make, and its undo, while the control
planes it names (local recording servers here) receive nothing. Also: the recipes validate,
and `validate` checks runbooks against the targets file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stanch.cli.plan import AlertFileError, read_alert
from stanch.cli.runbooks import runbooks_app, target_problems
from stanch.config.settings import Settings
from stanch.runbooks.loader import default_runbooks_dir, load_catalog, load_runbook
from stanch.targets.config import read_targets_file
from stanch.targets.registry import TargetRegistry
from tests.http_recorder import RecordingServer

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "runbooks" / "recipes"
RECIPE_FILES = sorted(p for p in RECIPES.glob("*.yaml") if p.name != "targets.yaml")
FIXTURES = REPO / "tests" / "fixtures"

ALERT = {
    "signal_id": "plan-1",
    "title": "fraud-scorer canary misbehaves",
    "labels": {"alertname": "InferenceCanaryErrors", "model": "fraud-scorer"},
    "model": "fraud-scorer",
    "model_version": "7",
}


CLUSTER_TARGETS = ("kubernetes", "argo-rollouts", "kserve")  # the recipes' targets on one API server


@pytest.fixture
def servers():
    with RecordingServer() as gateway, RecordingServer() as litellm, RecordingServer() as kubernetes:
        yield {"gateway": gateway, "litellm": litellm, **{name: kubernetes for name in CLUSTER_TARGETS}}


@pytest.fixture
def home(tmp_path, servers, monkeypatch) -> Path:
    """STANCH_HOME with targets.yaml pointing every recipe target at a recording server."""
    (tmp_path / "targets.yaml").write_text(
        "targets:\n"
        f"  litellm:\n    http: {{base_url: '{servers['litellm'].url}', headers: {{Authorization: 'Bearer ${{LITELLM_MASTER_KEY}}'}}}}\n"
        + "".join(
            f"  {name}:\n    http: {{base_url: '{servers[name].url}', headers: {{Authorization: 'Bearer ${{file:no-token-here}}'}}}}\n"
            for name in CLUSTER_TARGETS
        )
    )
    monkeypatch.setenv("STANCH_HOME", str(tmp_path))
    monkeypatch.setenv("STANCH_GATEWAY_URL", servers["gateway"].url)
    monkeypatch.delenv("STANCH_TARGETS", raising=False)
    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)  # planning needs no secret
    return tmp_path


def alert_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "alert.json"
    path.write_text(json.dumps({**ALERT, **changes}))
    return path


def plan(*args: str):
    return CliRunner().invoke(runbooks_app, ["plan", *args])


def received(servers) -> int:
    return sum(len(server.recorder.requests) for server in {id(s): s for s in servers.values()}.values())


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=lambda p: p.stem)
def test_plan_lists_every_call_and_its_undo_and_calls_none(home, servers, tmp_path, recipe):
    result = plan(str(recipe), "--alert", str(alert_file(tmp_path)), "--json")
    assert result.exit_code == 0, result.output
    [planned] = json.loads(result.output)
    runbook = load_runbook(recipe).runbook
    assert planned["incident_id"].startswith(runbook.name) and planned["target"]["model"] == "fraud-scorer"
    steps = {stage["stage"]: stage["steps"] for stage in planned["stages"]}
    assert len(steps["contain"]) == len(runbook.containment) and len(steps["rollback"]) == len(runbook.rollback)
    for step in steps["contain"] + steps["rollback"]:
        assert (
            step["idempotency_key"]
            == f"{planned['incident_id']}@<run>/{step['stage']}/{step['index']}/{step['target']['adapter']}:fraud-scorer"
        )
        main = step["calls"][-1]
        assert main["method"] in ("POST", "PATCH") and main["url"].startswith(servers[step["target"]["adapter"]].url)
        assert main["undo"], f"{recipe.name}: {step['kind']} has an undo"
    assert [(r["stage"], r["index"]) for r in planned["restore"]] == [
        (s["stage"], s["index"]) for stage in ("rollback", "contain") for s in reversed(steps[stage])
    ], "restore undoes rollback, then containment, each in reverse"
    assert received(servers) == 0, "plan called nothing"


def test_plan_text_shows_calls_undo_keys_and_gates_for_the_shipped_demo_runbook(home, servers):
    result = plan("harmful-output", "--alert", str(FIXTURES / "alertmanager_v4.json"))
    assert result.exit_code == 0, result.output
    out = result.output
    gateway = servers["gateway"].url
    assert f"→ POST {gateway}/admin/apply" in out and f"undo ← POST {gateway}/admin/undo" in out
    # The fine-tune: the version it starts from, the trainer's calls, then the new version registered and deployed.
    assert f"→ GET {gateway}/admin/state?model=support-bot" in out
    assert "→ POST <trainer>/files" in out and "→ POST <trainer>/fine_tuning/jobs" in out
    assert '"kind":"register_version"' in out and "/hotfix/0/gateway:support-bot/register-version" in out
    assert "high approve 2 (oncall/safety/incident-commander, incl. safety)" in out
    assert "@<run>/rollback/0/gateway:support-bot/undo" in out
    assert "plan only: nothing has been called" in out
    assert received(servers) == 0


def test_plan_says_when_the_alert_would_go_to_another_runbook(home, tmp_path):
    result = plan("kserve-canary", "--alert", str(alert_file(tmp_path)), "--dir", str(RECIPES.parent))
    assert result.exit_code == 1 and "neither a runbook file nor the name of a runbook" in result.output
    result = plan(str(RECIPES / "kserve-canary.yaml"), "--alert", str(alert_file(tmp_path)))
    assert "this alert goes to triage; planned with kserve-canary as asked" in result.output


def test_a_step_that_cannot_run_fails_the_plan_naming_it(home, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text((RECIPES / "kserve-canary.yaml").read_text().replace("{before.percent}", "{before.pct}"))
    result = plan(str(broken), "--alert", str(alert_file(tmp_path)))
    assert result.exit_code == 1
    assert "cannot run: rollback step 0 (http)" in result.output and "{before.pct} used but no `before` read captures it" in result.output


def test_an_unreadable_alert_file_is_named(home, tmp_path):
    path = tmp_path / "alert.json"
    path.write_text('{"what": "nobody knows"}')
    result = plan("triage", "--alert", str(path))
    assert result.exit_code == 1 and "cannot tell which sender this payload is from: give --format" in result.output


@pytest.mark.parametrize("fixture", sorted(FIXTURES.rglob("*.json")), ids=lambda p: str(p.relative_to(FIXTURES)))
def test_every_intake_format_reads_as_an_alert_file(fixture):
    signals = read_alert(fixture)
    assert signals and all(signal.signal_id for signal in signals)


def test_an_explicit_format_wins_and_a_wrong_one_is_named(tmp_path):
    path = alert_file(tmp_path)
    assert read_alert(path, "generic")[0].signal_id == "plan-1"
    with pytest.raises(AlertFileError, match="not a valid alertmanager payload"):
        read_alert(path, "alertmanager")


# --- the recipes, and validate against a targets file ---------------------------------------


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=lambda p: p.stem)
def test_each_recipe_validates_against_its_targets(recipe):
    registry = TargetRegistry(Settings(targets=RECIPES / "targets.yaml"))
    assert target_problems(load_runbook(recipe), registry) == []
    result = CliRunner().invoke(runbooks_app, ["validate", str(recipe), "--targets", str(RECIPES / "targets.yaml")])
    assert result.exit_code == 0, result.output


def test_recipes_are_never_loaded_as_live_runbooks():
    live = {loaded.runbook.name for loaded in load_catalog(default_runbooks_dir()).all()}
    assert live.isdisjoint({load_runbook(recipe).runbook.name for recipe in RECIPE_FILES})
    assert len(RECIPE_FILES) == 4


def test_validate_names_an_unconfigured_target_with_its_field(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        (RECIPES / "litellm.yaml").read_text().replace("target: litellm\n    description: point", "target: litelm\n    description: point")
    )
    result = CliRunner().invoke(runbooks_app, ["validate", str(broken), "--targets", str(RECIPES / "targets.yaml")])
    assert result.exit_code == 1
    assert (
        f"{broken}: rollback.0.target: no target named 'litelm'; configured: ['argo-rollouts', 'gateway', 'kserve', 'kubernetes', "
        "'litellm']" in result.output
    )


def test_validate_without_a_targets_file_checks_the_schema_only(tmp_path, monkeypatch):
    monkeypatch.setenv("STANCH_HOME", str(tmp_path))
    monkeypatch.delenv("STANCH_TARGETS", raising=False)
    result = CliRunner().invoke(runbooks_app, ["validate", str(RECIPES / "litellm.yaml")])
    assert result.exit_code == 0, result.output


def test_validate_refuses_a_secret_reference_in_a_body(tmp_path):
    broken = tmp_path / "broken.yaml"
    text = (RECIPES / "litellm.yaml").read_text()
    broken.write_text(text.replace('body: {key: "88dc28d0', 'body: {master: "${LITELLM_MASTER_KEY}", key: "88dc28d0', 1))
    result = CliRunner().invoke(runbooks_app, ["validate", str(broken), "--targets", str(RECIPES / "targets.yaml")])
    assert result.exit_code == 1
    assert (
        "containment.0: http step for target litellm: params.body: `${...}` in a body is sent as written, never expanded — secrets belong "
        "in headers" in result.output
    )


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=lambda p: p.stem)
def test_each_recipes_evidence_snapshots_the_object_it_changes(recipe):
    """The target a step acts on reads, for evidence, the very object the step changes (a
    subresource such as /status counts as its object)."""
    targets = {entry.name: entry.config for entry in read_targets_file(RECIPES / "targets.yaml")}
    runbook = load_runbook(recipe).runbook
    for step in runbook.containment + runbook.rollback:
        state_url = targets[step.target].state_url
        if state_url is None:  # a control plane with nothing to read (LiteLLM): evidence says "unavailable"
            assert step.target == "litellm", f"{recipe.name}: {step.target} has no state_url"
            continue
        changed = step.params["url"]
        assert changed == state_url or changed.startswith(state_url + "/"), (
            f"{recipe.name}: {step.target} snapshots {state_url}, the step changes {changed}"
        )
