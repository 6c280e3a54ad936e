"""What the demo server keeps across restarts: uploaded files, fine-tuning jobs and their
events, and the fine-tuned models they produced. One SQLite file under the state folder;
every write is a transaction, so a crash never leaves a half-made job or model."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, filename TEXT NOT NULL, purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, content BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, idempotency_key TEXT UNIQUE, created_at INTEGER NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fine_tuned_models (
    name TEXT PRIMARY KEY, base_model TEXT NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, examples TEXT NOT NULL
);
"""


def now() -> int:
    return int(time.time())


class DemoStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the event loop and uvicorn's threads, serialised by a lock.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- files ---------------------------------------------------------------------------

    def add_file(self, file_id: str, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO files (id, filename, purpose, bytes, created_at, content) VALUES (?, ?, ?, ?, ?, ?)",
                (file_id, filename, purpose, len(content), now(), content),
            )
        found = self.file(file_id)
        assert found is not None
        return found

    def file(self, file_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT id, filename, purpose, bytes, created_at FROM files WHERE id = ?", (file_id,))
        if not rows:
            return None
        return {"object": "file", "status": "processed", "status_details": None, **dict(rows[0])}

    def file_content(self, file_id: str) -> bytes | None:
        rows = self._rows("SELECT content FROM files WHERE id = ?", (file_id,))
        return bytes(rows[0]["content"]) if rows else None

    # --- jobs ----------------------------------------------------------------------------

    def add_job(self, job: dict[str, Any], idempotency_key: str | None) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, idempotency_key, created_at, body) VALUES (?, ?, ?, ?)",
                (job["id"], idempotency_key, job["created_at"], json.dumps(job)),
            )

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT body FROM jobs WHERE id = ?", (job_id,))
        return json.loads(rows[0]["body"]) if rows else None

    def job_for_key(self, idempotency_key: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT body FROM jobs WHERE idempotency_key = ?", (idempotency_key,))
        return json.loads(rows[0]["body"]) if rows else None

    def jobs(self, limit: int, after: str | None = None) -> list[dict[str, Any]]:
        """Newest first, as OpenAI lists them; `after` is the id the previous page ended with."""
        rows = self._rows("SELECT id, body FROM jobs ORDER BY created_at DESC, rowid DESC")
        bodies = [json.loads(row["body"]) for row in rows]
        if after is not None:
            ids = [body["id"] for body in bodies]
            bodies = bodies[ids.index(after) + 1 :] if after in ids else []
        return bodies[:limit]

    def unfinished_jobs(self) -> list[dict[str, Any]]:
        bodies = [json.loads(row["body"]) for row in self._rows("SELECT body FROM jobs ORDER BY created_at")]
        return [body for body in bodies if body["status"] in ("validating_files", "queued", "running")]

    def save_job(self, job: dict[str, Any], event: tuple[str, str] | None = None, model: dict[str, Any] | None = None) -> None:
        """The job's new state, its event and (on success) its model: all or nothing."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET body = ? WHERE id = ?", (json.dumps(job), job["id"]))
            if event is not None:
                level, message = event
                seq = db.execute("SELECT COUNT(*) FROM job_events WHERE job_id = ?", (job["id"],)).fetchone()[0]
                db.execute(
                    "INSERT INTO job_events (id, job_id, created_at, level, message) VALUES (?, ?, ?, ?, ?)",
                    (f"ftevent-{job['id'][6:]}-{seq}", job["id"], now(), level, message),
                )
            if model is not None:
                db.execute(
                    "INSERT OR REPLACE INTO fine_tuned_models (name, base_model, job_id, created_at, examples) VALUES (?, ?, ?, ?, ?)",
                    (model["name"], model["base_model"], job["id"], now(), json.dumps(model["examples"])),
                )

    def job_events(self, job_id: str, limit: int) -> list[dict[str, Any]]:
        """Newest first, as OpenAI lists them."""
        rows = self._rows("SELECT * FROM job_events WHERE job_id = ? ORDER BY seq DESC LIMIT ?", (job_id, limit))
        return [
            {
                "object": "fine_tuning.job.event",
                "id": row["id"],
                "created_at": row["created_at"],
                "level": row["level"],
                "message": row["message"],
                "type": "message",
            }
            for row in rows
        ]

    # --- fine-tuned models ---------------------------------------------------------------

    def fine_tuned_models(self) -> list[dict[str, Any]]:
        rows = self._rows("SELECT * FROM fine_tuned_models ORDER BY created_at")
        return [{**dict(row), "examples": json.loads(row["examples"])} for row in rows]

    def fine_tuned_model(self, name: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM fine_tuned_models WHERE name = ?", (name,))
        return {**dict(rows[0]), "examples": json.loads(rows[0]["examples"])} if rows else None
