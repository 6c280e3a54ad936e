"""SQLite state of the reference gateway: schema, seed data, transactions and reads.

One connection guarded by a lock; every change runs inside `transaction()` (BEGIN IMMEDIATE),
so an action and its ledger row commit together or not at all — that is what makes an
idempotency key apply exactly once even if the caller dies mid-request.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stanch.gateway import holds

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name             TEXT PRIMARY KEY,
    release_version  TEXT NOT NULL,   -- what the platform team deployed
    pinned_version   TEXT,            -- rollback override
    fallback_version TEXT,
    fallback_active  INTEGER NOT NULL DEFAULT 0,
    system_prompt    TEXT
);
CREATE TABLE IF NOT EXISTS versions (
    model      TEXT NOT NULL REFERENCES models(name),
    version    TEXT NOT NULL,
    behaviour  TEXT NOT NULL CHECK (behaviour IN ('good', 'leaky', 'fixed')),
    enabled    INTEGER NOT NULL DEFAULT 1,
    source     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS features (
    model       TEXT NOT NULL REFERENCES models(name),
    name        TEXT NOT NULL,
    enabled     INTEGER NOT NULL DEFAULT 1,
    incident_id TEXT,                 -- who switched it off
    PRIMARY KEY (model, name)
);
CREATE TABLE IF NOT EXISTS blocks (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    model           TEXT NOT NULL REFERENCES models(name),
    direction       TEXT NOT NULL CHECK (direction IN ('prompt', 'output')),
    pattern         TEXT NOT NULL,
    incident_id     TEXT NOT NULL,
    idempotency_key TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoint_rules (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    model           TEXT NOT NULL REFERENCES models(name),
    mode            TEXT NOT NULL CHECK (mode IN ('deny', 'allow_list', 'rate_limit')),
    clients         TEXT NOT NULL DEFAULT '[]',
    per_minute      INTEGER,
    incident_id     TEXT NOT NULL,
    idempotency_key TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS guardrails (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    model           TEXT NOT NULL REFERENCES models(name),
    pattern         TEXT NOT NULL,
    incident_id     TEXT NOT NULL,
    idempotency_key TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    idempotency_key TEXT PRIMARY KEY,
    incident_id     TEXT NOT NULL,
    model           TEXT NOT NULL,
    kind            TEXT NOT NULL,
    params          TEXT NOT NULL,
    result          TEXT NOT NULL,
    inverse         TEXT,
    applied_at      TEXT NOT NULL,
    undone_at       TEXT,
    undo_key        TEXT UNIQUE,
    undo_result     TEXT,
    presented       INTEGER NOT NULL DEFAULT 1,
    undo_presented  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id          TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    model           TEXT NOT NULL,
    kind            TEXT NOT NULL,
    params          TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    progress        REAL NOT NULL DEFAULT 0.0,
    result          TEXT NOT NULL DEFAULT '{}',
    error           TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
"""

# Tables whose rows a holder owns: the ledger (who applied each key) and the per-action rows.
HOLDER_TABLES = ("ledger", "blocks", "endpoint_rules", "guardrails")

DEMO_MODEL = "support-bot"


def utc_now() -> str:
    return datetime.now(UTC).isoformat()


