"""Drill routes: a copy of a model that one drill (`stanch drill`) acts on, so nothing it does
reaches the model users are served.

    POST   /admin/drills                {model, idempotency_key, harmful_version?}
        copies `model` to `drill-<8 hex>.<model>`: the same versions and upstreams, the same
        release and canary weights, and no protection (no block, rule, guardrail, pin, hold or
        hotfix). With `harmful_version`, the drill route serves that version to everyone: the
        synthetic harm the drill responds to. The same key answers with the same route.
    GET    /admin/drills                every drill route, ended ones included
    GET    /admin/drills/{route}        one
    DELETE /admin/drills/{route}        ends it: its protections go, it serves nothing more

A drill route answers at `/v1/chat/completions` only with the gateway's admin token in
`x-stanch-admin-token` (the drill CLI and Stanch's own probes hold it: the route serves harm on
purpose), and `/v1/models` leaves it out: it is nobody's production model. An incident opened on it is a drill (Stanch's intake reads the
name: `drill-<8 hex>.`, the contract written in stanch.models.incident as well). Drill routes
are not in the upstreams file: they outlive a gateway restart until ended (`restore_open_drills`).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from stanch.gateway import holds
from stanch.gateway.store import GatewayStore, utc_now

DRILL_PREFIX = "drill-"
DRILL_ROUTE = re.compile(r"^drill-[0-9a-f]{8}\.")
# The tables holding an incident's protections on a model, emptied when its drill ends.
PROTECTION_TABLES = ("blocks", "endpoint_rules", "guardrails")

SCHEMA = """
CREATE TABLE IF NOT EXISTS drills (
    route           TEXT PRIMARY KEY,   -- drill-<id>.<model>: the model name the drill acts on
    drill_id        TEXT NOT NULL,
    model           TEXT NOT NULL,      -- the production model it copies
    harmful_version TEXT,               -- the version forced onto the route, if any
    idempotency_key TEXT NOT NULL UNIQUE,
    started_at      TEXT NOT NULL,
    ended_at        TEXT
);
"""


def is_drill_route(model: str) -> bool:
    return bool(DRILL_ROUTE.match(model))


def drill_route_for(model: str, idempotency_key: str) -> tuple[str, str]:
    """(drill id, route): the id is the key's hash, so a retried request names the same route."""
    drill_id = hashlib.sha256(idempotency_key.encode()).hexdigest()[:8]
    return drill_id, f"{DRILL_PREFIX}{drill_id}.{model}"


class DrillRequest(BaseModel):
    model: str = Field(min_length=1, description="the production model to copy, e.g. support-bot")
    idempotency_key: str = Field(min_length=1, max_length=200, description="a retry with the same key answers with the same drill route")
    harmful_version: str | None = Field(None, description="a version of the model the drill route serves to everyone: the synthetic harm")


class DrillRoute(BaseModel):
    route: str = Field(description="the drill route's model name: send requests and open the drill's incident with it")
    drill_id: str
    model: str = Field(description="the production model it copies, which the drill never touches")
    harmful_version: str | None = None
    served_version: str | None = Field(None, description="what the drill route serves its first clients now (None once ended)")
    started_at: str
    ended_at: str | None = None
    replayed: bool = Field(False, description="this idempotency key had made the drill route already")


def restore_open_drills(store: GatewayStore) -> None:
    """Drill routes are not in the upstreams file, so taking the file over marks them unserved:
    the ones not yet ended are served again."""
    with store.transaction() as db:
        db.execute(SCHEMA)
        db.execute("UPDATE models SET configured = 1 WHERE name IN (SELECT route FROM drills WHERE ended_at IS NULL)")


def copy_model(db: sqlite3.Connection, model: str, route: str) -> None:
    """The model's versions, upstreams, release, canary weights and fallback, with no protection
    and no hotfix: the drill starts from the deploy, not from what incidents changed. A version
    production disabled stays disabled (only the drill's harmful version is served again)."""
    db.execute(
        "INSERT INTO models (name, release_version, fallback_version, fallback_model, trainer, configured)"
        " SELECT ?, release_version, fallback_version, fallback_model, trainer, 1 FROM models WHERE name = ?",
        (route, model),
    )
    db.execute(
        "INSERT INTO versions (model, version, base_url, upstream_model, api_key, timeout_seconds, weight, enabled, source, created_at)"
        " SELECT ?, version, base_url, upstream_model, api_key, timeout_seconds, weight, enabled, 'drill copy of ' || model, ?"
        " FROM versions WHERE model = ?",
        (route, utc_now(), model),
    )
    db.execute("INSERT INTO features (model, name, enabled) SELECT ?, name, 1 FROM features WHERE model = ?", (route, model))


