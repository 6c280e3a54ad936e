"""Notification channels: Slack-compatible webhooks, Standard Webhooks, SMTP email, the console.

`load_notify_config` reads who hears about what (STANCH_NOTIFY, default HOME/notify.yaml);
`deliver` sends one notification over one channel and raises `ChannelError` when it cannot.
The `notify` activity (activities/notify.py) adds recipient resolution and the ledger that
makes each channel's delivery happen once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stanch.notify import console, email, slack, webhook
from stanch.notify.channels import (
    BrokenChannel,
    Channel,
    ChannelError,
    ConsoleChannel,
    EmailChannel,
    Links,
    NotifyConfig,
    SlackChannel,
    WebhookChannel,
)
from stanch.notify.config import (
    NotifyConfigError,
    load_notify_config,
    parse_notify_config,
)
from stanch.notify.ledger import DeliveryLedger

if TYPE_CHECKING:
    from stanch.models.activity_io import Notification

__all__ = [
    "BrokenChannel",
    "Channel",
    "ChannelError",
    "ConsoleChannel",
    "DeliveryLedger",
    "EmailChannel",
    "Links",
    "NotifyConfig",
    "NotifyConfigError",
    "SlackChannel",
    "WebhookChannel",
    "deliver",
    "load_notify_config",
    "parse_notify_config",
]


async def deliver(notification: Notification, channel: Channel) -> None:
    """Send over one channel; raise `ChannelError` (or any exception) when it did not arrive."""
    match channel:
        case SlackChannel():
            await slack.deliver(notification, channel)
        case WebhookChannel():
            await webhook.deliver(notification, channel)
        case EmailChannel():
            await email.deliver(notification, channel)
        case ConsoleChannel():
            await console.deliver(notification, channel)
        case BrokenChannel():
            raise ChannelError(channel.problem)
        case _:
            raise ChannelError(f"no delivery for channel kind {channel.kind!r}")
