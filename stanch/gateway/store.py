"""SQLite state of the gateway: schema, transactions, reads and the version a request is served by.

One connection guarded by a lock; every change runs inside `transaction()` (BEGIN IMMEDIATE),
so an action and its ledger row commit together or not at all — that is what makes an
idempotency key apply exactly once even if the caller dies mid-request.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stanch.gateway import holds, samples

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name             TEXT PRIMARY KEY,
    release_version  TEXT NOT NULL,   -- the stable version: what the platform team deployed
    pinned_version   TEXT,            -- rollback override
    fallback_version TEXT,            -- a safer version of this model ...
    fallback_model   TEXT,            -- ... or another model (another upstream or provider)
    fallback_active  INTEGER NOT NULL DEFAULT 0,
    system_prompt    TEXT,            -- a hotfix: sent upstream ahead of the user's messages
    configured       INTEGER NOT NULL DEFAULT 1,  -- named in the upstreams file: served
    file_digest      TEXT,            -- the file entry whose deploy was last taken over
    trainer          TEXT             -- JSON {base_url, api_key}: where fine-tunes are trained
);
CREATE TABLE IF NOT EXISTS versions (
    model           TEXT NOT NULL REFERENCES models(name),
    version         TEXT NOT NULL,
    base_url        TEXT NOT NULL,    -- the upstream's OpenAI API root
    upstream_model  TEXT NOT NULL,    -- the name the upstream knows it by
    api_key         TEXT,             -- a reference ("$ENV", "file:/path"), never the key
    timeout_seconds REAL NOT NULL DEFAULT 60,
    weight          INTEGER NOT NULL DEFAULT 0,  -- a canary's share of traffic, percent
    enabled         INTEGER NOT NULL DEFAULT 1,
    source          TEXT NOT NULL,
    created_at      TEXT NOT NULL,
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
    pattern         TEXT,             -- a regex ...
    detector        TEXT,             -- ... or a detector id
    detector_spec   TEXT,             -- JSON: a service detector's spec (built-ins need none)
    incident_id     TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    CHECK ((pattern IS NULL) != (detector IS NULL))
);
CREATE TABLE IF NOT EXISTS endpoint_rules (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    model           TEXT NOT NULL REFERENCES models(name),
    mode            TEXT NOT NULL CHECK (mode IN ('deny', 'allow_list', 'rate_limit')),
    clients         TEXT NOT NULL DEFAULT '[]',   -- deny/rate_limit: only these; allow_list: all but these refused
    routes          TEXT NOT NULL DEFAULT '[]',   -- chat | completions | embeddings; empty: every route
    per_minute      INTEGER,
    per_client      INTEGER NOT NULL DEFAULT 0,   -- rate_limit: a window per client instead of one shared
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
"""

# The schema above is version 2: models served from an upstreams file. Version 1 held built-in
# demo models (a `behaviour` per version) and cannot be carried over: without upstreams its
# versions serve nothing.
SCHEMA_VERSION = 2

# Tables whose rows a holder owns: the ledger (who applied each key) and the per-action rows.
HOLDER_TABLES = ("ledger", "blocks", "endpoint_rules", "guardrails")


def utc_now() -> str:
    return datetime.now(UTC).isoformat()


