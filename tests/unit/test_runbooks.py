"""Runbook loading and validation: the shipped runbooks are valid, and broken ones are refused
with a message that names the file and the field."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stanch.cli.runbooks import runbooks_app
from stanch.models.signals import Severity
from stanch.runbooks.loader import (
    RunbookError,
    default_runbooks_dir,
    load_catalog,
    load_runbook,
)
from stanch.runbooks.schema import GATED_STAGES

RUNBOOKS = Path(__file__).resolve().parents[2] / "runbooks"
SHIPPED = [
    "bad-model-update",
    "harmful-output",
    "pii-leak",
    "prompt-injection-campaign",
    "quality-regression",
    "toxic-content",
    "training-data-leak",
    "triage",
    "unsafe-tool-use",
]


@pytest.fixture
def runbook_copy(tmp_path: Path) -> Path:
    """A scratch copy of the shipped runbooks folder, to break on purpose."""
    folder = tmp_path / "runbooks"
    shutil.copytree(RUNBOOKS, folder)
    return folder


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}: the test no longer breaks what it means to"
    path.write_text(text.replace(old, new, 1))


# --- the shipped runbooks -----------------------------------------------------------------


def test_default_dir_is_the_repo_runbooks_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STANCH_RUNBOOKS", raising=False)
    assert default_runbooks_dir() == RUNBOOKS
    monkeypatch.setenv("STANCH_RUNBOOKS", str(tmp_path))
    assert default_runbooks_dir() == tmp_path


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_runbook_validates(name: str) -> None:
    path = RUNBOOKS / f"{name}.yaml"
    loaded = load_runbook(path)
    assert loaded.runbook.name == name
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.path == str(path)
    # Every severity has a policy, and every gated stage of it resolves to a gate.
    for severity in Severity:
        policy = loaded.runbook.policy_for(severity)
        for stage in GATED_STAGES:
            assert policy.gate(stage).mode in {"auto", "approve", "skip"}


def test_catalog_holds_every_runbook_with_triage_as_fallback() -> None:
    catalog = load_catalog(RUNBOOKS)
    assert [loaded.runbook.name for loaded in catalog.all()] == sorted(SHIPPED)
    assert catalog.fallback.runbook.name == "triage"
    assert catalog.get("harmful-output") is not None
    assert catalog.get("no-such-runbook") is None


def test_demo_runbook_says_what_the_demo_needs() -> None:
    runbook = load_runbook(RUNBOOKS / "harmful-output.yaml").runbook
    for severity in (Severity.high, Severity.critical):
        policy = runbook.policy_for(severity)
        for stage in ("contain", "rollback", "hotfix"):
            gate = policy.gate(stage)
            assert gate.mode == "approve" and gate.approve is not None
            assert gate.approve.count == 2 and gate.approve.required_roles == ["safety"]
        # The block and the guardrail (reversible) go on at once; the version switch and the
        # fine-tuned version wait for four eyes.
        assert policy.gate("contain").reversible_at_once and policy.gate("hotfix").reversible_at_once
        assert not policy.gate("rollback").reversible_at_once
        assert policy.gate("restore").approve is not None and policy.gate("restore").approve.count == 1
        assert len(policy.escalation) == 2
    assert runbook.policy_for(Severity.critical).ack_sla.total_seconds() == 5 * 60
    assert runbook.policy_for(Severity.low).gate("rollback").mode == "skip"
    # Containment blocks by the detectors that confirm: every kind of leak they find.
    (block_outputs,) = runbook.containment
    assert block_outputs.kind == "block_outputs" and block_outputs.params["detectors"] == ["secret", "pii"]
    assert {check.kind: check.detectors for check in runbook.confirm.checks}["probe"] == ["secret", "pii"]
    assert [(a.kind, a.params) for a in runbook.rollback] == [("disable_version", {"version": "{version}"})]
    assert runbook.hotfix is not None and [a.kind for a in runbook.hotfix.actions] == ["deploy_finetune", "add_guardrail"]
    assert runbook.hotfix.actions[0].params["base_version"] == "{version}", "the fine-tune fixes the version that leaked"
    assert runbook.regulatory.report_days == 15
    assert sorted(clock.days for clock in runbook.regulatory.shorter_clocks) == [2, 2, 10]


def test_triage_takes_no_automatic_action() -> None:
    runbook = load_runbook(RUNBOOKS / "triage.yaml").runbook
    assert runbook.match.priority == -1000 and runbook.confirm.checks == []
    assert runbook.containment == [] and runbook.rollback == [] and runbook.hotfix is None
    for severity in Severity:
        assert all(runbook.policy_for(severity).gate(stage).mode == "approve" for stage in GATED_STAGES)


# --- broken runbooks name file and field ----------------------------------------------------


def test_zero_approvers_names_file_and_field(runbook_copy: Path) -> None:
    path = runbook_copy / "pii-leak.yaml"
    edit(path, "          count: 2\n", "          count: 0\n")
    with pytest.raises(RunbookError) as info:
        load_runbook(path)
    assert f"{path}: policy.high.stages.rollback.approve.count: " in str(info.value)  # the rest is pydantic's wording


def test_unknown_stage_name_is_refused(runbook_copy: Path) -> None:
    path = runbook_copy / "quality-regression.yaml"
    edit(path, "      rollback: auto           # many users", "      rollbak: auto           # many users")
    with pytest.raises(RunbookError) as info:
        load_runbook(path)
    message = str(info.value)
    assert message.startswith(f"{path}: policy.high.stages: ")
    assert "rollbak" in message and "cannot be gated" in message


def test_missing_policy_severity_is_refused(runbook_copy: Path) -> None:
    path = runbook_copy / "triage.yaml"
    text = path.read_text()
    start, end = text.index("  critical:\n"), text.index("containment: []")
    path.write_text(text[:start] + text[end:])
    with pytest.raises(RunbookError) as info:
        load_runbook(path)
    assert str(info.value) == f"{path}: policy: policy has no entry for severities ['critical']"


def test_bad_severity_key_names_the_key(runbook_copy: Path) -> None:
    path = runbook_copy / "pii-leak.yaml"
    edit(path, "\n  low:\n", "\n  lowish:\n")
    with pytest.raises(RunbookError) as info:
        load_runbook(path)
    assert f"{path}: policy.lowish: invalid key:" in str(info.value)


def test_one_line_per_error(runbook_copy: Path) -> None:
    path = runbook_copy / "harmful-output.yaml"
    edit(path, "dedup_key:", "dedup_kee:")
    edit(path, "  default: medium", "  default: severe")
    with pytest.raises(RunbookError) as info:
        load_runbook(path)
    lines = info.value.lines
    assert len(lines) == len(str(info.value).splitlines()) >= 3
    assert all(line.startswith(f"{path}: ") for line in lines)
    fields = {line.split(": ")[1] for line in lines}
    assert {"dedup_key", "dedup_kee", "severity.default"} <= fields


def test_yaml_syntax_error_names_file_and_line(runbook_copy: Path) -> None:
    path = runbook_copy / "harmful-output.yaml"
    text = path.read_text().splitlines()
    text[2] = "description: [unclosed: {"
    path.write_text("\n".join(text))
    with pytest.raises(RunbookError) as info:
        load_runbook(path)
    assert re.match(rf"{re.escape(str(path))}: line \d+, column \d+: YAML syntax error", str(info.value))


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(RunbookError, match="expected a mapping"):
        load_runbook(path)


def test_bad_dedup_template_is_caught_at_load(runbook_copy: Path) -> None:
    path = runbook_copy / "pii-leak.yaml"
    edit(path, 'dedup_key: "{runbook}/{model}"', 'dedup_key: "{runbook}/{modle}"')
    with pytest.raises(RunbookError, match=rf"{re.escape(str(path))}: dedup_key: .*modle"):
        load_runbook(path)


def test_duplicate_names_are_an_error(runbook_copy: Path) -> None:
    shutil.copy(runbook_copy / "pii-leak.yaml", runbook_copy / "pii-leak-copy.yml")
    with pytest.raises(RunbookError) as info:
        load_catalog(runbook_copy)
    message = str(info.value)
    assert ": name: runbook name 'pii-leak' is already used by " in message
    assert "pii-leak-copy.yml" in message and "pii-leak.yaml" in message


def test_catalog_requires_triage(runbook_copy: Path) -> None:
    (runbook_copy / "triage.yaml").unlink()
    with pytest.raises(RunbookError, match="no runbook named 'triage'"):
        load_catalog(runbook_copy)


def test_catalog_reports_every_broken_file(runbook_copy: Path) -> None:
    edit(runbook_copy / "pii-leak.yaml", "priority: 90", "priority: high")
    edit(runbook_copy / "triage.yaml", "  default: low", "  default: lowest")
    with pytest.raises(RunbookError) as info:
        load_catalog(runbook_copy)
    message = str(info.value)
    assert "pii-leak.yaml: match.priority:" in message
    assert "triage.yaml: severity.default:" in message


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_validate_real_folder_exits_0() -> None:
    result = CliRunner().invoke(runbooks_app, ["validate", str(RUNBOOKS)])
    assert result.exit_code == 0, result.output
    for name in SHIPPED:
        assert re.search(rf"OK\s+\S*{name}\.yaml", result.output)


def test_cli_validate_defaults_to_env_folder(monkeypatch: pytest.MonkeyPatch, runbook_copy: Path) -> None:
    edit(runbook_copy / "pii-leak.yaml", "          count: 2\n", "          count: 0\n")
    monkeypatch.setenv("STANCH_RUNBOOKS", str(runbook_copy))
    result = CliRunner().invoke(runbooks_app, ["validate"])
    assert result.exit_code == 1
    assert "pii-leak.yaml" in result.output


def test_cli_validate_broken_file_exits_1_naming_field(runbook_copy: Path) -> None:
    path = runbook_copy / "harmful-output.yaml"
    edit(path, "          count: 2\n", "          count: 0\n")
    result = CliRunner().invoke(runbooks_app, ["validate", str(path)])
    assert result.exit_code == 1
    assert f"FAIL {path}" in result.output
    assert f"{path}: policy.high.stages.contain.approve.count: " in result.output  # the rest is pydantic's wording


def test_cli_validate_folder_reports_bad_and_good_files(runbook_copy: Path) -> None:
    (runbook_copy / "broken.yaml").write_text("name: broken\n  description: [x\n")
    result = CliRunner().invoke(runbooks_app, ["validate", str(runbook_copy)])
    assert result.exit_code == 1
    assert re.search(r"broken\.yaml: line 2, column \d+: YAML syntax error", result.output)
    assert re.search(r"OK\s+\S*triage\.yaml", result.output)


def test_cli_validate_folder_checks_catalog_rules(runbook_copy: Path) -> None:
    (runbook_copy / "triage.yaml").unlink()
    result = CliRunner().invoke(runbooks_app, ["validate", str(runbook_copy)])
    assert result.exit_code == 1
    assert "no runbook named 'triage'" in result.output


def test_cli_validate_missing_path_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(runbooks_app, ["validate", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "no such file or folder" in result.output


def test_cli_list_json() -> None:
    result = CliRunner().invoke(runbooks_app, ["list", "--json", "--dir", str(RUNBOOKS)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["name"] for row in rows][0] == "harmful-output"  # highest priority first
    assert rows[-1]["name"] == "triage" and rows[-1]["priority"] == -1000
    demo = rows[0]
    assert demo["sha256"] == hashlib.sha256((RUNBOOKS / "harmful-output.yaml").read_bytes()).hexdigest()
    assert demo["sha256_short"] == demo["sha256"][:12] and demo["description"]


def test_cli_list_table_names_every_runbook() -> None:
    result = CliRunner().invoke(runbooks_app, ["list", "--dir", str(RUNBOOKS)])
    assert result.exit_code == 0, result.output
    for name in SHIPPED:
        assert name in result.output


def test_cli_list_broken_folder_exits_1(runbook_copy: Path) -> None:
    edit(runbook_copy / "triage.yaml", "  default: low", "  default: lowest")
    result = CliRunner().invoke(runbooks_app, ["list", "--dir", str(runbook_copy)])
    assert result.exit_code == 1 and "triage.yaml: severity.default:" in result.output


def test_only_containment_may_go_ahead_unattended(tmp_path):
    import pytest

    from stanch.runbooks.loader import RunbookError, default_runbooks_dir, load_runbook

    text = (default_runbooks_dir() / "harmful-output.yaml").read_text()
    broken = tmp_path / "harmful-output.yaml"
    unattended_restore = (
        "      restore: {approve: {count: 1, roles: [oncall], auto_on_timeout: true}}  # lifting protections is never silent"
    )
    broken.write_text(text.replace("      restore: *one_responder        # lifting protections is never silent", unattended_restore, 1))
    assert broken.read_text() != text
    with pytest.raises(RunbookError, match=r"harmful-output.yaml: policy.high.*restore.*only contain may go ahead unattended"):
        load_runbook(broken)


# --- EU AI Act Art. 3(49): every category, with its Art. 73 clock ----------------------------------

# The labels the shipped runbooks read, per Art. 3(49) category, and the report days Art. 73 gives:
# 10 for a death (73(4)), 2 for a widespread infringement or critical infrastructure (73(3)),
# else 15 (73(2)). Seriousness is a fact about the harm, so each holds at EVERY severity.
SERIOUS_HARMS = {
    "(a) death": ({"harm": "death"}, 10),
    "(a) health": ({"harm": "health-injury"}, 15),
    "(b) critical infrastructure": ({"sector": "critical-infrastructure"}, 2),
    "(c) fundamental rights": ({"harm": "fundamental-rights-discrimination"}, 15),
    "(c) widespread infringement": ({"harm": "fundamental-rights-privacy", "scope": "widespread"}, 2),
    "(d) property": ({"harm": "property-damage"}, 15),
    "(d) environment": ({"harm": "environment-spill"}, 15),
}
# Labels a harm-free signal may well carry: none of them makes an incident serious.
NOT_SERIOUS = {"alertname": "HarmfulOutput", "model": "support-bot", "severity": "critical", "harm": "embarrassment"}
EVERY_RUNBOOK = sorted(path.stem for path in RUNBOOKS.glob("*.yaml"))


def harm_signal(labels: dict[str, str], signal_id: str = "s"):
    from stanch.models.signals import Signal

    return Signal(signal_id=signal_id, model="support-bot", labels={"alertname": "Whatever", "model": "support-bot", **labels})


def test_every_runbook_is_covered_by_the_serious_harm_tests() -> None:
    assert EVERY_RUNBOOK == sorted(SHIPPED)  # a new runbook joins the parametrised tests below by itself


@pytest.mark.parametrize("name", EVERY_RUNBOOK)
@pytest.mark.parametrize("category", list(SERIOUS_HARMS))
def test_every_runbook_makes_every_serious_harm_serious_with_its_clock(name: str, category: str) -> None:
    """Graded as the severity activity grades (`grade`, then `seriousness` at that severity),
    and at every severity a responder may set: serious, with the Art. 73 clock of the category."""
    from stanch.runbooks.conditions import grade, seriousness

    labels, days = SERIOUS_HARMS[category]
    runbook = load_runbook(RUNBOOKS / f"{name}.yaml").runbook
    signals = [harm_signal(labels)]
    for fired in ([], [d for check in runbook.confirm.checks for d in check.detectors]):
        severity, reasons = grade(runbook, signals, fired)
        serious, report_days, reason = seriousness(runbook, signals, severity, fired)
        assert (serious, report_days) == (True, days), f"{name} graded {severity} ({reasons}): {reason}"
    for severity in Severity:
        serious, report_days, reason = seriousness(runbook, signals, severity, [])
        assert (serious, report_days) == (True, days), f"{name} at {severity}: {reason}"
    # The category may arrive on a later signal of an incident that opened without it.
    later = [harm_signal({}, "first"), harm_signal(labels, "later")]
    assert seriousness(runbook, later, grade(runbook, later, [])[0], [])[:2] == (True, days)


@pytest.mark.parametrize("name", EVERY_RUNBOOK)
@pytest.mark.parametrize(
    ("labels", "article"),
    [
        ({"harm": "death"}, "(a)"),
        ({"harm": "health-injury"}, "(a)"),
        ({"harm": "health"}, "(a)"),
        ({"sector": "critical-infrastructure"}, "(b)"),
    ],
    ids=["death", "health-injury", "health", "critical-infrastructure"],
)
def test_a_death_health_or_infrastructure_harm_grades_critical_in_every_runbook(name: str, labels: dict[str, str], article: str) -> None:
    """A death is never a medium incident, nor is a 2-day report clock a low one: critical
    whatever the detectors found, with the reason."""
    from stanch.runbooks.conditions import grade

    runbook = load_runbook(RUNBOOKS / f"{name}.yaml").runbook
    for fired in ([], [d for check in runbook.confirm.checks for d in check.detectors]):
        severity, reasons = grade(runbook, [harm_signal(labels)], fired)
        assert severity is Severity.critical, f"{name}: {reasons}"
        assert any(f"Art. 3(49){article}" in reason for reason in reasons), reasons


@pytest.mark.parametrize("name", EVERY_RUNBOOK)
def test_a_signal_without_a_serious_harm_stays_not_serious(name: str) -> None:
    from stanch.runbooks.conditions import grade, seriousness

    runbook = load_runbook(RUNBOOKS / f"{name}.yaml").runbook
    for labels in ({}, NOT_SERIOUS, {"harm": "reputation"}, {"sector": "retail"}):
        signals = [harm_signal(labels)]
        if "severity" not in labels:  # only a sender's own severity=critical may make it critical
            assert grade(runbook, signals, [])[0] is not Severity.critical, (name, labels)
        for at in Severity:
            serious, days, reason = seriousness(runbook, signals, at, [])
            assert serious is False and days == 15 and reason.startswith("not serious"), (name, labels, at, reason)


# scope=widespread on its own (no harm label): how each runbook models it. harmful-output,
# prompt-injection-campaign, toxic-content, unsafe-tool-use and triage treat a CRITICAL incident
# reaching many people as a widespread infringement; in pii-leak and training-data-leak, where
# the harm is to data protection, a fundamental right, it is one at any severity; a quality
# regression or a bad update reaching many users infringes nothing.
WIDESPREAD_ALONE = {
    "harmful-output": Severity.critical,
    "prompt-injection-campaign": Severity.critical,
    "toxic-content": Severity.critical,
    "unsafe-tool-use": Severity.critical,
    "triage": Severity.critical,
    "pii-leak": Severity.low,
    "training-data-leak": Severity.low,
    "quality-regression": None,
    "bad-model-update": None,
}


@pytest.mark.parametrize("name", EVERY_RUNBOOK)
def test_widespread_alone_is_serious_as_each_runbook_models_it(name: str) -> None:
    from stanch.runbooks.conditions import seriousness

    runbook = load_runbook(RUNBOOKS / f"{name}.yaml").runbook
    signals = [harm_signal({"scope": "widespread"})]
    from_severity = WIDESPREAD_ALONE[name]
    for at in Severity:
        expected = from_severity is not None and at.rank >= from_severity.rank
        assert seriousness(runbook, signals, at, [])[:2] == ((True, 2) if expected else (False, 2)), (name, at)


def test_a_death_with_critical_infrastructure_takes_the_shortest_clock() -> None:
    from stanch.models.signals import Signal
    from stanch.runbooks.conditions import seriousness

    runbook = load_runbook(RUNBOOKS / "triage.yaml").runbook
    signals = [Signal(signal_id="s", labels={"harm": "death", "sector": "critical-infrastructure"})]
    assert seriousness(runbook, signals, Severity.low, [])[:2] == (True, 2)


def test_regulatory_block_names_provider_and_system_for_the_report_draft(runbook_copy: Path) -> None:
    assert load_runbook(runbook_copy / "harmful-output.yaml").runbook.regulatory.provider is None
    path = runbook_copy / "harmful-output.yaml"
    edit(path, "  # provider: ", "  provider: ")
    edit(path, "  # system: ", "  system: ")
    regulatory = load_runbook(path).runbook.regulatory
    assert regulatory.provider.startswith("Example AI GmbH") and regulatory.system.startswith("support-bot")
    edit(path, "  provider: ", "  vendor: ")
    with pytest.raises(RunbookError, match=r"harmful-output.yaml: regulatory.vendor"):
        load_runbook(path)
