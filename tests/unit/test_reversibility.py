"""Autonomy by reversibility: every action kind says whether it may run at once, a gate may let
reversible steps go ahead before its approval, and `stanch runbooks plan` says which step waits."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from stanch.cli.plan import step_timing, when_it_runs
from stanch.gateway.actions import ACTIONS
from stanch.models.actions import ACTION_REVERSIBILITY, ActionSpec, reversibility
from stanch.models.signals import Severity
from stanch.runbooks.loader import RunbookError, default_runbooks_dir, load_catalog, load_runbook
from stanch.runbooks.schema import StageGate
from stanch.targets import flagd

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (REPO / "runbooks" / "recipes").glob("*.yaml") if p.name != "targets.yaml")

# What only adds protection and is undone exactly; everything else changes what users are served.
ADDS_PROTECTION = {"block_prompts", "block_outputs", "disable_feature", "restrict_endpoint", "add_guardrail", "set_system_prompt"}


def every_step(runbook) -> list[tuple[str, int, ActionSpec]]:
    stages = {"contain": runbook.containment, "rollback": runbook.rollback, "hotfix": runbook.hotfix.actions if runbook.hotfix else []}
    return [(stage, index, step) for stage, steps in stages.items() for index, step in enumerate(steps)]


def test_every_action_kind_of_every_adapter_declares_its_reversibility_with_a_reason():
    kinds = set(ACTIONS) | set(flagd.KINDS) | {"rollback_alias", "deploy_finetune", "http"}
    assert kinds - set(ACTION_REVERSIBILITY) == set(), "a kind Stanch takes has no entry"
    assert {kind for kind, said in ACTION_REVERSIBILITY.items() if said.reversible} == ADDS_PROTECTION
    assert all(said.why for said in ACTION_REVERSIBILITY.values())


def test_an_http_step_is_reversible_only_when_it_says_so_and_a_known_kind_cannot_claim_it():
    assert not reversibility(ActionSpec(kind="http", params={})).reversible
    assert reversibility(ActionSpec(kind="http", params={}, reversible=True)).reversible
    assert not reversibility(ActionSpec(kind="block_outputs", reversible=False)).reversible, "a step may always opt out"
    assert not reversibility(ActionSpec(kind="something_new")).reversible, "unknown: not reversible"
    with pytest.raises(ValidationError, match="'disable_version' cannot be declared reversible: it changes the version users"):
        ActionSpec(kind="disable_version", reversible=True)


def test_every_recipe_step_is_not_reversible_unless_it_declares_it():
    for path in RECIPES:
        for stage, index, step in every_step(load_runbook(path).runbook):
            assert step.kind == "http"
            assert reversibility(step).reversible == bool(step.reversible), f"{path.name} {stage} {index}"
    litellm = load_runbook(REPO / "runbooks" / "recipes" / "litellm.yaml").runbook
    assert [reversibility(step).reversible for step in litellm.containment + litellm.rollback] == [True, False], (
        "blocking a key is reversible; moving the deployment to another upstream is not"
    )


def test_reversible_auto_goes_only_with_an_approval():
    gate = StageGate.model_validate({"approve": {"count": 2, "roles": ["oncall", "safety"]}, "reversible": "auto"})
    assert gate.reversible_at_once and gate.approve and gate.approve.count == 2
    assert not StageGate.model_validate({"approve": {"count": 1}}).reversible_at_once
    for mode in ("auto", "skip"):
        with pytest.raises(ValidationError, match="`reversible: auto` goes with an approve block"):
            StageGate.model_validate({"mode": mode, "reversible": "auto"})


def test_a_runbook_file_with_reversible_auto_on_an_automatic_stage_is_refused_naming_the_field(tmp_path):
    text = (default_runbooks_dir() / "harmful-output.yaml").read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("      rollback: skip\n", "      rollback: {mode: skip, reversible: auto}\n", 1))
    with pytest.raises(RunbookError) as refused:
        load_runbook(broken)
    assert "broken.yaml" in str(refused.value) and "policy.low.stages.rollback" in str(refused.value)


def test_shipped_runbooks_contain_a_confirmed_leak_at_once_and_keep_approvals_for_serving_changes():
    catalog = {loaded.runbook.name: loaded.runbook for loaded in load_catalog(default_runbooks_dir()).all()}
    for name in ("harmful-output", "pii-leak", "training-data-leak"):
        runbook = catalog[name]
        for severity in Severity:
            for index, step in enumerate(runbook.containment):
                assert step_timing(runbook, "contain", index, step).runs[severity.value] in ("automatically", "at once"), (
                    f"{name} contains at once at {severity}"
                )
    for runbook in catalog.values():
        for stage, index, step in every_step(runbook):
            if step.kind == "deploy_finetune":
                runs = step_timing(runbook, stage, index, step).runs
                assert set(runs.values()) <= {"waits for approval", "skipped"}, f"{runbook.name}: a fine-tune is approved first ({runs})"
        for severity in Severity:
            restore = runbook.policy[severity].gate("restore")
            assert restore.mode != "skip" and not restore.reversible_at_once, f"{runbook.name} at {severity}: restore as it was"


def test_the_plan_says_the_guardrail_goes_on_at_once_and_the_fine_tune_waits():
    runbook = load_runbook(default_runbooks_dir() / "harmful-output.yaml").runbook
    finetune, guardrail = (step_timing(runbook, "hotfix", index, step) for index, step in enumerate(runbook.hotfix.actions))
    assert finetune.kind == "deploy_finetune" and set(finetune.runs.values()) == {"waits for approval"}
    assert guardrail.kind == "add_guardrail" and set(guardrail.runs.values()) == {"at once"}
    assert when_it_runs(guardrail).startswith("runs at once at low, medium, high, critical (reversible: ")
    assert when_it_runs(finetune).startswith("waits for approval at low, medium, high, critical (not reversible: ")
