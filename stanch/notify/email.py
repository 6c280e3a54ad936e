"""Email over SMTP, with the standard library's smtplib run in a worker thread.

The Message-ID is derived from the notification's business identity and the channel, so a
message re-sent by a retry carries the same id and mail clients and ticket systems that
thread or deduplicate by Message-ID show it once.
"""

from __future__ import annotations

import asyncio
import hashlib
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from typing import TYPE_CHECKING

from stanch.notify.channels import (
    KIND_TITLES,
    ChannelError,
    EmailChannel,
    PartialDelivery,
)

if TYPE_CHECKING:
    from stanch.models.activity_io import Notification


def subject(notification: Notification) -> str:
    return f"[Stanch][{notification.severity.value}] {notification.incident_id}: {notification.kind}"


def message_id(notification: Notification, channel: EmailChannel) -> str:
    digest = hashlib.sha256(f"{notification.dedup_id}\n{channel.name}".encode()).hexdigest()[:32]
    domain = channel.sender.rpartition("@")[2] or "stanch.invalid"
    return f"<stanch.{digest}@{domain}>"


def build_message(notification: Notification, channel: EmailChannel) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject(notification)
    message["From"] = channel.sender
    message["To"] = ", ".join(channel.to)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = message_id(notification, channel)
    # Filters and ticket systems can route on these without parsing the subject.
    message["X-Stanch-Incident"] = notification.incident_id
    message["X-Stanch-Severity"] = notification.severity.value
    message["X-Stanch-Dedup-Id"] = notification.dedup_id
    links = channel.links.for_incident(notification.incident_id)
    lines = [
        f"{KIND_TITLES.get(notification.kind, notification.kind)} — {notification.severity.value.upper()} — {notification.incident_id}",
        "",
        notification.message,
        "",
        f"Open in the Stanch board: {links['board']}",
    ]
    if "temporal_ui" in links:
        lines.append(f"Workflow in the Temporal UI: {links['temporal_ui']}")
    lines += ["", f"kind: {notification.kind}   tier: {notification.tier}   to: {', '.join(notification.recipients) or 'anyone'}"]
    message.set_content("\n".join(lines) + "\n")
    return message


async def deliver(notification: Notification, channel: EmailChannel) -> None:
    await asyncio.to_thread(_send, build_message(notification, channel), channel)


def _send(message: EmailMessage, channel: EmailChannel) -> None:
    where = f"SMTP {channel.smtp_host}:{channel.smtp_port}"
    try:
        if channel.ssl:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                channel.smtp_host, channel.smtp_port, timeout=channel.timeout_seconds, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(channel.smtp_host, channel.smtp_port, timeout=channel.timeout_seconds)
        with smtp:
            if channel.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if channel.username:
                smtp.login(channel.username, channel.password or "")
            refused = smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        raise ChannelError(f"{where} refused every recipient: {_codes(exc.recipients)}") from None
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        raise ChannelError(f"{where} answered {exc.smtp_code}: {text[:200]}") from None
    except (smtplib.SMTPException, OSError) as exc:  # connection refused, timeouts, TLS failures
        raise ChannelError(f"{where}: {type(exc).__name__}: {exc}") from None
    if refused:
        # Others got it, but a responder who did not is a gap someone must see.
        raise PartialDelivery(f"{where} refused some recipients: {_codes(refused)}")


def _codes(refused: dict) -> str:
    return ", ".join(f"{address} ({code})" for address, (code, _) in refused.items())
