"""The gateway's sample store: who each model version served, and (when switched on) what.

Counts always: requests per model version per hour, and the users and tenants each version
served (a user is the request's `x-client-id`, else the OpenAI body's `user`; a tenant is its
`x-tenant-id`), at most PARTIES_PER_VERSION of each, both forgotten COUNTS_RETENTION (90 days)
after the hour counted or the party last served. That is what tells an incident how many were
exposed, and never holds a word anyone typed.

Content only when the team switches it on (STANCH_GATEWAY_SAMPLES=content): per version, the
newest STANCH_GATEWAY_SAMPLE_LIMIT requests and the answers served to them, each sealed with
AES-GCM under STANCH_GATEWAY_SAMPLE_KEY (base64 of 32 bytes; or a file named by
STANCH_GATEWAY_SAMPLE_KEY_FILE), and none older than STANCH_GATEWAY_SAMPLE_RETENTION (purged on
every write and every read). On confirmation Stanch reads them back and re-scores the answers
with the detector that confirmed the harm: who was affected, not only who was served.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from starlette.datastructures import Headers

if TYPE_CHECKING:
    from stanch.gateway.proxy import Outcome, Report
    from stanch.gateway.store import GatewayStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS sample_counts (
    model    TEXT NOT NULL,
    version  TEXT NOT NULL,
    hour     TEXT NOT NULL,             -- UTC, 2026-12-06T11:00
    requests INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (model, version, hour)
);
CREATE TABLE IF NOT EXISTS sample_parties (
    model      TEXT NOT NULL,
    version    TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('user', 'tenant')),
    name       TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen  TEXT NOT NULL,
    requests   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (model, version, kind, name)
);
CREATE TABLE IF NOT EXISTS samples (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    model      TEXT NOT NULL,
    version    TEXT NOT NULL,
    user       TEXT,
    tenant     TEXT,
    at         TEXT NOT NULL,
    sealed     BLOB NOT NULL            -- nonce (12 bytes) + AES-GCM of {"prompt", "answer"}
);
CREATE INDEX IF NOT EXISTS samples_by_version ON samples (model, version, id);
CREATE INDEX IF NOT EXISTS samples_by_time ON samples (at);
CREATE INDEX IF NOT EXISTS sample_parties_by_last_seen ON sample_parties (last_seen);
"""

SAMPLES_VARIABLE = "STANCH_GATEWAY_SAMPLES"
KEY_VARIABLE = "STANCH_GATEWAY_SAMPLE_KEY"
KEY_FILE_VARIABLE = "STANCH_GATEWAY_SAMPLE_KEY_FILE"
LIMIT_VARIABLE = "STANCH_GATEWAY_SAMPLE_LIMIT"
RETENTION_VARIABLE = "STANCH_GATEWAY_SAMPLE_RETENTION"

DEFAULT_LIMIT = 10_000
DEFAULT_RETENTION = timedelta(days=7)
# Users (and tenants) named per version at most; more are still counted as requests.
PARTIES_PER_VERSION = 100_000
# Hourly counts outlive content: how many were exposed matters longer than what they saw.
COUNTS_RETENTION = timedelta(days=90)
# What one sample keeps of a prompt or an answer at most (characters).
TEXT_KEPT_AT_MOST = 16_000

_DURATION = re.compile(r"^\s*(\d+)\s*(m|h|d)\s*$")
_UNIT = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}


class SampleSettingsError(ValueError):
    """A sampling setting the gateway cannot start with; the message names the variable."""


@dataclass(frozen=True)
class SampleSettings:
    content: bool = False
    key: bytes | None = None
    limit: int = DEFAULT_LIMIT
    retention: timedelta = DEFAULT_RETENTION

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SampleSettings:
        env = os.environ if env is None else env
        mode = env.get(SAMPLES_VARIABLE, "counts").strip().lower() or "counts"
        if mode not in ("counts", "content"):
            raise SampleSettingsError(f"{SAMPLES_VARIABLE}={mode!r}: say `counts` (the default: no content kept) or `content`")
        limit_text = env.get(LIMIT_VARIABLE, str(DEFAULT_LIMIT)).strip()
        if not limit_text.isdigit() or int(limit_text) < 1:
            raise SampleSettingsError(f"{LIMIT_VARIABLE}={limit_text!r}: give how many samples to keep per version, a whole number ≥ 1")
        retention_text = env.get(RETENTION_VARIABLE, "7d")
        match = _DURATION.match(retention_text)
        if not match or int(match[1]) < 1:
            raise SampleSettingsError(f"{RETENTION_VARIABLE}={retention_text!r}: give how long samples are kept, like 90m, 48h or 7d")
        retention = int(match[1]) * _UNIT[match[2]]
        key = read_key(env) if mode == "content" else None
        return cls(content=mode == "content", key=key, limit=int(limit_text), retention=retention)


