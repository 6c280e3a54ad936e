"""Shadows: live traffic mirrored to the fixed configuration before an incident restores.

An incident opens a shadow on a model: the version its fix was verified on, with the model's
hotfixes (system prompt, guardrails) and without any incident's containment — what users would
get once restore lifts the protections. A sampled share of users' live requests is then sent
there as well, in the background, after the user's own answer left through the contained path
(it is never delayed nor changed). The mirrored answers are kept, up to the shadow's limit, for
Stanch's worker to score with the runbook's detectors.

Kept for the shadow's life only: closing deletes every mirrored answer but those Stanch names
as failing, which a responder reads before deciding; those go after `FAILING_KEPT_FOR`. A shadow
nobody closed (its worker gone) is closed by the gateway `OPEN_AT_MOST` after it opened, and its
answers deleted. Prompts and answers are users' text: they are sealed at rest with AES-GCM under
the sample store's key (STANCH_GATEWAY_SAMPLE_KEY or STANCH_GATEWAY_SAMPLE_KEY_FILE, see
samples.py), and a gateway without one refuses to open a shadow. An answer sealed under another
key (the key rotated or gone) reads back as outcome `unreadable`: never as a clean answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import secrets
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from stanch.gateway import deployments
from stanch.gateway.enforcement import OutputGuard, user_text, with_system_prompt
from stanch.gateway.proxy import Outcome, forward
from stanch.gateway.routing import BARE_HEADER, PROBE_HEADER, VERSION_HEADER, route
from stanch.gateway.samples import KEY_FILE_VARIABLE, KEY_VARIABLE, read_key

if TYPE_CHECKING:
    from stanch.gateway.store import GatewayStore

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS shadows (
    id              TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    incident_id     TEXT NOT NULL,
    model           TEXT NOT NULL,
    version         TEXT NOT NULL,    -- the fixed version, with the model's hotfixes
    sample_rate     REAL NOT NULL,
    max_requests    INTEGER NOT NULL, -- mirrored at most: the bound on what is kept
    taken           INTEGER NOT NULL DEFAULT 0,
    opened_at       TEXT NOT NULL,
    closed_at       TEXT,
    close_key       TEXT
);
CREATE TABLE IF NOT EXISTS shadow_answers (
    shadow_id  TEXT NOT NULL REFERENCES shadows(id),
    seq        INTEGER NOT NULL,
    outcome    TEXT NOT NULL,         -- answered | upstream_error | upstream_rejected | unreadable (no key)
    prompt     TEXT NOT NULL,         -- what the user typed: a model repeating it is no leak
    answer     TEXT NOT NULL,         -- what the fixed configuration answered (guardrails applied)
    at         TEXT NOT NULL,
    kept_until TEXT,                  -- a failing answer kept after closing, for a responder
    sealed     BLOB,                  -- with a sample key: prompt and answer sealed (then both '')
    PRIMARY KEY (shadow_id, seq)
);
"""

MAX_REQUESTS = 1000  # per shadow: mirrored answers are content, kept bounded
FAILING_KEPT_FOR = timedelta(days=7)
MAX_KEPT_FAILING = 50
OPEN_AT_MOST = timedelta(days=1)  # a shadow its worker never closed stops keeping users' text
UNREADABLE = "unreadable"  # a sealed answer this gateway's key does not open


def create_schema(conn: sqlite3.Connection) -> None:
    """The shadow tables, created with the gateway's own at start-up (GatewayStore)."""
    conn.executescript(SCHEMA)
    if "sealed" not in {row[1] for row in conn.execute("PRAGMA table_info(shadow_answers)")}:
        conn.execute("ALTER TABLE shadow_answers ADD COLUMN sealed BLOB")


def sealing_key(env: Mapping[str, str] | None = None) -> bytes | None:
    """The sample store's key when one is set (a bad one raises SampleSettingsError, naming it)."""
    env = os.environ if env is None else env
    if env.get(KEY_VARIABLE, "").strip() or env.get(KEY_FILE_VARIABLE, "").strip():
        return read_key(env)
    return None


def sample_id(shadow_id: str, seq: int) -> str:
    return f"{shadow_id}-{seq}"


def _now() -> datetime:
    return datetime.now(UTC)


# -- the admin API's bodies ---------------------------------------------------------------


