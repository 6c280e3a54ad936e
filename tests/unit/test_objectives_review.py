"""Time-to-containment objectives in the runbook (written, validated, shipped) and in the review
(the postmortem says met or missed and which gate took the time)."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from stanch.models.incident import GateWait, ObjectiveOutcome
from stanch.models.signals import Severity
from stanch.review.postmortem import time_to_contain
from stanch.runbooks.loader import RunbookError, load_runbook, runbook_files
from tests.unit.test_review import at, restored, stages

RUNBOOKS = Path(__file__).resolve().parents[2] / "runbooks"


@pytest.fixture
def harmful_output(tmp_path: Path) -> Path:
    path = tmp_path / "harmful-output.yaml"
    shutil.copy(RUNBOOKS / "harmful-output.yaml", path)
    return path


def test_every_shipped_runbook_sets_a_contain_objective_tighter_as_severity_rises() -> None:
    for path in runbook_files(RUNBOOKS):
        loaded = load_runbook(path)
        within = [loaded.runbook.policy[severity].objectives.contain or timedelta(0) for severity in Severity]
        assert all(within), f"{loaded.runbook.name} sets no contain objective for some severity"
        assert within == sorted(within, reverse=True), f"{loaded.runbook.name}: {within}"
    harmful = load_runbook(RUNBOOKS / "harmful-output.yaml").runbook
    assert harmful.policy[Severity.critical].objectives.contain == timedelta(minutes=5)
    assert harmful.policy[Severity.high].objectives.contain == timedelta(minutes=15)


def test_acknowledge_and_restore_objectives_take_the_same_shape(harmful_output: Path) -> None:
    text = harmful_output.read_text().replace("objectives: {contain: 5m}", "objectives: {acknowledge: 2m, contain: 5m, restore: 1d}", 1)
    harmful_output.write_text(text)
    objectives = load_runbook(harmful_output).runbook.policy[Severity.critical].objectives
    assert (objectives.acknowledge, objectives.contain, objectives.restore) == (
        timedelta(minutes=2),
        timedelta(minutes=5),
        timedelta(days=1),
    )


@pytest.mark.parametrize(
    ("written", "field", "problem"),
    [
        ("{contain: soon}", "policy.critical.objectives.contain", "must look like 30s, 15m, 4h or 2d"),
        ("{contain: 0s}", "policy.critical.objectives.contain", "contain must be a positive duration such as 5m"),
        ("{contian: 5m}", "policy.critical.objectives.contian", ""),
    ],
)
def test_a_bad_objective_is_refused_naming_the_runbook_field(harmful_output: Path, written: str, field: str, problem: str) -> None:
    harmful_output.write_text(harmful_output.read_text().replace("objectives: {contain: 5m}", f"objectives: {written}", 1))
    with pytest.raises(RunbookError) as refused:
        load_runbook(harmful_output)
    assert f"{harmful_output}: {field}:" in str(refused.value) and problem in str(refused.value)


def contained(**changes) -> ObjectiveOutcome:
    fields = dict(
        milestone="contain",
        reached_at=at(7),
        severity=Severity.high,
        elapsed_seconds=7 * 60 + 3,
        objective_seconds=5 * 60,
        met=False,
        machine_seconds=51,
        human_seconds=6 * 60 + 12,
        took_longest="the contain approval waited 6m12s for a second approver (sam)",
        took_longest_by="human",
        summary="contained in 7m03s at high (objective 5m: MISSED)",
    )
    return ObjectiveOutcome(**{**fields, **changes})


def section(**changes) -> str:
    return "\n".join(time_to_contain(restored(**changes)))


def test_the_postmortem_says_the_objective_was_missed_and_which_gate_took_the_time() -> None:
    wait = GateWait(gate="the contain approval", stage="contain", began_at=at(0.8), ended_at=at(7), waited_for="a second approver (sam)")
    text = section(objectives=[contained()], gate_waits=[wait])
    assert "- Objective at high: contain within 5m — MISSED: contained in 7m03s" in text
    assert "- Machine time 51s (checks, evidence, grading, applying actions); people 6m12s" in text
    assert "- The gate that took the time (human): the contain approval waited 6m12s for a second approver (sam)" in text
    assert "the contain approval" in text.split("Waited for people:", 1)[1]


def test_the_postmortem_says_met_and_names_a_machine_step() -> None:
    fast = contained(elapsed_seconds=90, met=True, took_longest="the confirm checks took 1m12s", took_longest_by="machine")
    text = section(objectives=[fast])
    assert "contain within 5m — met: contained in 1m30s" in text
    assert "The gate that took the time (machine): the confirm checks took 1m12s" in text


def test_the_postmortem_says_when_no_objective_was_set_or_nothing_was_contained() -> None:
    assert "no objective set at high (policy.high.objectives.contain in harmful-output)" in section(
        objectives=[contained(objective_seconds=None, met=None)]
    )
    rejected = stages(contain=("rejected", "rejected by sam: the gateway is the only way in"))
    assert "- Not contained: rejected — rejected by sam: the gateway is the only way in" in section(objectives=[], stages=rejected)


def test_an_incident_contained_before_objectives_were_kept_reads_contained_from_its_stage() -> None:
    """Contained before Stanch recorded objectives, then continued as new: no outcome, the stage done."""
    text = section(objectives=[])  # the contain stage (4th) finished at minute 40
    assert "- Contained in 40m (2026-11-26 09:40:00 UTC: done); recorded before Stanch kept objectives" in text
    assert "Not contained" not in text


def test_a_partial_restore_reads_not_restored_in_the_postmortem() -> None:
    partial = ObjectiveOutcome(
        milestone="restore",
        reached_at=at(90),
        reached=False,
        severity=Severity.high,
        elapsed_seconds=90 * 60,
        summary="not restored: the restore stage ended after 1h30m at high, partial: still in place: block_outputs",
    )
    assert "- not restored: the restore stage ended after 1h30m at high, partial: still in place: block_outputs" in section(
        objectives=[contained(), partial]
    )