def read_key(env: Mapping[str, str]) -> bytes:
    """The sealing key: STANCH_GATEWAY_SAMPLE_KEY, else the file STANCH_GATEWAY_SAMPLE_KEY_FILE names."""
    where = KEY_VARIABLE
    text = env.get(KEY_VARIABLE, "").strip()
    if not text and (path := env.get(KEY_FILE_VARIABLE, "").strip()):
        where = f"the file {path} ({KEY_FILE_VARIABLE})"
        try:
            text = Path(path).read_text().strip()
        except OSError as exc:
            raise SampleSettingsError(f"{where} cannot be read: {exc.strerror}") from exc
    if not text:
        raise SampleSettingsError(
            f"{SAMPLES_VARIABLE}=content keeps prompts and answers, sealed: set {KEY_VARIABLE} to a key "
            f"(base64 of 32 random bytes, e.g. `openssl rand -base64 32`) or {KEY_FILE_VARIABLE} to a file holding one"
        )
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SampleSettingsError(f"{where} is not base64: give base64 of 32 random bytes") from exc
    if len(key) != 32:
        raise SampleSettingsError(f"{where} decodes to {len(key)} bytes; an AES-256 key is 32")
    return key


def ensure_key_file(path: Path) -> Path:
    """A key file for the one-machine demo (`stanch up`): made once, readable by its owner only."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    return path


@dataclass(frozen=True)
class Party:
    """Who a request came from, as the sample store names them."""

    user: str | None
    tenant: str | None

    @classmethod
    def of(cls, headers: Headers, body: dict[str, Any]) -> Party:
        user = headers.get("x-client-id") or (body.get("user") if isinstance(body.get("user"), str) else None)
        return cls(user=user or None, tenant=headers.get("x-tenant-id") or None)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def _hour(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:00")


class SampleStore:
    """Counts and sealed samples in the gateway's own SQLite file (tables in SCHEMA)."""

    def __init__(self, store: GatewayStore, settings: SampleSettings) -> None:
        self.store = store
        self.settings = settings
        self.aead = AESGCM(settings.key) if settings.content and settings.key else None

    @classmethod
    def from_env(cls, store: GatewayStore) -> SampleStore:
        return cls(store, SampleSettings.from_env())

    # -- writing: once per answer served -------------------------------------------------

    def watching(self, report: Report, model: str, version: str, headers: Headers, body: dict[str, Any]) -> Report:
        """`report`, and the answer kept once served: counted always, sealed when content is on."""
        party = Party.of(headers, body)
        request_id = headers.get("x-request-id") or uuid.uuid4().hex

        def and_keep(outcome: Outcome) -> None:
            report(outcome)
            if outcome.outcome == "answered":
                self.keep(model, version, party, request_id, outcome.prompt, outcome.served_text)

        return and_keep

    def keep(self, model: str, version: str, party: Party, request_id: str, prompt: str, answer: str, at: datetime | None = None) -> None:
        at = at or datetime.now(UTC)
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO sample_counts (model, version, hour, requests) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (model, version, hour) DO UPDATE SET requests = requests + 1",
                (model, version, _hour(at)),
            )
            for kind, name in (("user", party.user), ("tenant", party.tenant)):
                if name:
                    self._count_party(db, model, version, kind, name, at)
            if self.aead is not None:
                sealed = self._seal(
                    model, version, request_id, {"prompt": prompt[:TEXT_KEPT_AT_MOST], "answer": answer[:TEXT_KEPT_AT_MOST]}
                )
                db.execute(
                    "INSERT INTO samples (request_id, model, version, user, tenant, at, sealed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (request_id, model, version, party.user, party.tenant, _iso(at), sealed),
                )
                self._keep_newest(db, model, version)
            self._purge(db, at)

    def _count_party(self, db: sqlite3.Connection, model: str, version: str, kind: str, name: str, at: datetime) -> None:
        updated = db.execute(
            "UPDATE sample_parties SET last_seen = ?, requests = requests + 1 WHERE model = ? AND version = ? AND kind = ? AND name = ?",
            (_iso(at), model, version, kind, name),
        ).rowcount
        if updated:
            return
        known = db.execute(
            "SELECT COUNT(*) FROM sample_parties WHERE model = ? AND version = ? AND kind = ?", (model, version, kind)
        ).fetchone()[0]
        if known < PARTIES_PER_VERSION:
            db.execute(
                "INSERT INTO sample_parties (model, version, kind, name, first_seen, last_seen, requests) VALUES (?, ?, ?, ?, ?, ?, 1)",
                (model, version, kind, name, _iso(at), _iso(at)),
            )

    def _keep_newest(self, db: sqlite3.Connection, model: str, version: str) -> None:
        oldest_kept = db.execute(
            "SELECT id FROM samples WHERE model = ? AND version = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
            (model, version, self.settings.limit - 1),
        ).fetchone()
        if oldest_kept is not None:
            db.execute("DELETE FROM samples WHERE model = ? AND version = ? AND id < ?", (model, version, oldest_kept[0]))

    def _purge(self, db: sqlite3.Connection, now: datetime) -> None:
        db.execute("DELETE FROM samples WHERE at < ?", (_iso(now - self.settings.retention),))
        db.execute("DELETE FROM sample_counts WHERE hour < ?", (_hour(now - COUNTS_RETENTION),))
        # A user or tenant id is personal data: kept no longer than the counts it explains.
        db.execute("DELETE FROM sample_parties WHERE last_seen < ?", (_iso(now - COUNTS_RETENTION),))

    def _seal(self, model: str, version: str, request_id: str, content: dict[str, str]) -> bytes:
        assert self.aead is not None
        nonce = secrets.token_bytes(12)
        # Bound to its row: a sealed sample moved to another model, version or request does not open.
        associated = f"{model}|{version}|{request_id}".encode()
        return nonce + self.aead.encrypt(nonce, json.dumps(content).encode(), associated)

    def _open(self, row: sqlite3.Row) -> dict[str, str] | None:
        if self.aead is None:
            return None
        associated = f"{row['model']}|{row['version']}|{row['request_id']}".encode()
        try:
            content: dict[str, str] = json.loads(self.aead.decrypt(row["sealed"][:12], row["sealed"][12:], associated))
        except InvalidTag:
            return None  # sealed under another key (the key was changed): unreadable, said by the caller
        return content

    # -- reading: the exposure of a model in a window ------------------------------------

    def exposure(self, model: str, since: datetime, until: datetime) -> dict[str, Any]:
        """Per version: requests served, users and tenants served, content samples kept."""
        with self.store.transaction() as db:
            self._purge(db, datetime.now(UTC))
        # Hour buckets overlapping the window count whole: a count is kept per hour, not per request.
        counts = self.store.query(
            "SELECT version, SUM(requests) AS requests FROM sample_counts WHERE model = ? AND hour >= ? AND hour <= ? GROUP BY version",
            (model, _hour(since), _hour(until)),
        )
        versions: dict[str, dict[str, Any]] = {
            row["version"]: {"version": row["version"], "requests": row["requests"], "users": [], "tenants": [], "samples": 0}
            for row in counts
        }
        parties = self.store.query(
            "SELECT version, kind, name FROM sample_parties WHERE model = ? AND last_seen >= ? AND first_seen <= ? ORDER BY name",
            (model, _iso(since), _iso(until)),
        )
        for row in parties:
            entry = versions.setdefault(
                row["version"], {"version": row["version"], "requests": 0, "users": [], "tenants": [], "samples": 0}
            )
            entry["users" if row["kind"] == "user" else "tenants"].append(row["name"])
        kept = self.store.query(
            "SELECT version, COUNT(*) AS n FROM samples WHERE model = ? AND at >= ? AND at <= ? GROUP BY version",
            (model, _iso(since), _iso(until)),
        )
        for row in kept:
            versions.setdefault(row["version"], {"version": row["version"], "requests": 0, "users": [], "tenants": [], "samples": 0})[
                "samples"
            ] = row["n"]
        return {
            "model": model,
            "since": _iso(since),
            "until": _iso(until),
            "content_sampled": self.aead is not None,
            "retention_seconds": int(self.settings.retention.total_seconds()),
            "versions": [versions[v] for v in sorted(versions)],
        }

    def samples(self, model: str, since: datetime, until: datetime, *, after: int = 0, limit: int = 200) -> dict[str, Any]:
        """Decrypted samples in the window, oldest first, a page at a time (`after` the last id)."""
        with self.store.transaction() as db:
            self._purge(db, datetime.now(UTC))
        rows = self.store.query(
            "SELECT * FROM samples WHERE model = ? AND at >= ? AND at <= ? AND id > ? ORDER BY id LIMIT ?",
            (model, _iso(since), _iso(until), after, limit),
        )
        page: list[dict[str, Any]] = []
        unreadable = 0
        for row in rows:
            content = self._open(row)
            if content is None:
                unreadable += 1
                continue
            page.append({k: row[k] for k in ("id", "request_id", "version", "user", "tenant", "at")} | content)
        return {
            "content_sampled": self.aead is not None,
            "samples": page,
            "unreadable": unreadable,
            "next_after": rows[-1]["id"] if len(rows) == limit else None,
        }