class OpenShadowRequest(BaseModel):
    idempotency_key: str = Field(min_length=1, description="from the incident: the same key opens the same shadow once")
    incident_id: str = Field(min_length=1)
    model: str = Field(min_length=1)
    version: str = Field("release", min_length=1, description="the fixed version; 'release': the model's release")
    sample_rate: float = Field(1.0, gt=0, le=1, description="the share of live requests mirrored")
    limit: int = Field(20, ge=1, le=MAX_REQUESTS, description="mirrored requests at most")


class CloseShadowRequest(BaseModel):
    idempotency_key: str = Field(min_length=1)
    keep: list[str] = Field(default_factory=list, max_length=MAX_KEPT_FAILING, description="failing sample ids a responder reads")


class ShadowInfo(BaseModel):
    shadow_id: str
    incident_id: str
    model: str
    version: str
    sample_rate: float
    limit: int
    mirrored: int = Field(description="mirrored answers received so far")
    open: bool


class MirroredAnswer(BaseModel):
    id: str
    seq: int
    outcome: str
    prompt: str
    answer: str
    at: str


class ShadowPage(BaseModel):
    shadow: ShadowInfo
    answers: list[MirroredAnswer]
    next_after: int = Field(description="pass as `after` for the next page")


# -- the shadows ----------------------------------------------------------------------------


