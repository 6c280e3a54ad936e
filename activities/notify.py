"""Notify: tell people. Console and a durable log today; each delivery happens once per id."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from temporalio import activity

from activities.deps import ActivityDeps
from activities.models import Notification, NotifyResult


class NotifyActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="notify")
    async def notify(self, notification: Notification) -> NotifyResult:
        log = self.deps.settings.notifications_dir / f"{notification.incident_id}.jsonl"
        if log.exists() and any(json.loads(line)["dedup_id"] == notification.dedup_id for line in log.read_text().splitlines()):
            return NotifyResult(delivered=notification.recipients)  # delivered by an earlier attempt
        activity.logger.warning(
            "[%s] %s → %s: %s", notification.severity, notification.kind, ", ".join(notification.recipients), notification.message
        )
        with log.open("a") as out:
            out.write(json.dumps({**notification.model_dump(mode="json"), "sent_at": datetime.now(UTC).isoformat()}) + "\n")
        return NotifyResult(delivered=notification.recipients)
