"""Taking the upstreams file's deploy into the gateway's database, and going back to it.

Addresses (base URL, upstream model name, key reference, timeout) always follow the file: they
are configuration. The deploy (release, canary weights, fallback, features) is state incidents
change; it is taken from the file when a model first appears and again whenever its entry in
the file changes (a platform team's new deploy), never on a mere restart.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3

from stanch.gateway import deployments, holds
from stanch.gateway.store import GatewayStore, utc_now
from stanch.gateway.upstreams import BUILTIN_FEATURES, ModelEntry, UpstreamsFile


def entry_digest(entry: ModelEntry) -> str:
    """What makes a deploy: the release, the canary weights and the fallback. Editing an address,
    a timeout or a key reference is configuration, not a new deploy: it lifts no incident's fix."""
    deploy = {
        "release": entry.release,
        "weights": {version: upstream.weight for version, upstream in entry.versions.items()},
        "fallback": entry.fallback.model_dump(mode="json") if entry.fallback else None,
    }
    return hashlib.sha256(json.dumps(deploy, sort_keys=True).encode()).hexdigest()


def take_over(store: GatewayStore, upstreams: UpstreamsFile) -> list[str]:
    """Bring the database in line with the file; the models whose deploy was taken over."""
    deployed: list[str] = []
    with store.transaction() as db:
        db.execute("UPDATE models SET configured = 0")
        for name, entry in upstreams.models.items():
            if _take_over_model(db, name, entry):
                deployed.append(name)
    return deployed


def _take_over_model(db: sqlite3.Connection, name: str, entry: ModelEntry) -> bool:
    digest = entry_digest(entry)
    row = db.execute("SELECT file_digest FROM models WHERE name = ?", (name,)).fetchone()
    fallback = entry.fallback
    trainer = json.dumps(entry.trainer.model_dump()) if entry.trainer else None
    if row is None:
        db.execute("INSERT INTO models (name, release_version) VALUES (?, ?)", (name, entry.release))
    db.execute("UPDATE models SET configured = 1, trainer = ? WHERE name = ?", (trainer, name))
    now = utc_now()
    for version, upstream in entry.versions.items():
        db.execute(
            "INSERT INTO versions (model, version, base_url, upstream_model, api_key, timeout_seconds, weight, source, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 'upstreams file', ?)"
            " ON CONFLICT (model, version) DO UPDATE SET base_url = excluded.base_url, upstream_model = excluded.upstream_model,"
            " api_key = excluded.api_key, timeout_seconds = excluded.timeout_seconds",
            (name, version, upstream.base_url, upstream.model, upstream.api_key, upstream.timeout_seconds, upstream.weight, now),
        )
    for feature in (*BUILTIN_FEATURES, *entry.features):
        db.execute("INSERT OR IGNORE INTO features (model, name, enabled) VALUES (?, ?, 1)", (name, feature))
    if row is not None and row["file_digest"] == digest:
        return False
    # A new deploy in the file: its release, weights and fallback; protections stay held.
    db.execute(
        "UPDATE models SET release_version = ?, fallback_version = ?, fallback_model = ?, file_digest = ? WHERE name = ?",
        (entry.release, fallback.version if fallback else None, fallback.model if fallback else None, digest, name),
    )
    for version, upstream in entry.versions.items():
        db.execute("UPDATE versions SET weight = ? WHERE model = ? AND version = ?", (upstream.weight, name, version))
    deployments.append(db, name, source="upstreams file")
    return True


def reset_to_file(store: GatewayStore, upstreams: UpstreamsFile) -> None:
    """Every model back to the file's deploy with no protection and no hotfix in place: for
    `stanch demo` and drills. Versions and the ledger stay: they are history, not state."""
    with store.transaction() as db:
        for name, entry in upstreams.models.items():
            db.execute(
                "UPDATE models SET release_version = ?, pinned_version = NULL, fallback_active = 0, system_prompt = NULL WHERE name = ?",
                (entry.release, name),
            )
            db.execute("UPDATE versions SET enabled = 1, weight = 0 WHERE model = ?", (name,))
            for version, upstream in entry.versions.items():
                db.execute("UPDATE versions SET weight = ? WHERE model = ? AND version = ?", (upstream.weight, name, version))
            db.execute("UPDATE features SET enabled = 1, incident_id = NULL WHERE model = ?", (name,))
            holds.release_all(db, name)
            for table in ("blocks", "endpoint_rules", "guardrails"):
                db.execute(f"DELETE FROM {table} WHERE model = ?", (name,))
            # What is served changed back to the file's deploy, platform prompt and guardrails gone: a change.
            deployments.append(
                db, name, source="upstreams file", system_prompt="", guardrails=[], description="reset to the upstreams file"
            )