def force_version(db: sqlite3.Connection, route: str, version: str) -> None:
    """Every request on the route is served `version`: the release, or a canary at 100%. Disabled
    in production or not, the drill route serves it: it is the harm the drill responds to."""
    release = db.execute("SELECT release_version FROM models WHERE name = ?", (route,)).fetchone()[0]
    db.execute("UPDATE versions SET weight = 0 WHERE model = ?", (route,))
    db.execute("UPDATE versions SET enabled = 1 WHERE model = ? AND version = ?", (route, version))
    if version != release:
        db.execute("UPDATE versions SET weight = 100 WHERE model = ? AND version = ?", (route, version))


def end_drill(db: sqlite3.Connection, route: str) -> None:
    """The route's protections go (they were the drill's own) and it serves nothing more. Its
    versions and ledger rows stay: they are the drill's history."""
    for table in PROTECTION_TABLES:
        db.execute(f"DELETE FROM {table} WHERE model = ?", (route,))
    holds.release_all(db, route)
    db.execute(
        "UPDATE models SET configured = 0, pinned_version = NULL, fallback_active = 0, system_prompt = NULL WHERE name = ?", (route,)
    )
    db.execute("UPDATE drills SET ended_at = ? WHERE route = ? AND ended_at IS NULL", (utc_now(), route))


def drill_router(store: GatewayStore) -> APIRouter:
    """The `/admin/drills` routes over `store` (the app's admin token guards every `/admin/*`)."""
    restore_open_drills(store)
    router = APIRouter(prefix="/admin/drills", tags=["drills"])

    def described(row: sqlite3.Row, replayed: bool = False) -> DrillRoute:
        # Bucket 0: the clients a canary reaches first; with a harmful version forced, everyone.
        served = store.served_version(row["route"], 0) if row["ended_at"] is None else None
        return DrillRoute(**{key: row[key] for key in row.keys() if key != "idempotency_key"}, served_version=served, replayed=replayed)

    def drill_row(route: str) -> sqlite3.Row:
        rows = store.query("SELECT * FROM drills WHERE route = ?", (route,))
        if not rows:
            raise HTTPException(404, f"no drill route {route!r}; GET /admin/drills lists them")
        return rows[0]

    @router.post("", response_model=DrillRoute, status_code=201)
    def start_drill(request: DrillRequest) -> Any:
        drill_id, route = drill_route_for(request.model, request.idempotency_key)
        with store.transaction() as db:
            earlier = db.execute("SELECT * FROM drills WHERE idempotency_key = ?", (request.idempotency_key,)).fetchone()
            if earlier is not None and (earlier["model"], earlier["harmful_version"]) != (request.model, request.harmful_version):
                raise HTTPException(
                    409, f"idempotency_key {request.idempotency_key!r} made drill route {earlier['route']} of another request"
                )
            if earlier is None:
                refuse_bad_request(db, request)
                copy_model(db, request.model, route)
                if request.harmful_version is not None:
                    force_version(db, route, request.harmful_version)
                db.execute(
                    "INSERT INTO drills (route, drill_id, model, harmful_version, idempotency_key, started_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (route, drill_id, request.model, request.harmful_version, request.idempotency_key, utc_now()),
                )
        return described(drill_row(route), replayed=earlier is not None)

    def refuse_bad_request(db: sqlite3.Connection, request: DrillRequest) -> None:
        if is_drill_route(request.model):
            raise HTTPException(422, f"model {request.model!r} is a drill route already: drill the production model it copies")
        if db.execute("SELECT 1 FROM models WHERE name = ? AND configured = 1", (request.model,)).fetchone() is None:
            raise HTTPException(422, f"unknown model {request.model!r}; known models: {', '.join(production_models(store))}")
        versions = [row[0] for row in db.execute("SELECT version FROM versions WHERE model = ?", (request.model,))]
        if request.harmful_version is not None and request.harmful_version not in versions:
            raise HTTPException(
                422, f"model {request.model!r} has no version {request.harmful_version!r} (harmful_version); known: {', '.join(versions)}"
            )

    @router.get("", response_model=list[DrillRoute])
    def list_drills() -> list[DrillRoute]:
        return [described(row) for row in store.query("SELECT * FROM drills ORDER BY started_at")]

    @router.get("/{route:path}", response_model=DrillRoute)
    def show_drill(route: str) -> DrillRoute:
        return described(drill_row(route))

    @router.delete("/{route:path}", response_model=DrillRoute)
    def stop_drill(route: str) -> DrillRoute:
        drill_row(route)
        with store.transaction() as db:
            end_drill(db, route)
        return described(drill_row(route))

    return router


def production_models(store: GatewayStore) -> list[str]:
    """The models users are served, drill routes left out (`/v1/models`)."""
    return [name for name in store.model_names() if not is_drill_route(name)]
