"""Generic webhooks signed per Standard Webhooks (standardwebhooks.com), for pager bridges,
chat-ops bots and anything else that can verify an HMAC.

The `webhook-id` is the notification's business identity plus the channel name, the same on
every retry, so a receiver that remembers ids delivers each notification once even when
Stanch cannot tell whether an earlier attempt arrived. The body is the notification itself
(every field of `stanch.models.activity_io.Notification`) plus `links` to the board and Temporal UI.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx
from standardwebhooks import Webhook

from stanch.config.network import tls_verification
from stanch.notify.channels import ChannelError, WebhookChannel

if TYPE_CHECKING:
    from stanch.models.activity_io import Notification

USER_AGENT = "Stanch-Notify/1"


def message_id(notification: Notification, channel: WebhookChannel) -> str:
    return f"{notification.dedup_id}/{channel.name}"


def build_request(notification: Notification, channel: WebhookChannel, now: datetime | None = None) -> tuple[str, dict[str, str]]:
    """The exact body and headers to send: signing needs the bytes that go on the wire."""
    now = now or datetime.now(UTC)
    body = json.dumps(
        {**notification.model_dump(mode="json"), "links": channel.links.for_incident(notification.incident_id)},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    msg_id = message_id(notification, channel)
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(channel.secret).sign(msg_id, now, body),
    }
    return body, headers


async def deliver(notification: Notification, channel: WebhookChannel) -> None:
    body, headers = build_request(notification, channel)
    try:
        async with httpx.AsyncClient(timeout=channel.timeout_seconds, follow_redirects=False, verify=tls_verification()) as client:
            response = await client.post(channel.url, content=body.encode(), headers=headers)
    except httpx.HTTPError as exc:
        raise ChannelError(f"webhook unreachable: {type(exc).__name__}") from None  # the URL may be a secret
    if not response.is_success:
        raise ChannelError(f"webhook answered HTTP {response.status_code}: {response.text.strip()[:200]}")