def version_sort_key(version: str) -> tuple[int, int, str]:
    """Numeric versions order numerically ("10" after "9"); anything else after, by name."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def highest_enabled_below(versions: list[sqlite3.Row], ceiling: str) -> str | None:
    below = [v["version"] for v in versions if v["enabled"] and version_sort_key(v["version"]) < version_sort_key(ceiling)]
    return max(below, key=version_sort_key) if below else None


def resolve_served_version(model: sqlite3.Row, versions: list[sqlite3.Row]) -> str | None:
    """fallback if active, else pin, else release — stepping down past disabled versions."""
    if model["fallback_active"] and model["fallback_version"]:
        chosen = model["fallback_version"]
    else:
        chosen = model["pinned_version"] or model["release_version"]
    if any(v["version"] == chosen and v["enabled"] for v in versions):
        return chosen
    return highest_enabled_below(versions, chosen)


class GatewayStore:
    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN ourselves so the transaction boundaries are visible.
        self.conn = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self.conn.row_factory = sqlite3.Row
        self.lock = threading.RLock()
        with self.lock:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(SCHEMA + holds.SCHEMA)
            self._add_holder_columns()
        self._seed()
        with self.transaction() as db:
            holds.adopt_legacy_holds(db)

    def _add_holder_columns(self) -> None:
        # A database from before holders: who holds a row is then its incident (NULL reads so).
        for table in HOLDER_TABLES:
            columns = {row["name"] for row in self.conn.execute(f"PRAGMA table_info({table})")}
            if "holder" not in columns:
                self.conn.execute(f"ALTER TABLE {table} ADD COLUMN holder TEXT")

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so two gateway processes sharing one file
        # cannot both decide a key is new.
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self.conn.execute(sql, params).fetchall()

    def _seed(self) -> None:
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM models WHERE name = ?", (DEMO_MODEL,)).fetchone():
                return
            now = utc_now()
            db.execute("INSERT INTO models (name, release_version, fallback_version) VALUES (?, '2', '1')", (DEMO_MODEL,))
            db.executemany(
                "INSERT INTO versions (model, version, behaviour, source, created_at) VALUES (?, ?, ?, 'seed', ?)",
                [(DEMO_MODEL, "1", "good", now), (DEMO_MODEL, "2", "leaky", now)],
            )
            db.execute("INSERT INTO features (model, name, enabled) VALUES (?, 'web-search', 1)", (DEMO_MODEL,))

    def reset_demo_model(self) -> None:
        """Back to the first deploy of the demo: v2 released, nothing contained, no hotfix.

        Versions, jobs and the ledger stay: they are history, not state.
        """
        with self.transaction() as db:
            db.execute(
                "UPDATE models SET release_version = '2', pinned_version = NULL, fallback_active = 0, system_prompt = NULL WHERE name = ?",
                (DEMO_MODEL,),
            )
            db.execute("UPDATE versions SET enabled = 1 WHERE model = ?", (DEMO_MODEL,))
            db.execute("UPDATE features SET enabled = 1, incident_id = NULL WHERE model = ?", (DEMO_MODEL,))
            holds.release_all(db, DEMO_MODEL)
            for table in ("blocks", "endpoint_rules", "guardrails"):
                db.execute(f"DELETE FROM {table} WHERE model = ?", (DEMO_MODEL,))

    # -- reads ---------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        return [r["name"] for r in self.query("SELECT name FROM models ORDER BY name")]

    def model_row(self, model: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM models WHERE name = ?", (model,))
        return rows[0] if rows else None

    def versions(self, model: str) -> list[sqlite3.Row]:
        rows = self.query("SELECT * FROM versions WHERE model = ?", (model,))
        return sorted(rows, key=lambda r: version_sort_key(r["version"]))

    def version_row(self, model: str, version: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM versions WHERE model = ? AND version = ?", (model, version))
        return rows[0] if rows else None

    def served_version(self, model: str) -> str | None:
        row = self.model_row(model)
        return resolve_served_version(row, self.versions(model)) if row else None

    def features(self, model: str) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM features WHERE model = ? ORDER BY name", (model,))

    def blocks(self, model: str, direction: str) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM blocks WHERE model = ? AND direction = ? ORDER BY id", (model, direction))

    def endpoint_rules(self, model: str) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM endpoint_rules WHERE model = ? ORDER BY id", (model,))

    def guardrails(self, model: str) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM guardrails WHERE model = ? ORDER BY id", (model,))

    def holds(self, model: str) -> list[dict[str, Any]]:
        with self.lock:
            return holds.held(self.conn, model)

    def ledger_row(self, key: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM ledger WHERE idempotency_key = ?", (key,))
        return rows[0] if rows else None

    def ledger_entries(self) -> list[dict[str, Any]]:
        return [ledger_entry(r) for r in self.query("SELECT * FROM ledger ORDER BY applied_at, rowid")]

    def job_row(self, job_id: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return rows[0] if rows else None

    def state(self, model: str) -> dict[str, Any] | None:
        """Everything about one model's control state, as plain JSON."""
        row = self.model_row(model)
        if row is None:
            return None
        versions = self.versions(model)
        features = self.features(model)
        active_jobs = self.query("SELECT * FROM jobs WHERE model = ? AND status IN ('queued', 'running') ORDER BY created_at", (model,))
        return {
            "model": model,
            "versions": [
                {k: (bool(v[k]) if k == "enabled" else v[k]) for k in ("version", "behaviour", "enabled", "source", "created_at")}
                for v in versions
            ],
            "release_version": row["release_version"],
            "pinned_version": row["pinned_version"],
            "fallback_version": row["fallback_version"],
            "fallback_active": bool(row["fallback_active"]),
            "served_version": resolve_served_version(row, versions),
            "features": {f["name"]: bool(f["enabled"]) for f in features},
            "feature_incidents": {f["name"]: f["incident_id"] for f in features if not f["enabled"]},
            # Who holds each feature, pin, version or fallback protection, oldest first; the
            # fields above are what their union makes.
            "holds": self.holds(model),
            "blocked_prompts": [pattern_entry(b) for b in self.blocks(model, "prompt")],
            "blocked_outputs": [pattern_entry(b) for b in self.blocks(model, "output")],
            "endpoint_rules": [endpoint_rule_entry(r) for r in self.endpoint_rules(model)],
            "system_prompt": row["system_prompt"],
            "guardrails": [pattern_entry(g) for g in self.guardrails(model)],
            "active_jobs": [job_entry(j) for j in active_jobs],
        }


def pattern_entry(row: sqlite3.Row) -> dict[str, Any]:
    entry = {k: row[k] for k in ("id", "pattern", "incident_id", "idempotency_key")}
    entry["holder"] = row["holder"] or row["incident_id"]
    return entry


def endpoint_rule_entry(row: sqlite3.Row) -> dict[str, Any]:
    entry = {k: row[k] for k in ("id", "mode", "per_minute", "incident_id", "idempotency_key")}
    entry["holder"] = row["holder"] or row["incident_id"]
    entry["clients"] = json.loads(row["clients"])
    return entry


def ledger_entry(row: sqlite3.Row) -> dict[str, Any]:
    entry = dict(row)
    for column in ("params", "result", "inverse", "undo_result"):
        entry[column] = json.loads(row[column]) if row[column] is not None else None
    return entry


def job_entry(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "job_id": row["job_id"],
        "model": row["model"],
        "kind": row["kind"],
        "params": json.loads(row["params"]),
        "status": row["status"],
        "progress": row["progress"],
        "result": json.loads(row["result"]),
        "error": row["error"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
