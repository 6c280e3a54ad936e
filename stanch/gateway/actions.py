"""The action kinds the gateway understands, each with validated params and a recorded inverse.

A handler changes state inside the caller's transaction and returns `(result, inverse)`.
The inverse is data, not code, read back on undo even after a gateway restart. Protections
several incidents may hold at once (a disabled feature or version, a pin, the fallback) are
holds (`holds.py`): their inverse releases this action's hold, and the state is what the holds
left make, so one incident's undo never lifts what another still holds. Rows an action adds
(blocks, endpoint rules, guardrails) are its own: undo deletes those rows. Hotfixes (system
prompt, release) record the value they replaced: restore keeps a fix, so nobody undoes them.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from stanch.gateway import holds
from stanch.gateway.store import highest_enabled_below, resolve_served_version


class ActionRejected(Exception):
    """The request can never succeed as sent (unknown kind/model/version, bad params): HTTP 422."""


class ActionConflict(Exception):
    """The request contradicts recorded state (e.g. an undo key reused for another action): HTTP 409."""


def _int_to_str(value: Any) -> Any:
    # Runbook YAML happily turns `version: 1` into an int; versions are names, so accept both.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


VersionName = Annotated[str, BeforeValidator(_int_to_str), Field(min_length=1)]


class _Params(BaseModel):
    # A typo in a runbook param must fail loudly, not silently do less than intended.
    model_config = ConfigDict(extra="forbid")


class FeatureParams(_Params):
    feature: str = Field(min_length=1)


class PatternParams(_Params):
    patterns: list[str] = Field(min_length=1)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not pattern:
                raise ValueError("patterns must not contain an empty string (it would match everything)")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex {pattern!r}: {exc}") from exc
        return patterns


class EndpointParams(_Params):
    mode: Literal["deny", "allow_list", "rate_limit"]
    clients: list[str] = Field(default_factory=list)
    per_minute: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _mode_needs(self) -> EndpointParams:
        if self.mode == "allow_list" and not self.clients:
            raise ValueError("mode allow_list needs a non-empty `clients` list of x-client-id values")
        if self.mode == "rate_limit" and self.per_minute is None:
            raise ValueError("mode rate_limit needs `per_minute` (requests per minute, >= 1)")
        if self.mode != "allow_list" and self.clients:
            raise ValueError(f"`clients` only applies to mode allow_list, not {self.mode}")
        if self.mode != "rate_limit" and self.per_minute is not None:
            raise ValueError(f"`per_minute` only applies to mode rate_limit, not {self.mode}")
        return self


class RollbackParams(_Params):
    bad_version: VersionName | None = None


class VersionParams(_Params):
    version: VersionName


class NoParams(_Params):
    pass


class PromptParams(_Params):
    prompt: str


@dataclass(frozen=True)
class ActionContext:
    db: sqlite3.Connection
    model: str
    incident_id: str
    idempotency_key: str
    holder: str  # the incident occurrence this action's protections belong to

    def model_row(self) -> sqlite3.Row:
        return self.db.execute("SELECT * FROM models WHERE name = ?", (self.model,)).fetchone()

    def versions(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM versions WHERE model = ?", (self.model,)).fetchall()

    def served(self) -> str | None:
        return resolve_served_version(self.model_row(), self.versions())

    def require_version(self, version: str) -> sqlite3.Row:
        versions = self.versions()
        for row in versions:
            if row["version"] == version:
                return row
        known = ", ".join(sorted(v["version"] for v in versions))
        raise ActionRejected(f"model {self.model!r} has no version {version!r}; known versions: {known}")

    def hold(self, subject: str, value: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Take this action's hold on `subject`: (what the result says about it, the inverse)."""
        taken = holds.take(
            self.db,
            model=self.model,
            subject=subject,
            holder=self.holder,
            incident_id=self.incident_id,
            idempotency_key=self.idempotency_key,
            value=value or {},
        )
        return taken, {"op": "release_hold", "subject": subject, "holder": self.holder}


Outcome = tuple[dict[str, Any], dict[str, Any] | None]


def disable_feature(ctx: ActionContext, p: FeatureParams) -> Outcome:
    row = ctx.db.execute("SELECT * FROM features WHERE model = ? AND name = ?", (ctx.model, p.feature)).fetchone()
    if row is None:
        known = [r["name"] for r in ctx.db.execute("SELECT name FROM features WHERE model = ?", (ctx.model,))]
        raise ActionRejected(f"model {ctx.model!r} has no feature {p.feature!r}; known features: {', '.join(known) or 'none'}")
    taken, inverse = ctx.hold(f"feature:{p.feature}")
    return {"feature": p.feature, "enabled": False, "was_enabled": bool(row["enabled"]), **taken}, inverse


def _insert_blocks(ctx: ActionContext, direction: str, patterns: list[str]) -> Outcome:
    ids = [
        ctx.db.execute(
            "INSERT INTO blocks (model, direction, pattern, incident_id, idempotency_key, holder) VALUES (?, ?, ?, ?, ?, ?)",
            (ctx.model, direction, pattern, ctx.incident_id, ctx.idempotency_key, ctx.holder),
        ).lastrowid
        for pattern in patterns
    ]
    result = {"direction": direction, "patterns": patterns, "block_ids": ids, "holder": ctx.holder}
    return result, {"op": "delete_blocks", "ids": ids}


