"""`stanch audit timeline`: from the history alone, who approved each stage (and whether their
assertion verifies), every action with its idempotency key, and how long each stage took."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from typer.testing import CliRunner

from stanch.audit.history import load_history_file, parse_history
from stanch.audit.models import Timeline
from stanch.audit.render import to_html, to_markdown
from stanch.audit.timeline import build_timeline
from stanch.cli.main import app
from stanch.trust import assertions
from tests.workflow.conftest import TEST_DECISION_KEYS

HISTORIES = Path(__file__).resolve().parent.parent / "histories"
HIGH = HISTORIES / "high_severity_restored.json"
OCCURRENCE = "history-high_severity_restored@2f8a6cb1"


@pytest.fixture
def timeline_cli(tmp_path, monkeypatch):
    for name in ("STANCH_ENCRYPTION_KEYS", "STANCH_ENCRYPTION_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    env = {"STANCH_DECISION_KEYS": TEST_DECISION_KEYS, "STANCH_HOME": str(tmp_path / "home")}

    def run(*args: str):
        return CliRunner().invoke(app, ["audit", "timeline", *map(str, args)], env=env)

    return run


async def timeline_of(history) -> Timeline:
    assertions.trust(assertions.parse_keys(TEST_DECISION_KEYS))
    return await build_timeline(history, pydantic_data_converter, ["test"])


def test_markdown_names_both_approvers_of_each_four_eyes_stage_and_every_action(timeline_cli):
    result = timeline_cli("--file", HIGH, "--format", "md")
    assert result.exit_code == 0, result.output
    text = result.output
    for stage in ("contain", "rollback"):
        assert f"| {stage} | alice (oncall) ✔, sam (safety) ✔ |" in text, stage
    assert text.count("✔ verified") == 5 and "not verified" not in text
    for kind, key in [
        ("block_prompts", f"{OCCURRENCE}/contain/0/gateway:support-bot"),
        ("block_outputs", f"{OCCURRENCE}/contain/1/gateway:support-bot"),
        ("rollback_to_previous", f"{OCCURRENCE}/rollback/0/gateway:support-bot"),
        ("deploy_finetune", f"{OCCURRENCE}/hotfix/0/gateway:support-bot"),
        ("add_guardrail", f"{OCCURRENCE}/hotfix/1/gateway:support-bot"),
    ]:
        assert f"| {kind} | gateway:support-bot@2 | {key} |" in text, kind
    for undone in ("rollback_to_previous", "block_outputs", "block_prompts"):
        assert f"| restore | {undone} | gateway:support-bot@2 | " in text and "/undo |" in text, undone
    for milestone in ("acknowledged", "contained", "rolled back", "fix verified", "restored", "closed"):
        assert f"| {milestone} | 0." in text, milestone  # the scripted incident took well under a second


async def test_the_model_has_decisions_actions_timers_and_durations():
    t = await timeline_of(load_history_file(HIGH))
    assert t.occurrence == OCCURRENCE and t.execution == "completed" and t.final_status == "closed"
    approvals = {(d.stage, d.who, d.roles[0]) for d in t.decisions if d.name == "approve" and d.verified and d.outcome == "accepted"}
    assert approvals == {
        ("contain", "alice", "oncall"),
        ("contain", "sam", "safety"),
        ("rollback", "alice", "oncall"),
        ("rollback", "sam", "safety"),
        ("restore", "alice", "oncall"),
    }
    assert all(d.nonce and d.event_id for d in t.decisions), "every decision names its update id and event"
    assert [(a.stage, a.kind) for a in t.actions if a.stage == "restore"] == [
        ("restore", "rollback_to_previous"),
        ("restore", "block_outputs"),
        ("restore", "block_prompts"),
    ]
    assert all(a.idempotency_key and a.key_source == "result" and a.outcome == "completed" for a in t.actions)
    assert {tm.outcome for tm in t.timers} == {"canceled"} and len(t.timers) == 5
    assert [n.kind for n in t.notifications][:2] == ["page", "approval_needed"]
    seconds = {m.name: m.seconds for m in t.milestones}
    assert 0 < seconds["acknowledged"] <= seconds["contained"] < seconds["rolled back"] < seconds["restored"] < seconds["closed"]
    assert t.evidence[0].sha256 == "ab" * 32
    assert t.warnings == []


async def test_a_failed_action_keeps_its_key_and_says_why():
    t = await timeline_of(load_history_file(HISTORIES / "failed_rollback_aborted.json"))
    [failed] = [a for a in t.actions if a.outcome == "failed"]
    assert failed.kind == "rollback_to_previous" and failed.key_source == "computed"
    assert failed.idempotency_key.endswith("/rollback/0/gateway:support-bot") and "refused by the target" in failed.failure
    assert [d.what for d in t.decisions if d.name == "decide"] == ["abort after failure in rollback: manual"]
    assert "rolled back" not in {m.name for m in t.milestones if m.reached}


async def test_an_assertion_that_does_not_verify_is_marked_and_warned_about():
    history = json.loads(HIGH.read_text())
    accepted = next(e for e in history["events"] if e["eventType"] == "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED")
    payload = accepted["workflowExecutionUpdateAcceptedEventAttributes"]["acceptedRequest"]["input"]["args"]["payloads"][0]
    decision = json.loads(base64.b64decode(payload["data"]))
    payload["data"] = base64.b64encode(json.dumps({**decision, "roles": ["incident-commander"]}).encode()).decode()
    t = await timeline_of(parse_history(history, "edited", "edited"))
    first = t.decisions[0]
    assert first.roles == ["incident-commander"] and not first.verified
    assert any(f"event {first.event_id}: the workflow acted on approve" in w for w in t.warnings)
    assert "✘ not verified" in to_markdown(t)


async def test_html_escapes_what_came_from_outside():
    history = json.loads(HIGH.read_text())
    signaled = next(e for e in history["events"] if e["eventType"] == "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED")
    payload = signaled["workflowExecutionSignaledEventAttributes"]["input"]["payloads"][0]
    signal = json.loads(base64.b64decode(payload["data"]))
    signal["title"] = '<script>alert("pwned")</script> | & more'
    payload["data"] = base64.b64encode(json.dumps(signal).encode()).decode()
    t = await timeline_of(parse_history(history, "hostile", "hostile"))
    page = to_html(t)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; | &amp; more" in page
    assert page.startswith("<!doctype html>")
    assert not any(external in page for external in ("<script", "<link", "src=", "href=")), "one self-contained file"
    markdown = to_markdown(t)
    assert "<script>" not in markdown and "&lt;script>alert" in markdown and "\\| &" in markdown


def test_json_and_html_formats_and_bad_ones(timeline_cli, tmp_path):
    as_json = timeline_cli("--file", HIGH, "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    parsed = Timeline.model_validate_json(as_json.output)
    assert len(parsed.actions) == 8 and parsed.occurrence == OCCURRENCE
    out = tmp_path / "timeline.html"
    assert timeline_cli("--file", HIGH, "--format", "html", "--out", out).exit_code == 0
    assert "alice (oncall) ✔, sam (safety) ✔" in out.read_text()
    bad = timeline_cli("--file", HIGH, "--format", "pdf")
    assert bad.exit_code == 2 and "use md, json or html" in bad.output


async def test_an_approval_signal_refused_by_four_eyes_shows_as_refused():
    path = HISTORIES / "four_eyes_refused.json"
    if not path.exists():
        pytest.skip("four_eyes_refused.json is not among the committed histories")
    t = await timeline_of(load_history_file(path))
    signals = [d for d in t.decisions if d.via == "signal"]
    assert signals and all(d.verified for d in signals)
    refused = [d for d in signals if d.outcome == "refused"]
    assert refused and all("four eyes" in d.message for d in refused)


async def test_an_update_its_handler_refused_shows_with_the_reason():
    """Validator rejections never reach history; a handler's failure does, as UpdateCompleted."""
    history = json.loads(HIGH.read_text())
    completed = next(e for e in history["events"] if e["eventType"] == "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED")
    completed["workflowExecutionUpdateCompletedEventAttributes"]["outcome"] = {
        "failure": {"message": "incident is closed (closed)", "applicationFailureInfo": {"type": "Refused"}}
    }
    t = await timeline_of(parse_history(history, "refused", "refused"))
    first = t.decisions[0]
    assert first.outcome == "refused" and "incident is closed" in first.message
    assert first.completed_event_id == int(completed["eventId"])
    assert "| contain | alice (oncall) ✔ [refused], sam (safety) ✔ |" in to_markdown(t)


