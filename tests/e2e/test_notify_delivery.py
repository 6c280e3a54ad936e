"""Notifications delivered for real on loopback: a local HTTP receiver stands in for Slack and a
pager bridge, a local aiosmtpd server for the mail relay. The notify activity runs as it does
in a worker (ActivityEnvironment, real channel file, real secrets from the environment)."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from standardwebhooks import Webhook
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.notify import NotifyActivities
from stanch.config.settings import Settings
from stanch.models.activity_io import Notification
from stanch.models.signals import Severity
from stanch.temporal.activity_deps import ActivityDeps

# Login over plain SMTP is fine on loopback; aiosmtpd warns about it for real servers.
pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")]

SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
SMTP_USER, SMTP_PASSWORD = "stanch", "smtp-secret-123"
INCIDENT = "leak-support-bot-5f2c0a9e1b"


def free_port() -> int:
    # aiosmtpd's Controller cannot take port 0: ask the OS for a free port first.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every POST; answers with the next scripted status for its path, else 200."""

    port: int = 0
    requests: list[Received] = field(default_factory=list)
    script: dict[str, list[int]] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, prefix: str) -> list[Received]:
        return [request for request in self.requests if request.path.startswith(prefix)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            state.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            statuses = state.script.get(self.path.split("/")[1], [])
            status = statuses.pop(0) if statuses else 200
            answer = b"ok" if status == 200 else b"no_service"
            self.send_response(status)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.refuse: set[str] = set()

    async def handle_RCPT(self, server, session, envelope, address: str, rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content, policy=email.policy.default)))
        return "250 Message accepted for delivery"


def authenticate(server, session, envelope, mechanism: str, auth_data: object) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (SMTP_USER.encode(), SMTP_PASSWORD.encode())
    return AuthResult(success=ok)


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    mailbox, port = Mailbox(), free_port()
    # Login is required, so a delivery proves the channel authenticated with the password from env.
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=port, authenticator=authenticate, auth_required=True, auth_require_tls=False
    )
    controller.start()
    yield mailbox, port
    controller.stop()


@pytest.fixture
def worker_home(tmp_path: Path, receiver: Receiver, smtp_server: tuple[Mailbox, int], monkeypatch: pytest.MonkeyPatch) -> Path:
    _, smtp_port = smtp_server
    monkeypatch.setenv("SLACK_ONCALL_URL", receiver.url("/slack/services/T000/B000/secret-path"))
    monkeypatch.setenv("BRIDGE_WHSEC", SECRET)
    monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)
    (tmp_path / "notify.yaml").write_text(
        f"""
channels:
  slack-oncall: {{slack: {{webhook_url_env: SLACK_ONCALL_URL}}}}
  pager-bridge: {{webhook: {{url: "{receiver.url("/bridge/hook")}", secret_env: BRIDGE_WHSEC}}}}
  email-safety:
    email: {{smtp_host: 127.0.0.1, smtp_port: {smtp_port}, sender: stanch@example.com, to: [safety@example.com, lead@example.com],
             username: {SMTP_USER}, password_env: SMTP_PASSWORD, timeout_seconds: 5}}
  email-down: {{email: {{smtp_host: 127.0.0.1, smtp_port: {free_port()}, sender: stanch@example.com, to: [x@example.com]}}}}
recipients:
  oncall: [slack-oncall, pager-bridge, console]
  safety: [email-safety, slack-oncall]
  unlucky: [pager-bridge, email-down]
board_url: http://127.0.0.1:8200/board
"""
    )
    return tmp_path


def notify_activities(home: Path) -> NotifyActivities:
    """What a worker builds at start: settings from the environment, the file read once."""
    return NotifyActivities(ActivityDeps.from_settings(Settings(home=home, ui_url="http://127.0.0.1:8233")))


def notification(recipients: list[str], number: int = 1) -> Notification:
    return Notification(
        incident_id=INCIDENT,
        kind="escalation",
        recipients=recipients,
        message=f"{INCIDENT} is not acknowledged",
        severity=Severity.high,
        tier=2,
        dedup_id=f"{INCIDENT}@1a2b3c4d/notify/{number}",
    )


async def run(acts: NotifyActivities, note: Notification):
    return await ActivityEnvironment().run(acts.deliver, note)


