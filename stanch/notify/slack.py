"""Slack (and Slack-compatible: Mattermost, Rocket.Chat, Discord's /slack) incoming webhooks.

One Block Kit message per notification: a header a responder can read at a glance on a phone
lock screen, the message, who else was told, and buttons straight to the board and the
Temporal UI. `text` is the fallback Slack shows in push notifications and old clients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from stanch.config.network import tls_verification
from stanch.notify.channels import KIND_TITLES, ChannelError, SlackChannel, headline

if TYPE_CHECKING:
    from stanch.models.activity_io import Notification

SEVERITY_MARK = {"critical": "🔴", "high": "🟠", "medium": "🟡", "low": "🔵"}
# Block Kit limits: header text 150 characters, section text 3000.
HEADER_LIMIT, SECTION_LIMIT = 150, 3000


def build_payload(notification: Notification, channel: SlackChannel) -> dict[str, Any]:
    severity = notification.severity.value
    title = KIND_TITLES.get(notification.kind, notification.kind)
    context = (
        f"*{title}*  ·  kind `{notification.kind}`  ·  tier {notification.tier}  ·  to {', '.join(notification.recipients) or 'anyone'}"
    )
    buttons: list[dict[str, Any]] = [
        _button("Open in Stanch board", channel.links.board(notification.incident_id), "stanch_open_board", primary=True)
    ]
    if temporal := channel.links.temporal(notification.incident_id):
        buttons.append(_button("Open in Temporal UI", temporal, "stanch_open_temporal"))
    header = f"{SEVERITY_MARK.get(severity, '⚪')} {severity.upper()} · {notification.incident_id}"
    return {
        "text": escape(f"{headline(notification)}: {notification.message}"),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": _cut(header, HEADER_LIMIT), "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _cut(escape(notification.message), SECTION_LIMIT)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(escape(context), SECTION_LIMIT)}]},
            {"type": "actions", "elements": buttons},
        ],
    }


async def deliver(notification: Notification, channel: SlackChannel) -> None:
    payload = build_payload(notification, channel)
    try:
        async with httpx.AsyncClient(timeout=channel.timeout_seconds, follow_redirects=False, verify=tls_verification()) as client:
            response = await client.post(channel.webhook_url, json=payload)
    except httpx.HTTPError as exc:
        # httpx messages can carry the URL, which is the secret: say only what kind of failure.
        raise ChannelError(f"Slack webhook unreachable: {type(exc).__name__}") from None
    if not response.is_success:
        # Slack answers errors in plain words (invalid_payload, no_service, channel_is_archived).
        raise ChannelError(f"Slack webhook answered HTTP {response.status_code}: {response.text.strip()[:200]}")


def escape(text: str) -> str:
    """Slack reads &, < and > as control characters (links, mentions): escape them so a
    message quoting model output cannot ping @channel or forge a link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _button(text: str, url: str, action_id: str, primary: bool = False) -> dict[str, Any]:
    button: dict[str, Any] = {"type": "button", "text": {"type": "plain_text", "text": text}, "url": url, "action_id": action_id}
    if primary:
        button["style"] = "primary"
    return button


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
