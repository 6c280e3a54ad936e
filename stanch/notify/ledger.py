"""Which channels already carry a notification: the ledger that makes the notify activity
idempotent per channel.

A retry of the activity (after a timeout, a worker crash, or because every channel failed)
skips channels recorded here. A delivery is recorded right after the channel accepts it;
a crash between the two re-sends once, which is why webhooks carry a stable `webhook-id`
and emails a stable Message-ID. The ledger is the records database's `notification_deliveries`
table (stanch.stores.records), shared by every worker: a retry another worker picks up skips
what the first one delivered.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from stanch.stores.records import Records, notification_deliveries


class DeliveryLedger:
    def __init__(self, records: Records) -> None:
        self.records = records

    def delivered(self, dedup_id: str) -> set[str]:
        """The channels that already carry this notification."""
        query = select(notification_deliveries.c.channel).where(notification_deliveries.c.dedup_id == dedup_id)
        with self.records.begin() as db:
            return set(db.scalars(query))

    def record(self, dedup_id: str, channel: str, incident_id: str) -> None:
        """Note a delivery; recording it twice (two workers, one retry) keeps the first."""
        row = {"dedup_id": dedup_id, "channel": channel, "incident_id": incident_id, "delivered_at": datetime.now(UTC)}
        with self.records.begin() as db:
            db.execute(self.records.insert(notification_deliveries).values(row).on_conflict_do_nothing())
