"""Which channels already carry a notification: the ledger that makes the notify activity
idempotent per channel.

A retry of the activity (after a timeout, a worker crash, or because every channel failed)
skips channels recorded here. A delivery is recorded right after the channel accepts it;
a crash between the two re-sends once, which is why webhooks carry a stable `webhook-id`
and emails a stable Message-ID. The ledger lives beside the worker (SQLite under
STANCH_HOME/notifications/), so workers on different machines each keep their own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    dedup_id     TEXT NOT NULL,
    channel      TEXT NOT NULL,
    incident_id  TEXT NOT NULL,
    delivered_at TEXT NOT NULL,
    PRIMARY KEY (dedup_id, channel)
)
"""


class DeliveryLedger:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # several workers on one home read while one writes
            db.execute(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=5)) as db, db:
            yield db

    def delivered(self, dedup_id: str) -> set[str]:
        with self._connect() as db:
            return {row[0] for row in db.execute("SELECT channel FROM deliveries WHERE dedup_id = ?", (dedup_id,))}

    def record(self, dedup_id: str, channel: str, incident_id: str) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT OR IGNORE INTO deliveries (dedup_id, channel, incident_id, delivered_at) VALUES (?, ?, ?, ?)",
                (dedup_id, channel, incident_id, datetime.now(UTC).isoformat()),
            )
