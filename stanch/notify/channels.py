"""Notification channels as the worker uses them: secrets read, links known, ready to deliver.

`stanch.notify.config` turns the YAML file into these once, at worker start. Secrets are
kept out of every repr so a channel can be logged, and `secrets()` names them so a failure
message can be scrubbed before it reaches workflow history (which is the audit record and
is readable by anyone with Temporal UI access).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:  # the library never imports activities at run time; the type is for readers
    from stanch.models.activity_io import Notification

CONSOLE = "console"  # always defined: the channel of last resort
ANYONE = "*"  # the recipients entry for names the file does not list


class ChannelError(Exception):
    """A delivery failed; the message says why in words a responder can act on (never a secret)."""


class PartialDelivery(ChannelError):
    """The message went out, but not to everyone (an SMTP server refused some recipients).
    It counts as delivered — a retry would send it again to those who got it — and the gap
    is reported like a failure."""


@dataclass(frozen=True)
class Links:
    """Where a message sends its reader: the Stanch board and, if configured, the Temporal UI."""

    board_url: str
    temporal_ui_url: str | None = None
    namespace: str = "default"

    def board(self, incident_id: str) -> str:
        return f"{self.board_url.rstrip('/')}/incidents/{quote(incident_id, safe='')}"

    def temporal(self, incident_id: str) -> str | None:
        # The incident id is the workflow id; the UI redirects a bare workflow id to its latest run.
        if not self.temporal_ui_url:
            return None
        return f"{self.temporal_ui_url.rstrip('/')}/namespaces/{quote(self.namespace, safe='')}/workflows/{quote(incident_id, safe='')}"

    def for_incident(self, incident_id: str) -> dict[str, str]:
        links = {"board": self.board(incident_id)}
        if temporal := self.temporal(incident_id):
            links["temporal_ui"] = temporal
        return links


@dataclass(frozen=True)
class Channel:
    name: str
    links: Links
    timeout_seconds: float = 10.0

    @property
    def kind(self) -> str:
        return type(self).__name__.removesuffix("Channel").lower()

    def secrets(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class SlackChannel(Channel):
    webhook_url: str = field(default="", repr=False)  # a Slack webhook URL is itself the credential

    def secrets(self) -> tuple[str, ...]:
        return (self.webhook_url,)


@dataclass(frozen=True)
class WebhookChannel(Channel):
    url: str = field(default="", repr=False)  # may come from env: treat as secret when scrubbing
    secret: str = field(default="", repr=False)

    def secrets(self) -> tuple[str, ...]:
        return (self.url, self.secret)


@dataclass(frozen=True)
class EmailChannel(Channel):
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    sender: str = ""
    to: tuple[str, ...] = ()
    starttls: bool = False
    ssl: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def secrets(self) -> tuple[str, ...]:
        return (self.password,) if self.password else ()


@dataclass(frozen=True)
class ConsoleChannel(Channel):
    log_dir: Path = Path(".")


@dataclass(frozen=True)
class BrokenChannel(Channel):
    """A channel whose secret could not be read at start-up. It fails every delivery with
    `problem`, so the gap shows in each incident's timeline instead of stopping the worker
    (a worker that refuses to start handles no incident at all)."""

    declared_kind: str = ""
    problem: str = ""

    @property
    def kind(self) -> str:
        return self.declared_kind


@dataclass(frozen=True)
class NotifyConfig:
    channels: Mapping[str, Channel]
    recipients: Mapping[str, tuple[str, ...]]
    file: Path | None = None

    def channels_for(self, recipients: Iterable[str]) -> list[Channel]:
        """Every channel any recipient reaches, each once, in first-mentioned order.

        A name the file does not list goes to `*` (console unless the file says otherwise),
        and so does a notification addressed to no one: nothing is ever dropped silently."""
        names = list(recipients) or [ANYONE]
        fallback = self.recipients.get(ANYONE, (CONSOLE,))
        chosen = [channel for name in names for channel in self.recipients.get(name, fallback)]
        return [self.channels[name] for name in dict.fromkeys(chosen)]

    @property
    def broken(self) -> list[BrokenChannel]:
        return [channel for channel in self.channels.values() if isinstance(channel, BrokenChannel)]


def scrub(text: str, channel: Channel, limit: int = 400) -> str:
    """A failure message safe for workflow history: no secret of this channel, bounded length."""
    for secret in channel.secrets():
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def headline(notification: Notification) -> str:
    """One line that says what happened; the fallback text of every channel."""
    title = KIND_TITLES.get(notification.kind, notification.kind)
    return f"[{notification.severity.value.upper()}] {title}: {notification.incident_id}"


KIND_TITLES = {
    "page": "New incident",
    "escalation": "Escalation",
    "approval_needed": "Approval needed",
    "action_failed": "Action failed",
    "report_reminder": "Report reminder",
    "status": "Status",
}
