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
from stanch.gateway.detection import detectors_for
from stanch.gateway.store import highest_enabled_below, resolve_served_version, utc_now
from stanch.gateway.upstreams import KeyReference


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


def _compiled(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        if not pattern:
            raise ValueError("patterns must not contain an empty string (it would match everything)")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regex {pattern!r}: {exc}") from exc
    return patterns


class PatternParams(_Params):
    patterns: list[str] = Field(min_length=1)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        return _compiled(patterns)


class BlockParams(_Params):
    """Block by pattern, by detector, or both: the same detectors confirm and verify run."""

    patterns: list[str] = Field(default_factory=list)
    detectors: list[str] = Field(default_factory=list, description="detector ids: built-ins, or ones `detector_specs` defines")
    detector_specs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="specs of the service detectors named (moderation, judge), as the runbook defines them"
    )

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        return _compiled(patterns)

    @model_validator(mode="after")
    def _something_to_block_by(self) -> BlockParams:
        if not self.patterns and not self.detectors:
            raise ValueError("name `patterns`, `detectors` or both: there is nothing to block by")
        try:
            detectors_for(self.detector_specs).check_names(self.detectors)
        except ValueError as exc:
            raise ValueError(f"detectors: {exc}") from exc
        return self


ROUTES = ("chat", "completions", "embeddings")


class EndpointParams(_Params):
    mode: Literal["deny", "allow_list", "rate_limit"]
    clients: list[str] = Field(
        default_factory=list,
        description="allow_list: the clients let through; deny and rate_limit: only these clients (empty: everyone). "
        "A client is its x-client-id, x-tenant-id or `key:<sha256 of its API key, 12 hex>`",
    )
    routes: list[Literal["chat", "completions", "embeddings"]] = Field(default_factory=list, description="empty: every route")
    per_minute: int | None = Field(default=None, ge=1)
    per_client: bool = Field(False, description="rate_limit: a budget per client instead of one shared by all")

    @model_validator(mode="after")
    def _mode_needs(self) -> EndpointParams:
        if self.mode == "allow_list" and not self.clients:
            raise ValueError("mode allow_list needs a non-empty `clients` list of the clients let through")
        if self.mode == "rate_limit" and self.per_minute is None:
            raise ValueError("mode rate_limit needs `per_minute` (requests per minute, >= 1)")
        if self.mode != "rate_limit" and (self.per_minute is not None or self.per_client):
            raise ValueError(f"`per_minute` and `per_client` only apply to mode rate_limit, not {self.mode}")
        return self


def _empty_is_none(value: Any) -> Any:
    # A runbook's `{last_good_version}` is filled with "" when bisection named none: roll back as before.
    return None if value == "" else _int_to_str(value)


class RollbackParams(_Params):
    bad_version: VersionName | None = None
    target_version: Annotated[str | None, BeforeValidator(_empty_is_none)] = Field(
        None, description="the version to pin (bisection's last good change); unset or empty: the highest enabled below the bad one"
    )


class VersionParams(_Params):
    version: VersionName


class NoParams(_Params):
    pass


class PromptParams(_Params):
    prompt: str


class RegisterParams(_Params):
    """A new version of the model (a fine-tune): served by an upstream under its own name."""

    version: VersionName
    upstream_model: str = Field(min_length=1)
    base_url: str | None = Field(None, description="default: the base version's")
    api_key: KeyReference = Field(None, description='a reference ("$ENV", "file:/path"); default: the base version\'s')
    from_version: VersionName | None = Field(None, description="the version it was trained from; default: the release")
    source: str = "registered"


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


def _insert_blocks(ctx: ActionContext, direction: str, p: BlockParams) -> Outcome:
    insert = (
        "INSERT INTO blocks (model, direction, pattern, detector, detector_spec, incident_id, idempotency_key, holder)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )
    rows = [(pattern, None, None) for pattern in p.patterns] + [
        (None, detector, json.dumps(p.detector_specs[detector]) if detector in p.detector_specs else None) for detector in p.detectors
    ]
    ids = [
        ctx.db.execute(insert, (ctx.model, direction, pattern, detector, spec, ctx.incident_id, ctx.idempotency_key, ctx.holder)).lastrowid
        for pattern, detector, spec in rows
    ]
    result = {"direction": direction, "patterns": p.patterns, "detectors": p.detectors, "block_ids": ids, "holder": ctx.holder}
    return result, {"op": "delete_blocks", "ids": ids}


def block_prompts(ctx: ActionContext, p: BlockParams) -> Outcome:
    return _insert_blocks(ctx, "prompt", p)


def block_outputs(ctx: ActionContext, p: BlockParams) -> Outcome:
    return _insert_blocks(ctx, "output", p)


def restrict_endpoint(ctx: ActionContext, p: EndpointParams) -> Outcome:
    rule_id = ctx.db.execute(
        "INSERT INTO endpoint_rules (model, mode, clients, routes, per_minute, per_client, incident_id, idempotency_key, holder)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            ctx.model,
            p.mode,
            json.dumps(p.clients),
            json.dumps(p.routes),
            p.per_minute,
            int(p.per_client),
            ctx.incident_id,
            ctx.idempotency_key,
            ctx.holder,
        ),
    ).lastrowid
    result = {"rule_id": rule_id, **p.model_dump(), "holder": ctx.holder}
    return result, {"op": "delete_endpoint_rules", "ids": [rule_id]}


