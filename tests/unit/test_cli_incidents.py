"""`stanch incidents …` and the decision commands against a tiny local HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from typer.testing import CliRunner

from stanch.cli.main import app

STATE = {
    "id": "harmful-output-support-bot-0123456789",
    "status": "containing",
    "severity": "critical",
    "runbook": "harmful-output",
    "runbook_sha256": "ab" * 32,
    "target": {"adapter": "gateway", "model": "support-bot", "version": "v2"},
    "dedup_key": "harmful-output/support-bot",
    "opened_at": "2026-11-26T10:00:02Z",
    "stages": [
        {"name": "confirm", "status": "done", "detail": "reproduced"},
        {"name": "contain", "status": "awaiting_approval", "detail": ""},
    ],
    "pending_approval": {
        "stage": "contain",
        "severity": "critical",
        "count": 2,
        "roles": ["oncall", "safety"],
        "requested_at": "2026-11-26T10:00:05Z",
    },
    "actions": [],
    "approvals": [],
    "timeline": [{"at": "2026-11-26T10:00:02Z", "kind": "signal", "message": "alert received", "actor": "alertmanager"}],
}
# Compact, key order as the API sends it: `--json` must pass these bytes through untouched.
STATE_BODY = json.dumps(STATE, separators=(",", ":"))


class FakeApi(BaseHTTPRequestHandler):
    posted: list[tuple[str, dict[str, Any]]] = []

    def _answer(self, status: int, body: str) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body.encode())))
        self.end_headers()
        self.wfile.write(body.encode())

    def do_GET(self) -> None:
        if self.path == f"/v1/incidents/{STATE['id']}":
            self._answer(200, STATE_BODY)
        else:
            self._answer(404, json.dumps({"detail": "no incident 'nope'; GET /v1/incidents lists the known ones"}))

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        FakeApi.posted.append((self.path, body))
        self._answer(200, json.dumps({"accepted": True, "message": "approval recorded: 1 of 2"}))

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def api_url() -> Iterator[str]:
    FakeApi.posted = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


runner = CliRunner()


def test_show_json_prints_exactly_what_the_api_answered(api_url: str) -> None:
    result = runner.invoke(app, ["incidents", "show", STATE["id"], "--json", "--api", api_url])
    assert result.exit_code == 0, result.output
    assert result.stdout == STATE_BODY + "\n"


def test_show_renders_status_and_what_awaits_approval(api_url: str) -> None:
    result = runner.invoke(app, ["incidents", "show", STATE["id"], "--api", api_url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "containing" in result.stdout
    assert "awaiting approval: contain needs 2 of roles oncall, safety" in result.stdout


def test_show_unknown_incident_fails_with_the_apis_message(api_url: str) -> None:
    result = runner.invoke(app, ["incidents", "show", "nope", "--api", api_url], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "404: no incident 'nope'" in result.stderr


def test_unreachable_api_says_what_to_do() -> None:
    result = runner.invoke(app, ["incidents", "show", "x", "--api", "http://127.0.0.1:9"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "cannot reach the Stanch API" in result.stderr


def test_approve_defaults_to_the_stage_awaiting_approval(api_url: str) -> None:
    result = runner.invoke(app, ["approve", STATE["id"], "--by", "bob", "--role", "safety", "--api", api_url])
    assert result.exit_code == 0, result.output
    assert "approval recorded: 1 of 2" in result.stdout
    [(path, body)] = FakeApi.posted
    assert path == f"/v1/incidents/{STATE['id']}/approvals"
    assert body == {"stage": "contain", "approver": "bob", "roles": ["safety"], "approve": True, "comment": "", "decision_id": ""}


def test_reject_and_resolve_send_their_decisions(api_url: str) -> None:
    runner.invoke(app, ["reject", STATE["id"], "--stage", "rollback", "--by", "carol", "--comment", "too early", "--api", api_url])
    runner.invoke(app, ["resolve", STATE["id"], "--by", "carol", "--reason", "upstream fixed", "--api", api_url])
    (reject_path, reject), (resolve_path, resolve) = FakeApi.posted
    assert reject_path.endswith("/approvals") and reject["approve"] is False and reject["stage"] == "rollback"
    assert resolve_path.endswith("/resolve") and resolve == {"by": "carol", "reason": "upstream fixed"}


def test_report_filed_records_the_authoritys_reference(api_url: str) -> None:
    FakeApi.posted.clear()
    result = runner.invoke(app, ["report-filed", STATE["id"], "--by", "sam", "--reference", "EU-2026-0042", "--api", api_url])
    assert result.exit_code == 0, result.output
    ((path, body),) = FakeApi.posted
    assert path == f"/v1/incidents/{STATE['id']}/report" and body == {"by": "sam", "reference": "EU-2026-0042"}