def version_sort_key(version: str) -> tuple[int, int, str]:
    """Numeric versions order numerically ("10" after "9"); anything else after, by name."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def highest_enabled_below(versions: list[sqlite3.Row], ceiling: str) -> str | None:
    below = [v["version"] for v in versions if v["enabled"] and version_sort_key(v["version"]) < version_sort_key(ceiling)]
    return max(below, key=version_sort_key) if below else None


def _enabled_or_below(versions: list[sqlite3.Row], chosen: str) -> str | None:
    if any(v["version"] == chosen and v["enabled"] for v in versions):
        return chosen
    return highest_enabled_below(versions, chosen)


def canary_weights(model: sqlite3.Row, versions: list[sqlite3.Row]) -> dict[str, int]:
    """The canaries that take traffic now: enabled versions other than the release, with weight."""
    return {v["version"]: v["weight"] for v in versions if v["version"] != model["release_version"] and v["enabled"] and v["weight"] > 0}


def resolve_served_version(model: sqlite3.Row, versions: list[sqlite3.Row], bucket: int | None = None) -> str | None:
    """The version a request is served by: the fallback version if active, else the pin, else a
    canary when the request's `bucket` (0-99, sticky per client) falls in its share, else the
    release — stepping down past disabled versions. `bucket` None: what the release path serves.

    A fallback to another model is the caller's to follow (`fallback_model`)."""
    if model["fallback_active"] and model["fallback_version"]:
        return _enabled_or_below(versions, model["fallback_version"])
    if model["pinned_version"]:
        return _enabled_or_below(versions, model["pinned_version"])
    if bucket is not None:
        threshold = 0
        for version, weight in sorted(canary_weights(model, versions).items(), key=lambda item: version_sort_key(item[0])):
            threshold += weight
            if bucket < threshold:
                return version
    return _enabled_or_below(versions, model["release_version"])


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
            self._start_over_if_built_in_models()
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(SCHEMA + holds.SCHEMA + samples.SCHEMA)
            from stanch.gateway.shadows import create_schema as create_shadow_schema  # it reads this store: imported late

            create_shadow_schema(self.conn)
            # The deployment log reads this store's tables, so it is imported here, not above.
            from stanch.gateway import deployments

            deployments.create_schema(self.conn)
            self._add_holder_columns()
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _start_over_if_built_in_models(self) -> None:
        columns = {row["name"] for row in self.conn.execute("PRAGMA table_info(versions)")}
        if "behaviour" in columns:
            log.warning("%s holds the built-in demo models of an older gateway: starting it afresh from the upstreams file", self.db_path)
            for table in ("holds", "ledger", "guardrails", "endpoint_rules", "blocks", "features", "jobs", "versions", "models"):
                self.conn.execute(f"DROP TABLE IF EXISTS {table}")

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

    # -- reads ---------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        return [r["name"] for r in self.query("SELECT name FROM models WHERE configured = 1 ORDER BY name")]

    def model_row(self, model: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM models WHERE name = ? AND configured = 1", (model,))
        return rows[0] if rows else None

    def versions(self, model: str) -> list[sqlite3.Row]:
        rows = self.query("SELECT * FROM versions WHERE model = ?", (model,))
        return sorted(rows, key=lambda r: version_sort_key(r["version"]))

    def version_row(self, model: str, version: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM versions WHERE model = ? AND version = ?", (model, version))
        return rows[0] if rows else None

    def served_version(self, model: str, bucket: int | None = None) -> str | None:
        row = self.model_row(model)
        return resolve_served_version(row, self.versions(model), bucket) if row else None

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

    def state(self, model: str) -> dict[str, Any] | None:
        """Everything about one model's control state, as plain JSON (API key references, never keys)."""
        row = self.model_row(model)
        if row is None:
            return None
        versions = self.versions(model)
        features = self.features(model)
        return {
            "model": model,
            "versions": [version_entry(v) for v in versions],
            "release_version": row["release_version"],
            "canaries": canary_weights(row, versions) if not (row["pinned_version"] or row["fallback_active"]) else {},
            "pinned_version": row["pinned_version"],
            "fallback_version": row["fallback_version"],
            "fallback_model": row["fallback_model"],
            "fallback_active": bool(row["fallback_active"]),
            "served_version": resolve_served_version(row, versions),
            "features": {f["name"]: bool(f["enabled"]) for f in features},
            "feature_incidents": {f["name"]: f["incident_id"] for f in features if not f["enabled"]},
            # Who holds each feature, pin, version or fallback protection, oldest first; the
            # fields above are what their union makes.
            "holds": self.holds(model),
            "blocked_prompts": [block_entry(b) for b in self.blocks(model, "prompt")],
            "blocked_outputs": [block_entry(b) for b in self.blocks(model, "output")],
            "endpoint_rules": [endpoint_rule_entry(r) for r in self.endpoint_rules(model)],
            "system_prompt": row["system_prompt"],
            "guardrails": [pattern_entry(g) for g in self.guardrails(model)],
            "trainer": json.loads(row["trainer"]) if row["trainer"] else None,
        }


def version_entry(row: sqlite3.Row) -> dict[str, Any]:
    entry = {k: row[k] for k in ("version", "base_url", "upstream_model", "weight", "source", "created_at")}
    entry["enabled"] = bool(row["enabled"])
    entry["api_key"] = row["api_key"]  # the reference ("$ENV"), never the key
    return entry


def pattern_entry(row: sqlite3.Row) -> dict[str, Any]:
    entry = {k: row[k] for k in ("id", "pattern", "incident_id", "idempotency_key")}
    entry["holder"] = row["holder"] or row["incident_id"]
    return entry


def block_entry(row: sqlite3.Row) -> dict[str, Any]:
    entry = pattern_entry(row)
    entry["detector"] = row["detector"]
    return entry


def endpoint_rule_entry(row: sqlite3.Row) -> dict[str, Any]:
    entry = {k: row[k] for k in ("id", "mode", "per_minute", "incident_id", "idempotency_key")}
    entry["holder"] = row["holder"] or row["incident_id"]
    entry["clients"] = json.loads(row["clients"])
    entry["routes"] = json.loads(row["routes"])
    entry["per_client"] = bool(row["per_client"])
    return entry


def ledger_entry(row: sqlite3.Row) -> dict[str, Any]:
    entry = dict(row)
    for column in ("params", "result", "inverse", "undo_result"):
        entry[column] = json.loads(row[column]) if row[column] is not None else None
    return entry
