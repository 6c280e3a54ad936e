"""Apply and undo actions exactly once per idempotency key.

The ledger row and the state change it describes commit in the same transaction, so a caller
that dies after the commit and retries with the same key gets the first result back
(`replayed: true`) and nothing is applied twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from stanch.gateway import holds
from stanch.gateway.actions import (
    ACTIONS,
    ActionConflict,
    ActionContext,
    ActionRejected,
)
from stanch.gateway.store import GatewayStore, resolve_served_version, utc_now


@dataclass(frozen=True)
class LedgerOutcome:
    result: dict[str, Any]
    inverse: dict[str, Any] | None
    replayed: bool


class UnknownKey(Exception):
    """Undo named an idempotency key the gateway never applied: HTTP 404."""


def _describe_validation(kind: str, exc: ValidationError) -> str:
    problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'params'}: {err['msg']}" for err in exc.errors(include_url=False))
    return f"bad params for action kind {kind!r}: {problems}"


def apply_action(
    store: GatewayStore,
    *,
    idempotency_key: str,
    incident_id: str,
    model: str,
    kind: str,
    params: dict[str, Any],
    holder: str | None = None,
) -> LedgerOutcome:
    """Apply once per key. `holder` (default: the incident) owns the protections it puts in place."""
    holder = holder or incident_id
    with store.transaction() as db:
        seen = db.execute("SELECT * FROM ledger WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
        if seen is not None:
            db.execute("UPDATE ledger SET presented = presented + 1 WHERE idempotency_key = ?", (idempotency_key,))
            inverse = json.loads(seen["inverse"]) if seen["inverse"] else None
            return LedgerOutcome(json.loads(seen["result"]), inverse, replayed=True)

        if db.execute("SELECT 1 FROM models WHERE name = ?", (model,)).fetchone() is None:
            known = ", ".join(r["name"] for r in db.execute("SELECT name FROM models ORDER BY name"))
            raise ActionRejected(f"unknown model {model!r}; known models: {known}")
        action = ACTIONS.get(kind)
        if action is None:
            raise ActionRejected(f"unknown action kind {kind!r}; supported kinds: {', '.join(ACTIONS)}")
        try:
            parsed = action.params_model.model_validate(params)
        except ValidationError as exc:
            raise ActionRejected(_describe_validation(kind, exc)) from exc

        ctx = ActionContext(db=db, model=model, incident_id=incident_id, idempotency_key=idempotency_key, holder=holder)
        result, inverse = action.handler(ctx, parsed)
        db.execute(
            "INSERT INTO ledger (idempotency_key, incident_id, holder, model, kind, params, result, inverse, applied_at, presented)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
            (
                idempotency_key,
                incident_id,
                holder,
                model,
                kind,
                json.dumps(parsed.model_dump(mode="json")),
                json.dumps(result),
                json.dumps(inverse) if inverse is not None else None,
                utc_now(),
            ),
        )
        return LedgerOutcome(result, inverse, replayed=False)


def undo_action(store: GatewayStore, *, idempotency_key: str, undo_key: str, holder: str | None = None) -> LedgerOutcome:
    """Undo once per key. A hold is released (what other holders hold stays); rows the action
    added are deleted. `holder`, when given, must be the one that applied the key: a caller
    never releases another incident's protection by naming its key. Without it (callers from
    before holders) the key alone says what to undo."""
    with store.transaction() as db:
        by_undo_key = db.execute("SELECT * FROM ledger WHERE undo_key = ?", (undo_key,)).fetchone()
        if by_undo_key is not None and by_undo_key["idempotency_key"] != idempotency_key:
            raise ActionConflict(
                f"undo key {undo_key!r} was already used to undo {by_undo_key['idempotency_key']!r}, "
                f"not {idempotency_key!r}; use a distinct undo key per action"
            )
        row = db.execute("SELECT * FROM ledger WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
        if row is None:
            raise UnknownKey(f"no applied action has idempotency key {idempotency_key!r}; nothing to undo")
        # A key applied before holders (or through an older gateway) names none: its key decides.
        if holder is not None and row["holder"] is not None and holder != row["holder"]:
            raise ActionConflict(
                f"action {idempotency_key!r} is held by {row['holder']!r}, not {holder!r}: an incident undoes only its own actions"
            )
        if row["undone_at"] is not None:
            # Already undone (by this undo key or another): undoing twice could clobber
            # whatever happened since, so answer with the first undo's result.
            db.execute("UPDATE ledger SET undo_presented = undo_presented + 1 WHERE idempotency_key = ?", (idempotency_key,))
            return LedgerOutcome(json.loads(row["undo_result"]), None, replayed=True)
        if row["inverse"] is None:
            raise ActionConflict(f"action {idempotency_key!r} ({row['kind']}) recorded no inverse and cannot be undone")

        hold = holds.by_key(db, idempotency_key)
        if hold is not None:
            restored = holds.release(db, hold)
        else:
            restored = revert(db, row["model"], json.loads(row["inverse"]))
        model_row = db.execute("SELECT * FROM models WHERE name = ?", (row["model"],)).fetchone()
        versions = db.execute("SELECT * FROM versions WHERE model = ?", (row["model"],)).fetchall()
        result = {
            "undone": idempotency_key,
            "kind": row["kind"],
            "restored": restored,
            "served_version": resolve_served_version(model_row, versions),
        }
        db.execute(
            "UPDATE ledger SET undone_at = ?, undo_key = ?, undo_result = ?, undo_presented = 1 WHERE idempotency_key = ?",
            (utc_now(), undo_key, json.dumps(result), idempotency_key),
        )
        return LedgerOutcome(result, None, replayed=False)


def revert(db: Any, model: str, inverse: dict[str, Any]) -> dict[str, Any]:
    """Put back what an action's inverse says was there before (actions that hold nothing)."""
    op = inverse["op"]
    if op == "release_hold":  # its hold row is gone: nothing is held any more
        return {"released": inverse["subject"], "holder": inverse.get("holder"), "note": "no longer held"}
    if op in ("delete_blocks", "delete_endpoint_rules", "delete_guardrails"):
        table = {"delete_blocks": "blocks", "delete_endpoint_rules": "endpoint_rules", "delete_guardrails": "guardrails"}[op]
        ids = list(inverse["ids"])
        marks = ",".join("?" * len(ids))
        db.execute(f"DELETE FROM {table} WHERE model = ? AND id IN ({marks})", (model, *ids))
        return {f"removed_{table}": ids}
    if op == "set_system_prompt":
        db.execute("UPDATE models SET system_prompt = ? WHERE name = ?", (inverse["prompt"], model))
        return {"system_prompt": inverse["prompt"]}
    if op == "set_release":
        db.execute("UPDATE models SET release_version = ? WHERE name = ?", (inverse["version"], model))
        for version, weight in inverse.get("weights", {}).items():  # the canaries the deploy ended
            db.execute("UPDATE versions SET weight = ? WHERE model = ? AND version = ?", (weight, model, version))
        return {"release_version": inverse["version"], "canaries": inverse.get("weights", {})}
    raise ActionConflict(f"unknown inverse operation {op!r} in the ledger; this gateway cannot undo it")