def block_prompts(ctx: ActionContext, p: PatternParams) -> Outcome:
    return _insert_blocks(ctx, "prompt", p.patterns)


def block_outputs(ctx: ActionContext, p: PatternParams) -> Outcome:
    return _insert_blocks(ctx, "output", p.patterns)


def restrict_endpoint(ctx: ActionContext, p: EndpointParams) -> Outcome:
    rule_id = ctx.db.execute(
        "INSERT INTO endpoint_rules (model, mode, clients, per_minute, incident_id, idempotency_key, holder) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (ctx.model, p.mode, json.dumps(p.clients), p.per_minute, ctx.incident_id, ctx.idempotency_key, ctx.holder),
    ).lastrowid
    result = {"rule_id": rule_id, "mode": p.mode, "clients": p.clients, "per_minute": p.per_minute, "holder": ctx.holder}
    return result, {"op": "delete_endpoint_rules", "ids": [rule_id]}


def rollback_to_previous(ctx: ActionContext, p: RollbackParams) -> Outcome:
    previous_served = ctx.served()
    bad = p.bad_version or previous_served
    if bad is None:
        raise ActionRejected(f"model {ctx.model!r} serves no version; name `bad_version` to roll back from")
    if p.bad_version:
        ctx.require_version(p.bad_version)
    target = highest_enabled_below(ctx.versions(), bad)
    if target is None:
        raise ActionRejected(f"model {ctx.model!r} has no enabled version below {bad!r} to roll back to")
    # The newest pin is served while held; the pin from before the first comes back with the last release.
    taken, inverse = ctx.hold("pin", {"version": target})
    result = {"version": target, "previous_served": previous_served, "bad_version": bad, "served_version": ctx.served(), **taken}
    return result, inverse


def disable_version(ctx: ActionContext, p: VersionParams) -> Outcome:
    row = ctx.require_version(p.version)
    taken, inverse = ctx.hold(f"version:{p.version}")
    served = ctx.served()
    if served is None:
        # Raising rolls the transaction back: we never leave a model with nothing to serve.
        raise ActionRejected(f"disabling version {p.version!r} would leave model {ctx.model!r} with no servable version")
    return {"version": p.version, "was_enabled": bool(row["enabled"]), "served_version": served, **taken}, inverse


def switch_to_fallback(ctx: ActionContext, p: NoParams) -> Outcome:
    row = ctx.model_row()
    fallback = row["fallback_version"]
    if not fallback:
        raise ActionRejected(f"model {ctx.model!r} has no fallback version configured")
    if not ctx.require_version(fallback)["enabled"]:
        raise ActionRejected(f"fallback version {fallback!r} of model {ctx.model!r} is disabled")
    previous_served = ctx.served()
    taken, inverse = ctx.hold("fallback")
    return {"version": fallback, "previous_served": previous_served, "served_version": ctx.served(), **taken}, inverse


def add_guardrail(ctx: ActionContext, p: PatternParams) -> Outcome:
    ids = [
        ctx.db.execute(
            "INSERT INTO guardrails (model, pattern, incident_id, idempotency_key, holder) VALUES (?, ?, ?, ?, ?)",
            (ctx.model, pattern, ctx.incident_id, ctx.idempotency_key, ctx.holder),
        ).lastrowid
        for pattern in p.patterns
    ]
    return {"patterns": p.patterns, "guardrail_ids": ids}, {"op": "delete_guardrails", "ids": ids}


def set_system_prompt(ctx: ActionContext, p: PromptParams) -> Outcome:
    previous = ctx.model_row()["system_prompt"]
    ctx.db.execute("UPDATE models SET system_prompt = ? WHERE name = ?", (p.prompt or None, ctx.model))
    return {"system_prompt": p.prompt or None, "had_previous": previous is not None}, {"op": "set_system_prompt", "prompt": previous}


def deploy_version(ctx: ActionContext, p: VersionParams) -> Outcome:
    if not ctx.require_version(p.version)["enabled"]:
        raise ActionRejected(f"version {p.version!r} of model {ctx.model!r} is disabled; enable it before deploying")
    previous = ctx.model_row()["release_version"]
    ctx.db.execute("UPDATE models SET release_version = ? WHERE name = ?", (p.version, ctx.model))
    result = {"version": p.version, "previous_release": previous, "served_version": ctx.served()}
    return result, {"op": "set_release", "version": previous}


@dataclass(frozen=True)
class ActionKind:
    params_model: type[_Params]
    handler: Callable[[ActionContext, Any], Outcome]
    stage: str


ACTIONS: dict[str, ActionKind] = {
    "disable_feature": ActionKind(FeatureParams, disable_feature, "containment"),
    "block_prompts": ActionKind(PatternParams, block_prompts, "containment"),
    "block_outputs": ActionKind(PatternParams, block_outputs, "containment"),
    "restrict_endpoint": ActionKind(EndpointParams, restrict_endpoint, "containment"),
    "rollback_to_previous": ActionKind(RollbackParams, rollback_to_previous, "rollback"),
    "disable_version": ActionKind(VersionParams, disable_version, "rollback"),
    "switch_to_fallback": ActionKind(NoParams, switch_to_fallback, "rollback"),
    "add_guardrail": ActionKind(PatternParams, add_guardrail, "hotfix"),
    "set_system_prompt": ActionKind(PromptParams, set_system_prompt, "hotfix"),
    "deploy_version": ActionKind(VersionParams, deploy_version, "hotfix"),
}