class Shadows:
    """Open shadows of the gateway's models, their mirroring and their mirrored answers."""

    def __init__(
        self, store: GatewayStore, http: dict[str, httpx.AsyncClient], rng: random.Random | None = None, key: bytes | None = None
    ) -> None:
        self.store = store
        self.http = http  # the gateway's upstream client, set in its lifespan
        self.rng = rng or random.Random()
        key = key or sealing_key()
        self.aead = AESGCM(key) if key else None
        self.running: set[asyncio.Task[None]] = set()  # mirrors under way (a reference keeps each alive)
        self.forget_expired()  # what a gateway that was down while a shadow expired still keeps

    # - reads and writes -

    def info(self, row: sqlite3.Row) -> ShadowInfo:
        mirrored = self.store.query("SELECT COUNT(*) FROM shadow_answers WHERE shadow_id = ?", (row["id"],))[0][0]
        return ShadowInfo(
            shadow_id=row["id"],
            incident_id=row["incident_id"],
            model=row["model"],
            version=row["version"],
            sample_rate=row["sample_rate"],
            limit=row["max_requests"],
            mirrored=mirrored,
            open=row["closed_at"] is None,
        )

    def row(self, shadow_id: str) -> sqlite3.Row:
        rows = self.store.query("SELECT * FROM shadows WHERE id = ?", (shadow_id,))
        if not rows:
            raise HTTPException(404, f"no shadow {shadow_id!r} on this gateway")
        return rows[0]

    def open(self, request: OpenShadowRequest) -> ShadowInfo:
        if self.aead is None:
            raise HTTPException(
                409,
                "this gateway has no key to seal mirrored users' text at rest: set "
                f"{KEY_VARIABLE} (base64 of 32 bytes) or {KEY_FILE_VARIABLE} (a file holding it) and restart it",
            )
        shadow_id = "sh-" + hashlib.sha256(request.idempotency_key.encode()).hexdigest()[:12]
        with self.store.transaction() as db:
            self._forget_expired(db)
            if db.execute("SELECT 1 FROM shadows WHERE idempotency_key = ?", (request.idempotency_key,)).fetchone() is None:
                model = db.execute("SELECT release_version FROM models WHERE name = ? AND configured = 1", (request.model,)).fetchone()
                if model is None:
                    raise HTTPException(422, f"unknown model {request.model!r}; known models: {', '.join(self.store.model_names())}")
                version = model[0] if request.version == "release" else request.version
                if db.execute("SELECT 1 FROM versions WHERE model = ? AND version = ?", (request.model, version)).fetchone() is None:
                    raise HTTPException(422, f"model {request.model!r} has no version {version!r} to mirror traffic to")
                db.execute(
                    "INSERT INTO shadows (id, idempotency_key, incident_id, model, version, sample_rate, max_requests, opened_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        shadow_id,
                        request.idempotency_key,
                        request.incident_id,
                        request.model,
                        version,
                        request.sample_rate,
                        request.limit,
                        _now().isoformat(),
                    ),
                )
        return self.info(self.row(shadow_id))

    def page(self, shadow_id: str, after: int, limit: int, ids: list[str] | None = None) -> ShadowPage:
        self.forget_expired()
        row = self.row(shadow_id)
        if ids:
            wanted = [int(i.rsplit("-", 1)[1]) for i in ids if i.startswith(f"{shadow_id}-") and i.rsplit("-", 1)[1].isdigit()]
            marks = ",".join("?" for _ in wanted) or "NULL"
            rows = self.store.query(
                f"SELECT * FROM shadow_answers WHERE shadow_id = ? AND seq IN ({marks}) ORDER BY seq", (shadow_id, *wanted)
            )
        else:
            rows = self.store.query(
                "SELECT * FROM shadow_answers WHERE shadow_id = ? AND seq > ? ORDER BY seq LIMIT ?", (shadow_id, after, limit)
            )
        answers = [self._answer(shadow_id, r) for r in rows]
        return ShadowPage(shadow=self.info(row), answers=answers, next_after=answers[-1].seq if answers else after)

    def close(self, shadow_id: str, request: CloseShadowRequest) -> ShadowInfo:
        """Mirroring stops; every mirrored answer is deleted but the failing ones named in `keep`."""
        self.row(shadow_id)
        keep = [int(i.rsplit("-", 1)[1]) for i in request.keep if i.startswith(f"{shadow_id}-") and i.rsplit("-", 1)[1].isdigit()]
        with self.store.transaction() as db:
            closed = db.execute("SELECT closed_at FROM shadows WHERE id = ?", (shadow_id,)).fetchone()[0]
            if closed is None:
                db.execute(
                    "UPDATE shadows SET closed_at = ?, close_key = ? WHERE id = ?", (_now().isoformat(), request.idempotency_key, shadow_id)
                )
                kept = f" AND seq NOT IN ({','.join('?' for _ in keep)})" if keep else ""  # NOT IN (NULL) would delete nothing
                db.execute(f"DELETE FROM shadow_answers WHERE shadow_id = ?{kept}", (shadow_id, *keep))
                until = (_now() + FAILING_KEPT_FOR).isoformat()
                db.execute("UPDATE shadow_answers SET kept_until = ? WHERE shadow_id = ?", (until, shadow_id))
        return self.info(self.row(shadow_id))

    def _answer(self, shadow_id: str, row: sqlite3.Row) -> MirroredAnswer:
        prompt, answer, outcome = row["prompt"], row["answer"], row["outcome"]
        if row["sealed"] is not None:
            prompt, answer, outcome = "", "", UNREADABLE  # sealed under another key: nothing to judge
            if self.aead is not None:
                try:
                    opened = json.loads(self.aead.decrypt(row["sealed"][:12], row["sealed"][12:], self._bound(shadow_id, row["seq"])))
                    prompt, answer, outcome = opened["prompt"], opened["answer"], row["outcome"]
                except InvalidTag:
                    pass
        return MirroredAnswer(
            id=sample_id(shadow_id, row["seq"]), seq=row["seq"], outcome=outcome, prompt=prompt, answer=answer, at=row["at"]
        )

    @staticmethod
    def _bound(shadow_id: str, seq: int) -> bytes:
        return f"shadow|{shadow_id}|{seq}".encode()  # a sealed answer moved to another row does not open

    def forget_expired(self) -> None:
        with self.store.transaction() as db:
            self._forget_expired(db)

    @staticmethod
    def _forget_expired(db: sqlite3.Connection) -> None:
        """Failing answers past their keeping; shadows open past `OPEN_AT_MOST`: closed, emptied."""
        now = _now()
        db.execute("DELETE FROM shadow_answers WHERE kept_until IS NOT NULL AND kept_until < ?", (now.isoformat(),))
        stale = [
            r[0]
            for r in db.execute("SELECT id FROM shadows WHERE closed_at IS NULL AND opened_at < ?", ((now - OPEN_AT_MOST).isoformat(),))
        ]
        for shadow_id in stale:
            db.execute("UPDATE shadows SET closed_at = ?, close_key = 'expired' WHERE id = ?", (now.isoformat(), shadow_id))
            db.execute("DELETE FROM shadow_answers WHERE shadow_id = ?", (shadow_id,))

    # - mirroring -

    async def mirror_later(self, request: Request, route_name: str, response: Response) -> Response:
        """The hook after a user's request was answered: pick the open shadows this request is
        sampled for, and mirror it to each in the background. `response` goes back untouched."""
        stanchs_own = (VERSION_HEADER, PROBE_HEADER, BARE_HEADER, deployments.DEPLOYMENT_HEADER)
        if route_name not in ("chat", "completions") or any(h in request.headers for h in stanchs_own):
            return response  # Stanch's own probes, version checks and replayed changes are no live traffic
        try:
            body = json.loads(await request.body())  # read once by the route already: cached
        except ValueError:
            return response
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return response
        for shadow in self.store.query("SELECT * FROM shadows WHERE model = ? AND closed_at IS NULL", (body["model"],)):
            if datetime.fromisoformat(shadow["opened_at"]) < _now() - OPEN_AT_MOST:
                self.forget_expired()  # its worker never closed it: the gateway does
                continue
            if self.rng.random() >= shadow["sample_rate"]:
                continue
            seq = self._take_a_slot(shadow["id"])
            if seq is None:
                continue
            task = asyncio.create_task(self._mirror(shadow, seq, route_name, body))
            self.running.add(task)
            task.add_done_callback(self.running.discard)
        return response

    def _take_a_slot(self, shadow_id: str) -> int | None:
        """The next sequence number, or None once the shadow mirrored its limit (or closed)."""
        with self.store.transaction() as db:
            taken = db.execute(
                "UPDATE shadows SET taken = taken + 1 WHERE id = ? AND closed_at IS NULL AND taken < max_requests RETURNING taken",
                (shadow_id,),
            ).fetchone()
        return int(taken[0]) if taken else None

    async def _mirror(self, shadow: sqlite3.Row, seq: int, route_name: str, body: dict[str, Any]) -> None:
        model = shadow["model"]
        try:
            outcomes: list[Outcome] = []
            chosen = route(self.store, model, None, version=shadow["version"])
            model_row = self.store.model_row(model)
            if chosen is None or model_row is None:
                outcomes.append(Outcome("upstream_error"))
            else:
                # As `answer()` serves a version after restore: the platform's deployed prompt and
                # guardrails, the hotfixes on top, and no incident's blocks.
                deployed = deployments.latest(self.store, model)
                upstream_body = with_system_prompt({**body, "stream": False}, deployed.system_prompt if deployed else None)
                upstream_body = with_system_prompt(upstream_body, model_row["system_prompt"])
                upstream_body.pop("stream_options", None)
                guard = OutputGuard.hotfixes_only(self.store, model)
                guard.guardrails += deployed.guardrails if deployed else []
                await forward(self.http["client"], chosen, route_name, upstream_body, model, guard, user_text(body), None, outcomes.append)
            outcome = outcomes[0] if outcomes else Outcome("upstream_error")
            self._keep(shadow["id"], seq, outcome.outcome, user_text(body), outcome.served_text)
        except Exception:  # a mirror never hurts the gateway: it is logged and counted as an error
            log.exception("mirroring a request to shadow %s failed", shadow["id"])
            self._keep(shadow["id"], seq, "upstream_error", user_text(body), "")

    def _keep(self, shadow_id: str, seq: int, outcome: str, prompt: str, answer: str) -> None:
        sealed = None
        if self.aead is None:  # the key went away since the shadow opened: users' text is not kept bare
            outcome, prompt, answer = UNREADABLE, "", ""
        else:
            nonce = secrets.token_bytes(12)
            content = json.dumps({"prompt": prompt, "answer": answer}).encode()
            sealed, prompt, answer = nonce + self.aead.encrypt(nonce, content, self._bound(shadow_id, seq)), "", ""
        with self.store.transaction() as db:
            if db.execute("SELECT closed_at FROM shadows WHERE id = ?", (shadow_id,)).fetchone()[0] is not None:
                return  # closed meanwhile: nothing more is kept
            db.execute(
                "INSERT OR IGNORE INTO shadow_answers (shadow_id, seq, outcome, prompt, answer, at, sealed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (shadow_id, seq, outcome, prompt, answer, _now().isoformat(), sealed),
            )


def shadow_router(shadows: Shadows) -> APIRouter:
    """`/admin/shadows`: open a shadow, page through its mirrored answers, close it (admin token)."""
    router = APIRouter(prefix="/admin/shadows")

    @router.post("", response_model=ShadowInfo)
    def open_shadow(request: OpenShadowRequest) -> ShadowInfo:
        return shadows.open(request)

    @router.get("/{shadow_id}", response_model=ShadowPage)
    def read_shadow(
        shadow_id: str,
        after: int = Query(0, ge=0, description="answers after this sequence number"),
        limit: int = Query(50, ge=1, le=200),
        ids: list[str] = Query([], description="these sample ids only (a failing sample named by Stanch)"),
    ) -> ShadowPage:
        return shadows.page(shadow_id, after, limit, ids)

    @router.post("/{shadow_id}/close", response_model=ShadowInfo)
    def close_shadow(shadow_id: str, request: CloseShadowRequest) -> ShadowInfo:
        return shadows.close(shadow_id, request)

    return router
