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
        scheduled = first(events, "ACTIVITY_TASK_SCHEDULED", lambda e: e["activityTaskScheduledEventAttributes"]["activityType"]["name"] == "apply_rollback")
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


def test_replay_without_the_decision_keys_warns_and_diverges(tmp_path, monkeypatch):
    monkeypatch.delenv("STANCH_DECISION_KEYS", raising=False)
    result = CliRunner().invoke(app, ["audit", "replay", "--file", str(HIGH)], env={"STANCH_HOME": str(tmp_path / "empty-home")})
    assert result.exit_code == 1
    assert "no decision keys" in result.output
    assert not (tmp_path / "empty-home" / "decision-keys").exists(), "an audit never creates a key file"


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


def encrypted_copy(source: Path, target: Path, key_line: str) -> None:
    """The history as an installation with encryption on would have written it: every payload
    but the search attributes (which Temporal never lets a codec touch) through its codec."""
    import asyncio

    from google.protobuf import json_format
    from temporalio.api.common.v1 import Payload

    from stanch.config import Settings
    from stanch.temporal import data_converter

    codec = data_converter(Settings(encryption_keys=key_line)).payload_codec

    def walk(node, inside_search_attributes=False):
        if isinstance(node, dict):
            if not inside_search_attributes and {"metadata", "data"} <= node.keys():
                payload = json_format.ParseDict(node, Payload())
                [sealed] = asyncio.run(codec.encode([payload]))
                return json_format.MessageToDict(sealed)
            return {k: walk(v, inside_search_attributes or k == "searchAttributes") for k, v in node.items()}
        if isinstance(node, list):
            return [walk(item, inside_search_attributes) for item in node]
        return node

    target.write_text(json.dumps(walk(json.loads(source.read_text()))))


def test_an_encrypted_history_replays_and_reads_with_the_installations_key(audit, tmp_path, monkeypatch):
    from stanch.codec import new_key_line

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
