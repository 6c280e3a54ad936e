"""Protections held per incident: who holds what, and the state their union makes.

Two incidents may disable the same feature, pin the same model, disable the same version or
switch the same model to its fallback. Each such action takes a *hold* on a subject, named by
its holder (the incident occurrence that asked). The model's state is what the holds make:

    feature:<name>   disabled while anyone holds it (the refusal names the newest holder)
    version:<name>   disabled while anyone holds it
    fallback         active while anyone holds it
    pin              the newest holder's pin while anyone holds it

Every hold records `base`: the subject's state before the first of the holds that overlap it
(the first hold reads it; each later one inherits it while an earlier one is still held).
Undo releases the hold and recomputes the subject from the holds left; when none is left the
subject goes back to `base`. Undo never writes back the value one action read before its
change: that value may be another incident's protection (restoring A would lift B's, and B's
restore would then put A's back for good).

Blocked prompts and outputs, endpoint rules and guardrails need no holds: each action inserts
rows of its own, their union is what is enforced, and undo deletes only its own rows.

Nothing here imports the rest of the gateway.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

_INSERT = "INSERT INTO holds (model, subject, holder, incident_id, idempotency_key, value, base, taken_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"

SCHEMA = """
CREATE TABLE IF NOT EXISTS holds (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- order of taking: the newest pin wins
    model           TEXT NOT NULL REFERENCES models(name),
    subject         TEXT NOT NULL,   -- feature:<name> | version:<name> | fallback | pin
    holder          TEXT NOT NULL,   -- the incident occurrence that holds it
    incident_id     TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    value           TEXT NOT NULL,   -- JSON: what this holder wants (a pin's version)
    base            TEXT NOT NULL,   -- JSON: the subject's state before the first overlapping hold
    taken_at        TEXT NOT NULL,
    released_at     TEXT
);
CREATE INDEX IF NOT EXISTS holds_by_subject ON holds (model, subject, released_at);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat()


def active(db: sqlite3.Connection, model: str, subject: str) -> list[sqlite3.Row]:
    """The holds on a subject not yet released, oldest first."""
    return db.execute(
        "SELECT * FROM holds WHERE model = ? AND subject = ? AND released_at IS NULL ORDER BY id", (model, subject)
    ).fetchall()


def by_key(db: sqlite3.Connection, idempotency_key: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = db.execute("SELECT * FROM holds WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
    return row


def current(db: sqlite3.Connection, model: str, subject: str) -> dict[str, Any]:
    """The subject's state as the model row, feature or version holds it now."""
    kind, _, name = subject.partition(":")
    if kind == "feature":
        row = db.execute("SELECT enabled, incident_id FROM features WHERE model = ? AND name = ?", (model, name)).fetchone()
        return {"enabled": bool(row["enabled"]), "incident_id": row["incident_id"]}
    if kind == "version":
        row = db.execute("SELECT enabled FROM versions WHERE model = ? AND version = ?", (model, name)).fetchone()
        return {"enabled": bool(row["enabled"])}
    row = db.execute("SELECT pinned_version, fallback_active FROM models WHERE name = ?", (model,)).fetchone()
    if kind == "pin":
        return {"version": row["pinned_version"]}
    if kind == "fallback":
        return {"active": bool(row["fallback_active"])}
    raise ValueError(f"unknown hold subject {subject!r}")


def _write(db: sqlite3.Connection, model: str, subject: str, state: dict[str, Any]) -> None:
    kind, _, name = subject.partition(":")
    if kind == "feature":
        db.execute(
            "UPDATE features SET enabled = ?, incident_id = ? WHERE model = ? AND name = ?",
            (int(state["enabled"]), state["incident_id"], model, name),
        )
    elif kind == "version":
        db.execute("UPDATE versions SET enabled = ? WHERE model = ? AND version = ?", (int(state["enabled"]), model, name))
    elif kind == "pin":
        db.execute("UPDATE models SET pinned_version = ? WHERE name = ?", (state["version"], model))
    elif kind == "fallback":
        db.execute("UPDATE models SET fallback_active = ? WHERE name = ?", (int(state["active"]), model))
    else:
        raise ValueError(f"unknown hold subject {subject!r}")


def _held_state(subject: str, newest: sqlite3.Row) -> dict[str, Any]:
    """The subject's state while at least one hold is on it; `newest` is the latest taken."""
    kind = subject.partition(":")[0]
    if kind == "feature":
        return {"enabled": False, "incident_id": newest["incident_id"]}
    if kind == "version":
        return {"enabled": False}
    if kind == "pin":
        return {"version": json.loads(newest["value"])["version"]}
    return {"active": True}


def settle(db: sqlite3.Connection, model: str, subject: str, base: dict[str, Any]) -> dict[str, Any]:
    """Write the subject's state from its holds (the union), or `base` when none is left."""
    holds = active(db, model, subject)
    state = _held_state(subject, holds[-1]) if holds else base
    _write(db, model, subject, state)
    return state


def take(
    db: sqlite3.Connection, *, model: str, subject: str, holder: str, incident_id: str, idempotency_key: str, value: dict[str, Any]
) -> dict[str, Any]:
    """Add a hold and settle the subject; what the result reports about it."""
    holds = active(db, model, subject)
    # While an earlier hold is in force the state now is its protection, not what to go back to.
    base = json.loads(holds[0]["base"]) if holds else current(db, model, subject)
    db.execute(
        _INSERT,
        (model, subject, holder, incident_id, idempotency_key, json.dumps(value), json.dumps(base), _now()),
    )
    settle(db, model, subject, base)
    return {"holder": holder, "held_by": [h["holder"] for h in holds] + [holder]}


def release(db: sqlite3.Connection, hold: sqlite3.Row) -> dict[str, Any]:
    """Release one hold and settle its subject: the union of the holds left, else the base."""
    model, subject = hold["model"], hold["subject"]
    if hold["released_at"] is not None:
        # Released without an undo (the demo reset dropped every hold): the state is no longer
        # this hold's to settle, so leave it as it is.
        return {"released": subject, "holder": hold["holder"], "note": "no longer held"}
    db.execute("UPDATE holds SET released_at = ? WHERE id = ?", (_now(), hold["id"]))
    state = settle(db, model, subject, json.loads(hold["base"]))
    left = [h["holder"] for h in active(db, model, subject)]
    return {"released": subject, "holder": hold["holder"], "still_held_by": left, "state": state}


def release_all(db: sqlite3.Connection, model: str) -> None:
    """Drop every hold on the model (the demo reset puts the state back itself)."""
    db.execute("UPDATE holds SET released_at = ? WHERE model = ? AND released_at IS NULL", (_now(), model))


def held(db: sqlite3.Connection, model: str) -> list[dict[str, Any]]:
    """The model's holds in force, oldest first, as the state endpoint shows them."""
    rows = db.execute("SELECT * FROM holds WHERE model = ? AND released_at IS NULL ORDER BY id", (model,)).fetchall()
    return [
        {
            "subject": r["subject"],
            "holder": r["holder"],
            "incident_id": r["incident_id"],
            "idempotency_key": r["idempotency_key"],
            "value": json.loads(r["value"]),
            "base": json.loads(r["base"]),
            "taken_at": r["taken_at"],
        }
        for r in rows
    ]