# --- dry runs -------------------------------------------------------------------------------


def as_dry_run(name: str = "false_positive.json") -> dict:
    """A committed history whose start input says dry_run, as `stanch runbooks plan --dry-run` starts one."""
    history = json.loads((HISTORIES / name).read_text())
    payload = history["events"][0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"][0]
    payload["data"] = base64.b64encode(json.dumps({**json.loads(base64.b64decode(payload["data"])), "dry_run": True}).encode()).decode()
    return history


def test_a_dry_run_is_a_field_of_the_json_timeline(timeline_cli, tmp_path):
    path = tmp_path / "dry.json"
    path.write_text(json.dumps(as_dry_run()))
    assert Timeline.model_validate_json(timeline_cli("--file", path, "--format", "json").output).dry_run is True
    assert Timeline.model_validate_json(timeline_cli("--file", HIGH, "--format", "json").output).dry_run is False


async def test_a_dry_run_is_marked_in_the_header_and_a_banner():
    t = await timeline_of(parse_history(as_dry_run(), "dry", "dry"))
    assert t.dry_run
    markdown = to_markdown(t)
    assert markdown.startswith("# Dry run history-false_positive — timeline\n\n> **DRY RUN — a rehearsal, not an incident")
    assert "| dry run | yes: a rehearsal, nothing was changed |" in markdown
    page = to_html(t)
    assert '<p class="banner">DRY RUN — a rehearsal, not an incident' in page and "<h1>Dry run history-false_positive" in page

    real = await timeline_of(load_history_file(HISTORIES / "false_positive.json"))
    assert not real.dry_run and "DRY RUN" not in to_markdown(real) and "banner" not in to_html(real).split("</style>")[1]
    assert "| dry run | no |" in to_markdown(real)


# --- runs that did not complete -------------------------------------------------------------


def cut(events: int, then: dict | None = None) -> dict:
    history = json.loads(HIGH.read_text())
    history["events"] = history["events"][:events]
    if then is not None:
        last = history["events"][-1]
        history["events"].append({"eventId": str(events + 1), "eventTime": last["eventTime"], **then})
    return history


async def test_a_running_run_shows_the_milestones_reached_and_the_rest_not_reached_yet():
    t = await timeline_of(parse_history(cut(70), "running", "running"))
    assert t.execution == "running"
    assert [m.name for m in t.milestones] == ["acknowledged", "contained", "rolled back", "fix verified", "restored", "closed"]
    assert [m.reached for m in t.milestones] == [True, True, False, False, False, False]
    assert all(m.seconds is None and m.how.startswith("not reached yet") for m in t.milestones[2:])
    markdown = to_markdown(t)
    assert "| acknowledged | 0." in markdown and "| contained | 0." in markdown
    for name in ("rolled back", "fix verified", "restored", "closed"):
        assert f"| {name} | not reached yet |" in markdown, name
    assert "the run is still running: see Durations and Actions for how far it got" in markdown


async def test_a_failed_run_shows_the_milestones_reached_and_the_rest_not_reached():
    failed = {
        "eventType": "EVENT_TYPE_WORKFLOW_EXECUTION_FAILED",
        "workflowExecutionFailedEventAttributes": {"failure": {"message": "worker bug"}},
    }
    t = await timeline_of(parse_history(cut(70, failed), "failed", "failed"))
    assert t.execution == "failed" and "worker bug" in t.close_reason
    reached = {m.name: m for m in t.milestones if m.reached}
    assert set(reached) == {"acknowledged", "contained", "closed"} and reached["closed"].how == "workflow failed"
    assert [m.how for m in t.milestones if not m.reached] == ["not reached: the run failed at event 71"] * 3
    markdown = to_markdown(t)
    assert "| rolled back | not reached |" in markdown and "not reached yet" not in markdown
    assert "the run failed, so it recorded no final state" in markdown


def test_without_any_key_each_decision_shows_the_verdict_history_recorded(tmp_path, monkeypatch):
    """No decision key configured (an auditor holding no secret): the workflow acted only on vouched
    decisions, so history's verdict is shown, said to be history's (before: every one "✘ not verified")."""
    for name in ("STANCH_DECISION_KEYS", "STANCH_DECISION_PUBLIC_KEYS", "STANCH_ENCRYPTION_KEYS", "STANCH_ENCRYPTION_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(app, ["audit", "timeline", "--file", str(HIGH), "--format", "json"], env={"STANCH_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    t = Timeline.model_validate_json(result.output)
    assert t.trusted_keys == [] and t.decisions and all(d.verified and not d.checked_here for d in t.decisions)
    assert all("not configured here: the verdict is history's" in d.verification for d in t.decisions)
    assert all("accepted by the workflow" in d.verification for d in t.decisions if d.via == "update")
    assert any("each decision's verdict is the one the workflow recorded" in w for w in t.warnings)
    assert not any("does not verify" in w for w in t.warnings)
    markdown = CliRunner().invoke(app, ["audit", "timeline", "--file", str(HIGH)], env={"STANCH_HOME": str(tmp_path)}).output
    assert "| contain | alice (oncall) ✔, sam (safety) ✔ |" in markdown and "not verified" not in markdown


async def test_with_the_key_each_signature_is_checked_here():
    t = await timeline_of(load_history_file(HIGH))
    assert all(d.checked_here and d.verified for d in t.decisions)
    assert all(d.verification == "signature checked here with hmac key 'test'" for d in t.decisions)


def continued_history(**input_changes) -> dict:
    """HIGH's history as if its run had continued an earlier one, its input changed so."""
    data = json.loads(HIGH.read_text())
    started = data["events"][0]["workflowExecutionStartedEventAttributes"]
    payload = started["input"]["payloads"][0]
    value = json.loads(base64.b64decode(payload["data"]))
    value.update(input_changes)
    payload["data"] = base64.b64encode(json.dumps(value).encode()).decode()
    started["continuedExecutionRunId"] = "0f0f0f0f-0000-0000-0000-000000000000"
    return data


async def test_a_run_that_continued_another_says_so_and_names_its_occurrence_as_the_workflow_did():
    recurrence = {"previous_occurrences": ["inc@0a0a0a0a"], "signals": []}
    history = parse_history(continued_history(recurrence=recurrence), "continued.json", "inc")
    t = await timeline_of(history)
    assert t.continued_from == "0f0f0f0f-0000-0000-0000-000000000000"
    assert t.occurrence == f"{t.incident_id}@{history.run_id[:8]}", "a new occurrence is named after its own run"
    assert "continues run 0f0f0f0f-0000-0000-0000-000000000000" in to_markdown(t)


async def test_a_handed_over_run_keeps_the_occurrence_it_carried():
    carried_state = {"occurrence": "inc-7@1a2b3c4d"}
    history = parse_history(continued_history(carried={"state": carried_state}), "handed-over.json", "inc")
    t = await timeline_of(history)
    assert t.occurrence == "inc-7@1a2b3c4d"
