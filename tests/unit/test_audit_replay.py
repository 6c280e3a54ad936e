"""`stanch audit replay --file`: today's code reproduces every committed history, and a tampered
history fails naming its run and the event."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stanch.cli.main import app
from tests.workflow.conftest import TEST_DECISION_KEYS

HISTORIES = sorted((Path(__file__).resolve().parent.parent / "histories").glob("*.json"))
HIGH = Path(__file__).resolve().parent.parent / "histories" / "high_severity_restored.json"
MEDIUM = HIGH.with_name("medium_severity_restored.json")
FALSE_POSITIVE = HIGH.with_name("false_positive.json")


@pytest.fixture
def audit(tmp_path, monkeypatch):
    """Run `stanch audit …` as an auditor would: the installation's decision keys, no encryption."""
    for name in ("STANCH_ENCRYPTION_KEYS", "STANCH_ENCRYPTION_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    env = {"STANCH_DECISION_KEYS": TEST_DECISION_KEYS, "STANCH_HOME": str(tmp_path / "home")}

    def run(*args: str):
        return CliRunner().invoke(app, ["audit", *map(str, args)], env=env)

    return run


def tampered(tmp_path: Path, change) -> Path:
    history = json.loads(HIGH.read_text())
    change(history["events"])
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(history))
    return path


def first(events: list[dict], event_type: str, where=lambda e: True) -> dict:
    return next(e for e in events if e["eventType"] == f"EVENT_TYPE_{event_type}" and where(e))


def test_every_committed_history_replays(audit):
    assert HISTORIES, "no committed histories under tests/histories"
    result = audit("replay", *[arg for path in HISTORIES for arg in ("--file", path)])
    assert result.exit_code == 0, result.output
    assert result.output.count("reproduced (") == len(HISTORIES)
    assert f"all {len(HISTORIES)} reproduced" in result.output


def test_a_renamed_activity_diverges_at_that_event(audit, tmp_path):
    def rename(events):
        scheduled = first(
            events,
            "ACTIVITY_TASK_SCHEDULED",
            lambda e: e["activityTaskScheduledEventAttributes"]["activityType"]["name"] == "apply_rollback",
        )
        scheduled["activityTaskScheduledEventAttributes"]["activityType"]["name"] = "apply_rollback_v0"
        rename.event_id = scheduled["eventId"]

    path = tampered(tmp_path, rename)
    result = audit("replay", "--file", path)
    assert result.exit_code == 1, result.output
    assert "history-high_severity_restored run 2f8a6cb1-34a9-4a25-9733-f8862661581b: DIVERGES" in result.output
    assert f"event {rename.event_id} (ActivityTaskScheduled)" in result.output
    assert "apply_rollback_v0" in result.output


def test_a_dropped_timer_diverges_and_names_the_event(audit, tmp_path):
    def drop(events):
        timer = first(events, "TIMER_STARTED")
        events.remove(timer)
        drop.event_id = int(timer["eventId"])

    result = audit("replay", "--file", tampered(tmp_path, drop), "--json")
    assert result.exit_code == 1, result.output
    [outcome] = json.loads(result.output)
    assert outcome["workflow_id"] == "history-high_severity_restored" and not outcome["reproduced"]
    # The core notices the gap at the event after the one removed.
    assert outcome["divergence"]["event_id"] == drop.event_id + 1
    assert "out of order" in outcome["divergence"]["message"]


def test_an_altered_approval_no_longer_counts_so_the_replay_diverges(audit, tmp_path):
    """Changing who approved breaks the assertion: the workflow would not have moved on."""

    def impersonate(events):
        accepted = first(events, "WORKFLOW_EXECUTION_UPDATE_ACCEPTED")
        payload = accepted["workflowExecutionUpdateAcceptedEventAttributes"]["acceptedRequest"]["input"]["args"]["payloads"][0]
        decision = json.loads(base64.b64decode(payload["data"]))
        payload["data"] = base64.b64encode(json.dumps({**decision, "approver": "mallory"}).encode()).decode()

    result = audit("replay", "--file", tampered(tmp_path, impersonate))
    assert result.exit_code == 1, result.output
    assert "DIVERGES at event" in result.output


def no_decision_keys(monkeypatch) -> None:
    for name in ("STANCH_DECISION_KEYS", "STANCH_DECISION_PUBLIC_KEYS", "STANCH_DECISION_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("STANCH_ENCRYPTION_KEYS", "STANCH_ENCRYPTION_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)


def test_every_committed_history_replays_with_no_secret_configured(tmp_path, monkeypatch):
    """An auditor holds no decision key at all: every verdict is history's (before, 18 of the 20
    committed histories said CANNOT VERIFY and asked for the HMAC key that can forge approvals)."""
    no_decision_keys(monkeypatch)
    home = tmp_path / "empty-home"
    args = [arg for path in HISTORIES for arg in ("--file", str(path))]
    result = CliRunner().invoke(app, ["audit", "replay", *args], env={"STANCH_HOME": str(home)})
    assert result.exit_code == 0, result.output
    assert result.output.count("reproduced (") == len(HISTORIES) and "CANNOT VERIFY" not in result.output
    assert not home.exists() or not any(home.iterdir()), "an audit never creates a key file"