async def test_each_channel_delivers_for_real_and_a_retry_sends_nothing_twice(
    worker_home: Path, receiver: Receiver, smtp_server: tuple[Mailbox, int]
) -> None:
    mailbox, _ = smtp_server
    acts = notify_activities(worker_home)
    result = await run(acts, notification(["oncall", "safety"]))
    assert result.delivered == ["slack-oncall", "pager-bridge", "console", "email-safety"] and result.failed == []

    (slack,) = receiver.at("/slack/")
    assert slack.path == "/slack/services/T000/B000/secret-path" and slack.headers["content-type"] == "application/json"
    payload = json.loads(slack.body)
    assert [block["type"] for block in payload["blocks"]] == ["header", "section", "context", "actions"]
    assert payload["blocks"][0]["text"]["text"] == f"🟠 HIGH · {INCIDENT}"
    board, temporal = payload["blocks"][3]["elements"]
    assert board["url"] == f"http://127.0.0.1:8200/board/incidents/{INCIDENT}"
    assert temporal["url"] == f"http://127.0.0.1:8233/namespaces/default/workflows/{INCIDENT}"
    assert payload["text"] == f"[HIGH] Escalation: {INCIDENT}: {INCIDENT} is not acknowledged"

    (bridge,) = receiver.at("/bridge/")
    assert bridge.headers["webhook-id"] == f"{INCIDENT}@1a2b3c4d/notify/1/pager-bridge"
    body = Webhook(SECRET).verify(bridge.body, bridge.headers)
    assert Notification.model_validate(body) == notification(["oncall", "safety"])

    ((recipients, message),) = mailbox.messages
    assert recipients == ["safety@example.com", "lead@example.com"]
    assert message["Subject"] == f"[Stanch][high] {INCIDENT}: escalation"
    assert message["From"] == "stanch@example.com" and message["Message-ID"].endswith("@example.com>")
    assert f"http://127.0.0.1:8200/board/incidents/{INCIDENT}" in message.get_content()

    console_log = worker_home / "notifications" / f"{INCIDENT}.jsonl"
    assert json.loads(console_log.read_text())["dedup_id"] == notification([]).dedup_id

    # Temporal retries the activity (say its completion was lost): nothing is sent twice,
    # even by a restarted worker that reads the ledger afresh.
    retry = await run(notify_activities(worker_home), notification(["oncall", "safety"]))
    assert retry.delivered == result.delivered and retry.already_delivered == result.delivered
    assert len(receiver.requests) == 2 and len(mailbox.messages) == 1 and len(console_log.read_text().splitlines()) == 1


async def test_a_refusing_receiver_is_reported_while_the_others_arrive(worker_home: Path, receiver: Receiver) -> None:
    receiver.script["slack"] = [404]
    result = await run(notify_activities(worker_home), notification(["oncall"]))
    assert result.delivered == ["pager-bridge", "console"]
    assert result.failed == ["slack-oncall: Slack webhook answered HTTP 404: no_service"]
    assert "secret-path" not in " ".join(result.failed)  # the Slack URL is a credential


async def test_when_nothing_arrives_the_activity_fails_and_the_retry_delivers(worker_home: Path, receiver: Receiver) -> None:
    receiver.script["bridge"] = [503]
    acts = notify_activities(worker_home)
    with pytest.raises(ApplicationError) as caught:
        await run(acts, notification(["unlucky"]))
    assert caught.value.type == "NotificationUndelivered" and not caught.value.non_retryable
    assert "pager-bridge: webhook answered HTTP 503" in caught.value.message
    assert "email-down: SMTP 127.0.0.1:" in caught.value.message and "ConnectionRefusedError" in caught.value.message

    # Temporal's retry: the bridge is back, the relay still down. The incident goes on.
    retry = await run(acts, notification(["unlucky"]))
    assert retry.delivered == ["pager-bridge"] and retry.failed[0].startswith("email-down: SMTP 127.0.0.1:")
    first, second = receiver.at("/bridge/")
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # the receiver can tell it is the same message

    await run(acts, notification(["unlucky"]))  # had Temporal retried once more, the bridge hears nothing new
    assert len(receiver.at("/bridge/")) == 2


async def test_a_mail_that_reached_only_some_recipients_is_reported_and_never_sent_again(
    worker_home: Path, smtp_server: tuple[Mailbox, int]
) -> None:
    mailbox, _ = smtp_server
    mailbox.refuse = {"lead@example.com"}
    acts = notify_activities(worker_home)
    result = await run(acts, notification(["safety"]))
    assert "email-safety" in result.delivered
    assert result.failed == ["email-safety: SMTP 127.0.0.1:" + str(smtp_server[1]) + " refused some recipients: lead@example.com (550)"]
    ((recipients, _),) = mailbox.messages
    assert recipients == ["safety@example.com"]

    # Temporal retries the activity: the safety lead who got it does not get it twice.
    retry = await run(acts, notification(["safety"]))
    assert "email-safety" in retry.already_delivered and len(mailbox.messages) == 1
