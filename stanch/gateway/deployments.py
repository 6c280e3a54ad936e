"""The gateway's deployment log: every change the platform team made to what a model serves.

A change is a deploy of the upstreams file taken over at start-up, or a `POST /admin/deploy`
(a release version, and optionally a system prompt or guardrail patterns shipped with it).
Each is appended, numbered per model in the order it happened, as a snapshot of what the model
served from then on: release, canary weights, system prompt, guardrails. Incident actions
(containment, rollback, hotfixes: the ledger) are not changes and are not logged here.

Bisection reads this log to replay a past change (`x-stanch-deployment: N`, admin only), and
the gateway serves the latest change's system prompt and guardrails beneath any hotfix.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from stanch.gateway.store import GatewayStore, canary_weights, utc_now

SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    model           TEXT NOT NULL,
    sequence        INTEGER NOT NULL,     -- 1, 2, 3 ... per model, in deployment order
    deployed_at     TEXT NOT NULL,
    release_version TEXT NOT NULL,
    canary_weights  TEXT NOT NULL DEFAULT '{}',   -- JSON {version: percent}
    system_prompt   TEXT,                 -- the platform's own, sent upstream beneath any hotfix
    guardrails      TEXT NOT NULL DEFAULT '[]',   -- JSON [pattern]: redacted from answers
    source          TEXT NOT NULL,        -- "upstreams file" | "admin deploy"
    change_id       TEXT,                 -- the caller's name for the change (a PR, a ticket)
    description     TEXT,
    PRIMARY KEY (model, sequence)
);
"""

# The header that asks for an answer as change N of the model served it (admin token needed).
DEPLOYMENT_HEADER = "x-stanch-deployment"

Source = Literal["upstreams file", "admin deploy"]


class Deployment(BaseModel):
    """One change to what a model serves, as it was deployed."""

    model: str
    sequence: int
    deployed_at: datetime
    release_version: str
    canary_weights: dict[str, int] = Field(default_factory=dict)
    system_prompt: str | None = None
    guardrails: list[str] = Field(default_factory=list)
    source: Source
    change_id: str | None = None
    description: str | None = None


class DeploymentsResponse(BaseModel):
    model: str
    deployments: list[Deployment]


def create_schema(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)


def _deployment(row: sqlite3.Row) -> Deployment:
    return Deployment(
        model=row["model"],
        sequence=row["sequence"],
        deployed_at=datetime.fromisoformat(row["deployed_at"]),
        release_version=row["release_version"],
        canary_weights=json.loads(row["canary_weights"]),
        system_prompt=row["system_prompt"],
        guardrails=json.loads(row["guardrails"]),
        source=row["source"],
        change_id=row["change_id"],
        description=row["description"],
    )


def latest_in(db: sqlite3.Connection, model: str) -> Deployment | None:
    row = db.execute("SELECT * FROM deployments WHERE model = ? ORDER BY sequence DESC LIMIT 1", (model,)).fetchone()
    return _deployment(row) if row else None


def append(
    db: sqlite3.Connection,
    model: str,
    *,
    source: Source,
    system_prompt: str | None = None,
    guardrails: list[str] | None = None,
    change_id: str | None = None,
    description: str | None = None,
) -> Deployment:
    """Log the model's deploy as it stands in `db` now (inside the caller's transaction).

    A system prompt or guardrails not given stay as the last change left them: shipping a new
    version keeps the platform's prompt. An empty prompt or an empty list removes them."""
    model_row = db.execute("SELECT * FROM models WHERE name = ?", (model,)).fetchone()
    versions = db.execute("SELECT * FROM versions WHERE model = ?", (model,)).fetchall()
    last = latest_in(db, model)
    if system_prompt is None:
        system_prompt = last.system_prompt if last else None
    if guardrails is None:
        guardrails = last.guardrails if last else []
    deployment = Deployment(
        model=model,
        sequence=(last.sequence if last else 0) + 1,
        deployed_at=datetime.fromisoformat(utc_now()),
        release_version=model_row["release_version"],
        canary_weights=canary_weights(model_row, versions),
        system_prompt=system_prompt or None,
        guardrails=guardrails,
        source=source,
        change_id=change_id,
        description=description,
    )
    db.execute(
        "INSERT INTO deployments (model, sequence, deployed_at, release_version, canary_weights, system_prompt, guardrails,"
        " source, change_id, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            model,
            deployment.sequence,
            deployment.deployed_at.isoformat(),
            deployment.release_version,
            json.dumps(deployment.canary_weights),
            deployment.system_prompt,
            json.dumps(deployment.guardrails),
            source,
            change_id,
            description,
        ),
    )
    return deployment


def latest(store: GatewayStore, model: str) -> Deployment | None:
    """What the platform team deployed last: its system prompt and guardrails are served."""
    with store.lock:
        return latest_in(store.conn, model)


def deployment(store: GatewayStore, model: str, sequence: int) -> Deployment | None:
    rows = store.query("SELECT * FROM deployments WHERE model = ? AND sequence = ?", (model, sequence))
    return _deployment(rows[0]) if rows else None


def listed(store: GatewayStore, model: str, since: datetime | None = None, until: datetime | None = None) -> list[Deployment]:
    """The model's changes in deployment order; with `since`, the change in force at `since`
    comes first (it was serving when the window opened, so it is a candidate too)."""
    every = [_deployment(row) for row in store.query("SELECT * FROM deployments WHERE model = ? ORDER BY sequence", (model,))]
    if until is not None:
        every = [d for d in every if d.deployed_at <= until]
    if since is not None:
        before = [d for d in every if d.deployed_at <= since]
        every = before[-1:] + [d for d in every if d.deployed_at > since]
    return every


def router(store: GatewayStore) -> APIRouter:
    """`GET /admin/models/{model}/deployments`: under /admin/, so the admin token guards it."""
    routes = APIRouter()

    @routes.get("/admin/models/{model}/deployments", response_model=DeploymentsResponse)
    def deployments(
        model: str,
        since: datetime | None = Query(None, description="ISO 8601; the change in force then is listed first"),
        until: datetime | None = Query(None, description="ISO 8601; changes deployed after it are left out"),
    ) -> DeploymentsResponse:
        if store.model_row(model) is None:
            raise HTTPException(404, f"unknown model {model!r}; known models: {', '.join(store.model_names())}")
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise HTTPException(422, f"`{name}` needs a time zone (e.g. 2026-12-01T10:00:00Z)")
        return DeploymentsResponse(model=model, deployments=listed(store, model, since, until))

    return routes