def test_every_committed_history_replays_under_other_decision_keys(tmp_path, monkeypatch):
    """Other keys under the same ids as the recording's (HMAC `test`) and others (Ed25519): no difference."""
    no_decision_keys(monkeypatch)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from stanch.trust.decision_keys import public_line

    env = {
        "STANCH_DECISION_KEYS": "k2:" + base64.b64encode(b"k" * 32).decode(),
        "STANCH_DECISION_PUBLIC_KEYS": public_line("other", Ed25519PrivateKey.generate().public_key()),
        "STANCH_HOME": str(tmp_path / "home"),
    }
    result = CliRunner().invoke(app, ["audit", "replay", *[a for p in HISTORIES for a in ("--file", str(p))], "--json"], env=env)
    assert result.exit_code == 0, result.output
    outcomes = json.loads(result.output)
    assert [o["workflow_id"] for o in outcomes if not o["reproduced"] or o["unverifiable"]] == []


def test_a_legacy_run_that_diverges_under_a_key_not_configured_says_cannot_verify(tmp_path, monkeypatch):
    """A run from before verdicts were recorded replays a decision under a key it lacks as counted;
    if the replay then diverges, the missing key may be why: named, exit 2, the divergence kept."""
    no_decision_keys(monkeypatch)

    def rename(events):
        scheduled = first(
            events,
            "ACTIVITY_TASK_SCHEDULED",
            lambda e: e["activityTaskScheduledEventAttributes"]["activityType"]["name"] == "apply_rollback",
        )
        scheduled["activityTaskScheduledEventAttributes"]["activityType"]["name"] = "apply_rollback_v0"

    path = tampered(tmp_path, rename)
    result = CliRunner().invoke(app, ["audit", "replay", "--file", str(path), "--json"], env={"STANCH_HOME": str(tmp_path / "home")})
    assert result.exit_code == 2, result.output
    [outcome] = json.loads(result.output)
    assert outcome["unverifiable"].startswith("a run from before verdicts were recorded in history, with decisions signed with key id test")
    assert "no decision key is configured" in outcome["unverifiable"] and outcome["divergence"] is not None


def test_a_history_with_no_signed_decision_replays_without_keys(tmp_path, monkeypatch):
    monkeypatch.delenv("STANCH_DECISION_KEYS", raising=False)
    result = CliRunner().invoke(app, ["audit", "replay", "--file", str(FALSE_POSITIVE)], env={"STANCH_HOME": str(tmp_path / "home")})
    assert result.exit_code == 0 and "reproduced" in result.output, result.output


