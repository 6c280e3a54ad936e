"""The console: a log line on the worker, plus one JSON line per notification in
STANCH_HOME/notifications/<incident>.jsonl — the record that exists even with no other
channel configured, and the one local demos and tests read."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from stanch.notify.channels import ConsoleChannel

if TYPE_CHECKING:
    from stanch.models.activity_io import Notification

logger = logging.getLogger("stanch.notify")


def log_path(channel: ConsoleChannel, incident_id: str) -> Path:
    # Incident ids are slugs today; keep any other id from escaping the folder.
    return channel.log_dir / f"{re.sub(r'[^A-Za-z0-9._-]', '_', incident_id)}.jsonl"


async def deliver(notification: Notification, channel: ConsoleChannel) -> None:
    logger.warning(
        "[%s] %s → %s: %s (%s)",
        notification.severity.value,
        notification.kind,
        ", ".join(notification.recipients),
        notification.message,
        channel.links.board(notification.incident_id),
    )
    record = {**notification.model_dump(mode="json"), "sent_at": datetime.now(UTC).isoformat()}
    channel.log_dir.mkdir(parents=True, exist_ok=True)
    with log_path(channel, notification.incident_id).open("a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