def rollback_to_previous(ctx: ActionContext, p: RollbackParams) -> Outcome:
    previous_served = ctx.served()
    bad = p.bad_version or previous_served
    if bad is None:
        raise ActionRejected(f"model {ctx.model!r} serves no version; name `bad_version` to roll back from")
    if p.bad_version:
        ctx.require_version(p.bad_version)
    if p.target_version is not None:  # the last good change bisection found, not merely the previous version
        if p.target_version == bad:
            raise ActionRejected(
                f"target_version {bad!r} is the version model {ctx.model!r} is rolled back from: pinning it changes nothing (a "
                "version rollback cannot undo a system prompt or guardrail change); name another version, or leave it empty"
            )
        if not ctx.require_version(p.target_version)["enabled"]:
            raise ActionRejected(f"version {p.target_version!r} of model {ctx.model!r} is disabled: it cannot be rolled back to")
        target: str | None = p.target_version
    else:
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
    fallback, other_model = row["fallback_version"], row["fallback_model"]
    if not fallback and not other_model:
        raise ActionRejected(f"model {ctx.model!r} has no fallback configured (a `fallback:` in the upstreams file)")
    if fallback and not ctx.require_version(fallback)["enabled"]:
        raise ActionRejected(f"fallback version {fallback!r} of model {ctx.model!r} is disabled")
    previous_served = ctx.served()
    taken, inverse = ctx.hold("fallback")
    if other_model:
        return {"model": other_model, "previous_served": previous_served, "served_by": f"model {other_model}", **taken}, inverse
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
    """Make the version the release; any canary ends (its traffic goes to the new release)."""
    if not ctx.require_version(p.version)["enabled"]:
        raise ActionRejected(f"version {p.version!r} of model {ctx.model!r} is disabled; enable it before deploying")
    previous = ctx.model_row()["release_version"]
    weights = {v["version"]: v["weight"] for v in ctx.versions() if v["weight"]}
    ctx.db.execute("UPDATE models SET release_version = ? WHERE name = ?", (p.version, ctx.model))
    ctx.db.execute("UPDATE versions SET weight = 0 WHERE model = ?", (ctx.model,))
    result = {"version": p.version, "previous_release": previous, "ended_canaries": weights, "served_version": ctx.served()}
    return result, {"op": "set_release", "version": previous, "weights": weights}


def register_version(ctx: ActionContext, p: RegisterParams) -> Outcome:
    """Add a version (no traffic until deployed). History, not protection: nothing to undo."""
    base = ctx.require_version(p.from_version or ctx.model_row()["release_version"])
    existing = ctx.db.execute("SELECT * FROM versions WHERE model = ? AND version = ?", (ctx.model, p.version)).fetchone()
    if existing is not None:
        raise ActionConflict(f"model {ctx.model!r} already has a version {p.version!r} (served by {existing['upstream_model']!r})")
    base_url = p.base_url or base["base_url"]
    api_key = p.api_key or base["api_key"]
    ctx.db.execute(
        "INSERT INTO versions (model, version, base_url, upstream_model, api_key, timeout_seconds, weight, source, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
        (ctx.model, p.version, base_url, p.upstream_model, api_key, base["timeout_seconds"], p.source, utc_now()),
    )
    return {"version": p.version, "upstream_model": p.upstream_model, "base_url": base_url, "from_version": base["version"]}, None


@dataclass(frozen=True)
class ActionKind:
    params_model: type[_Params]
    handler: Callable[[ActionContext, Any], Outcome]
    stage: str


ACTIONS: dict[str, ActionKind] = {
    "disable_feature": ActionKind(FeatureParams, disable_feature, "containment"),
    "block_prompts": ActionKind(BlockParams, block_prompts, "containment"),
    "block_outputs": ActionKind(BlockParams, block_outputs, "containment"),
    "restrict_endpoint": ActionKind(EndpointParams, restrict_endpoint, "containment"),
    "rollback_to_previous": ActionKind(RollbackParams, rollback_to_previous, "rollback"),
    "disable_version": ActionKind(VersionParams, disable_version, "rollback"),
    "switch_to_fallback": ActionKind(NoParams, switch_to_fallback, "rollback"),
    "add_guardrail": ActionKind(PatternParams, add_guardrail, "hotfix"),
    "set_system_prompt": ActionKind(PromptParams, set_system_prompt, "hotfix"),
    "deploy_version": ActionKind(VersionParams, deploy_version, "hotfix"),
    "register_version": ActionKind(RegisterParams, register_version, "hotfix"),
}