def test_a_dry_run_replays_and_is_labelled(audit, tmp_path):
    history = json.loads(FALSE_POSITIVE.read_text())
    payload = history["events"][0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"][0]
    payload["data"] = base64.b64encode(json.dumps({**json.loads(base64.b64decode(payload["data"])), "dry_run": True}).encode()).decode()
    path = tmp_path / "dry.json"
    path.write_text(json.dumps(history))
    result = audit("replay", "--file", path, "--file", HIGH)
    assert result.exit_code == 0, result.output
    assert "history-false_positive run d0c179d2-8e93-4ab3-b46c-c74b8f7794cf [dry run]: reproduced" in result.output
    assert "history-high_severity_restored run 2f8a6cb1-34a9-4a25-9733-f8862661581b: reproduced" in result.output
    assert "all 2 reproduced with today's workflow code; 1 of them a dry run (rehearsals, marked [dry run])" in result.output
    [dry, real] = json.loads(audit("replay", "--file", path, "--file", HIGH, "--json").output)
    assert dry["dry_run"] is True and real["dry_run"] is False


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "say what to replay"),
        (["some-id", "--file", str(HIGH)], "one of them"),
        (["--file", "/no/such/history.json"], "no such file"),
        (["--all", "--since", "yesterday"], "neither a date"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(audit, args, says):
    result = audit("replay", *args)
    assert result.exit_code == 2, result.output
    assert says in result.output


def test_a_file_that_is_not_a_history_exits_2(audit, tmp_path):
    (tmp_path / "not-history.json").write_text('{"events": [{"eventId": "1", "eventType": "EVENT_TYPE_TIMER_FIRED"}]}')
    result = audit("replay", "--file", tmp_path / "not-history.json")
    assert result.exit_code == 2
    assert "not WorkflowExecutionStarted" in result.output


def encrypted_copy(source: Path, target: Path, key_line: str, rotated_to: str | None = None, from_event: int = 0) -> None:
    """The history as an installation with encryption on would have written it: every payload
    but the search attributes (which Temporal never lets a codec touch) through its codec — and,
    with `rotated_to`, the payloads of events from `from_event` on under that (new first) key."""
    import asyncio

    from google.protobuf import json_format
    from temporalio.api.common.v1 import Payload

    from stanch.config.settings import Settings
    from stanch.temporal.client import data_converter

    codec = data_converter(Settings(encryption_keys=key_line)).payload_codec
    later = data_converter(Settings(encryption_keys=rotated_to)).payload_codec if rotated_to else codec

    def walk(node, codec, inside_search_attributes=False):
        if isinstance(node, dict):
            if not inside_search_attributes and {"metadata", "data"} <= node.keys():
                payload = json_format.ParseDict(node, Payload())
                [sealed] = asyncio.run(codec.encode([payload]))
                return json_format.MessageToDict(sealed)
            return {k: walk(v, codec, inside_search_attributes or k == "searchAttributes") for k, v in node.items()}
        if isinstance(node, list):
            return [walk(item, codec, inside_search_attributes) for item in node]
        return node

    history = json.loads(source.read_text())
    history["events"] = [walk(event, later if rotated_to and int(event["eventId"]) >= from_event else codec) for event in history["events"]]
    target.write_text(json.dumps(history))


def test_an_encrypted_history_replays_and_reads_with_the_installations_key(audit, tmp_path, monkeypatch):
    from stanch.temporal.codec import new_key_line

    key_line = new_key_line("audit-test")
    encrypted = tmp_path / "encrypted.json"
    encrypted_copy(HIGH, encrypted, key_line)
    approval = first(json.loads(encrypted.read_text())["events"], "WORKFLOW_EXECUTION_UPDATE_ACCEPTED")
    payload = approval["workflowExecutionUpdateAcceptedEventAttributes"]["acceptedRequest"]["input"]["args"]["payloads"][0]
    assert b"approver" not in base64.b64decode(payload["data"]), "the copy is really encrypted"

    without_key = audit("timeline", "--file", encrypted)
    assert "cannot decode the payload" in without_key.output
    unreadable = audit("replay", "--file", encrypted)  # a missing key is no divergence: it says which key
    assert unreadable.exit_code == 2 and "CANNOT READ: encrypted with key id audit-test" in unreadable.output, unreadable.output

    monkeypatch.setenv("STANCH_ENCRYPTION_KEYS", key_line)
    replayed = audit("replay", "--file", encrypted)
    assert replayed.exit_code == 0, replayed.output
    timeline = audit("timeline", "--file", encrypted)
    assert timeline.exit_code == 0 and "| contain | alice (oncall) ✔, sam (safety) ✔ |" in timeline.output


def test_a_key_rotated_mid_incident_is_named_not_replayed_into_a_divergence(audit, tmp_path, monkeypatch):
    """The start event is under the old key, later payloads under the new one: every payload counts."""
    from stanch.temporal.codec import new_key_line

    old, new = new_key_line("before-rotation"), new_key_line("after-rotation")
    encrypted = tmp_path / "rotated.json"
    encrypted_copy(HIGH, encrypted, old, rotated_to=new, from_event=40)
    monkeypatch.setenv("STANCH_ENCRYPTION_KEYS", old)  # the retired key only: the new one was never listed here
    unreadable = audit("replay", "--file", encrypted)
    assert unreadable.exit_code == 2, unreadable.output
    assert "CANNOT READ: encrypted with key id after-rotation, and the configured keys are before-rotation" in unreadable.output
    assert "DIVERGES" not in unreadable.output

    monkeypatch.setenv("STANCH_ENCRYPTION_KEYS", f"{new},{old}")  # rotated properly: new first, old kept
    replayed = audit("replay", "--file", encrypted)
    assert replayed.exit_code == 0, replayed.output


def test_a_forged_signal_the_workflow_refused_does_not_stop_the_replay(audit, tmp_path):
    """Anyone who can signal through Temporal can send an approval under a key nobody has; the
    workflow refused it, so today's code still reproduces the run and the replay says so."""
    history = json.loads(HIGH.with_name("four_eyes_refused.json").read_text())
    signal = next(
        e
        for e in history["events"]
        if e["eventType"] == "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED"
        and e["workflowExecutionSignaledEventAttributes"]["signalName"] == "approve_signal"
        and b'"Alice "' in base64.b64decode(e["workflowExecutionSignaledEventAttributes"]["input"]["payloads"][0]["data"])
    )
    payload = signal["workflowExecutionSignaledEventAttributes"]["input"]["payloads"][0]
    decision = json.loads(base64.b64decode(payload["data"]))
    payload["data"] = base64.b64encode(json.dumps({**decision, "assertion": "forged:00"}).encode()).decode()
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(history))
    result = audit("replay", "--file", forged)
    assert result.exit_code == 0 and "reproduced" in result.output, result.output
