"""MLflow Model Registry as a Stanch target: roll a serving alias back to the previous good version.

Teams that deploy by alias (`models:/support-bot@champion`) roll back by moving the alias, so
that is the one action this adapter takes, over the registry's REST API (httpx only; MLflow
itself is not a dependency of Stanch).

Action kind (runbook `rollback:` steps whose target is an `mlflow` entry of targets.yaml):

`rollback_alias` — move the alias back to the previous good version.
    params: `alias` (default: the target's `alias`, e.g. champion);
            `to_version` (default: the highest READY version below the alias's current one
            that Stanch has not marked rolled_back);
            `bad_version` (optional check: refuse unless the alias points at it now; an empty
            value, as `"{version}"` renders for an incident without one, means no check);
            `registered_model` (default: the incident's model, through the target's
            `registered_models` map).
    does:   tags the bad version `stanch.incident=<incident id>` and
            `stanch.status=rolled_back`, moves the alias, appends to the alias history.
    undo:   releases this rollback's hold on the alias (below) and marks the bad version
            `stanch.status=restored` unless another hold still rolls back from it (the
            incident tag stays for the audit). If someone moved the alias since, undo
            refuses rather than clobber their change.

Several incidents on one alias: each rollback is a hold on the alias, named by its holder (the
incident occurrence) in its ledger record, with `base`: the version the alias pointed at
before the first of the holds in force (a rollback taken while another holds inherits it).
The alias serves the newest hold's version. Releasing a hold while others remain moves the
alias to the newest remaining one's version; releasing the last moves it back to `base`. So
one incident's restore never lifts another's rollback, and the last restore brings back what
was served before the first. A second incident reporting the same bad version
(`bad_version`) that a hold already rolled back from joins the rollback instead of being
refused for pointing elsewhere; without `bad_version` it rolls back from the version served
now, as a first one would. Holds recorded before holders (no `base`) count as based on the
version they rolled back from. The registry has no transactions: two workers releasing holds
on one alias at the same instant may both move it (each hold's record is its own tag, so no
hold is lost, and the next release settles the alias again).

What Stanch keeps in the registry itself, so any MLflow client can audit it:
- `stanch.alias_history.<alias>` (registered-model tag): a JSON list of the alias moves
  Stanch made, newest last (`at`, `from`, `to`, `by`, `incident`), trimmed to
  `history_limit` entries and to what the tag may hold;
- `stanch.applied.<sha256 of key>` / `stanch.undone.<…>` (registered-model tags): the
  idempotency ledger. Apply writes its plan as `pending` before changing anything and
  `done` after, so a retry after a crash finishes the same plan instead of rolling back a
  second version, and a repeated key returns the first result with `replayed=True`.

Errors: an unknown model or alias, bad params or refused credentials are non-retryable
`TargetError`s naming the model and alias; connection errors, 5xx, 408 and 429 retry.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self
from urllib.parse import urlencode

import httpx
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from stanch.config.network import tls_verification
from stanch.config.secrets import SecretUnavailable, read_secret
from stanch.models.actions import ActionSpec, AppliedAction
from stanch.targets.base import ApplyResult, PlannedCall, ServesNoModel, TargetError
from stanch.targets.mlflow_ledger import (
    APPLIED_PREFIX,
    HISTORY_PREFIX,
    MAX_TAG_VALUE,
    TAG_INCIDENT,
    TAG_STATUS,
    UNDONE_PREFIX,
    base_of,
    digest,
    holds_on,
    json_dict,
    json_list,
    newest,
)
from stanch.targets.mlflow_registry import API, RegistrySession, by_number
from stanch.targets.mlflow_versions import FineTunedModel, register_fine_tune

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _version_name(value: Any) -> Any:
    """Runbook YAML turns `to_version: 2` into an int and `"{version}"` may render empty."""
    if value == "":
        return None
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


VersionName = Annotated[str | None, BeforeValidator(_version_name)]


class RollbackAliasParams(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in a runbook must fail loudly

    alias: str | None = Field(None, pattern=r"^[\w-]+$")
    to_version: VersionName = None
    bad_version: VersionName = None
    registered_model: str | None = Field(None, min_length=1)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class MlflowTarget(ServesNoModel):
    """Drives one MLflow tracking server's Model Registry; see the module docstring."""

    kind: ClassVar[str] = "mlflow"
    label: ClassVar[str] = "MLflow registry"

    class Config(BaseModel):
        """The keys under `mlflow:` in targets.yaml; secrets only as references."""

        model_config = ConfigDict(extra="forbid")

        tracking_uri: str = Field(pattern=r"^https?://", description="the MLflow tracking server, e.g. http://127.0.0.1:5000")
        alias: str = Field("champion", pattern=r"^[\w-]+$", description="the alias users are served through")
        registered_models: dict[str, str] = Field(
            default_factory=dict, description="Stanch model name -> registered model name; unlisted models keep their own name"
        )
        token_env: str | None = Field(None, pattern=ENV_NAME, description="bearer token from this environment variable")
        token_file: Path | None = Field(None, description="bearer token from this file (relative to targets.yaml)")
        username: str | None = Field(None, description="basic auth (MLflow's auth app) with password_env or password_file")
        password_env: str | None = Field(None, pattern=ENV_NAME)
        password_file: Path | None = None
        timeout_seconds: float = Field(10.0, gt=0, le=60)
        history_limit: int = Field(20, ge=1, le=200, description="alias moves kept in each alias history tag")

    def __init__(
        self,
        config: Config,
        *,
        name: str = "mlflow",
        base: Path = Path("."),
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.base = base
        self.env = env if env is not None else {}
        self.base_url = config.tracking_uri.rstrip("/")
        self._transport = transport  # tests may pass a mock transport

    @classmethod
    def from_config(cls, config: Config, *, name: str, base: Path, env: Mapping[str, str]) -> Self:
        return cls(config, name=name, base=base, env=env)

    def registered_name(self, model: str) -> str:
        return self.config.registered_models.get(model, model)

    # --- the Target protocol ------------------------------------------------------------

    async def state(self, model: str) -> dict[str, Any]:
        """The alias → version map, every version with its tags and stage, and Stanch's records."""
        name = self.registered_name(model)
        async with self._session() as registry:
            registered = await registry.get_model(name)
            versions = await registry.versions(name)
        aliases, tags = registered["aliases"], registered["tags"]
        return {
            "adapter": self.kind,
            "target": self.name,
            "tracking_uri": self.base_url,
            "registered_model": name,
            "alias": self.config.alias,
            "served_version": aliases.get(self.config.alias),
            "aliases": aliases,
            "versions": [
                {
                    "version": v["version"],
                    "status": v.get("status"),
                    "stage": v.get("current_stage"),
                    "run_id": v.get("run_id"),
                    "source": v.get("source"),
                    "created_at": v.get("creation_timestamp"),
                    "aliases": v.get("aliases", []),
                    "tags": {t["key"]: t.get("value") for t in v.get("tags", [])},
                }
                for v in versions
            ],
            "tags": {k: v for k, v in tags.items() if not k.startswith((APPLIED_PREFIX, UNDONE_PREFIX, HISTORY_PREFIX))},
            "alias_history": {k.removeprefix(HISTORY_PREFIX): json_list(v) for k, v in tags.items() if k.startswith(HISTORY_PREFIX)},
            "stanch_ledger": [json_dict(v) for k, v in sorted(tags.items()) if k.startswith((APPLIED_PREFIX, UNDONE_PREFIX))],
        }

    async def apply(self, model: str, action: ActionSpec, idempotency_key: str, incident_id: str, holder: str | None = None) -> ApplyResult:
        params = self._params(action)
        name = params.registered_model or self.registered_name(model)
        alias = params.alias or self.config.alias
        ledger_tag = APPLIED_PREFIX + digest(idempotency_key)
        async with self._session() as registry:
            registered = await registry.get_model(name)
            record = json_dict(registered["tags"].get(ledger_tag))
            if record.get("phase") == "done":
                return ApplyResult(result=record["result"], inverse=record["inverse"], replayed=True)
            current = registered["aliases"].get(alias)
            if record.get("phase") == "pending":  # a crash after the plan was written: finish that plan
                bad, good = record["from"], record["to"]
                if current not in (bad, good):
                    raise TargetError(
                        f"alias {alias!r} of {name!r} points at version {current}, neither the version Stanch began rolling "
                        f"back from ({bad}) nor the one it chose ({good}); someone moved it meanwhile, so Stanch stops",
                        retryable=False,
                    )
            else:
                held = holds_on(registered["tags"], alias)
                bad, good = await self._choose(registry, name, alias, current, params, held)
                record = {
                    "phase": "pending",
                    "key": idempotency_key,
                    "incident": incident_id,
                    "holder": holder or incident_id,
                    "alias": alias,
                    "from": bad,
                    "to": good,
                    # What the last release goes back to: before the first hold in force, not its rollback.
                    "base": base_of(held[0]) if held else current,
                    "seq": 1 + max((int(h.get("seq", 0)) for h in holds_on(registered["tags"], alias, released=True)), default=0),
                }
                await registry.set_model_tag(name, ledger_tag, json.dumps(record))

            # The change itself; every call is safe to repeat. The newest hold is served.
            await registry.set_version_tag(name, bad, TAG_INCIDENT, incident_id)
            await registry.set_version_tag(name, bad, TAG_STATUS, "rolled_back")
            await registry.set_alias(name, alias, good)
            await self._record_move(
                registry, name, alias, registered["tags"], current or bad, good, "rollback_alias", incident_id, ledger_tag
            )

            result = {
                "registered_model": name,
                "alias": alias,
                "version": good,
                "previous_version": bad,
                "bad_version": bad,
                "served_version": good,
                "holder": record.get("holder", incident_id),
            }
            inverse = {
                "op": "move_alias",
                "registered_model": name,
                "alias": alias,
                "version": base_of(record),
                "left_at": good,
                "bad_version": bad,
                "incident": incident_id,
            }
            await registry.set_model_tag(name, ledger_tag, json.dumps({**record, "phase": "done", "result": result, "inverse": inverse}))
        return ApplyResult(result=result, inverse=inverse)

    async def undo(self, applied: AppliedAction, undo_key: str) -> ApplyResult:
        """Release this rollback's hold: the alias goes to the newest other hold's version, or back
        to the version from before the first hold when this is the last."""
        inverse = applied.inverse or {}
        if inverse.get("op") != "move_alias":
            raise TargetError(f"action {applied.idempotency_key!r} ({applied.kind}) recorded no alias move to undo", retryable=False)
        name, alias = inverse["registered_model"], inverse["alias"]
        ledger_tag = UNDONE_PREFIX + digest(applied.idempotency_key)
        async with self._session() as registry:
            registered = await registry.get_model(name)
            record = json_dict(registered["tags"].get(ledger_tag))
            if record:
                return ApplyResult(result=record["result"], replayed=True)
            current = registered["aliases"].get(alias)
            # The registry's record of this hold, else (its tag gone) what the action recorded.
            own = json_dict(registered["tags"].get(APPLIED_PREFIX + digest(applied.idempotency_key))) or {
                "key": applied.idempotency_key,
                "from": inverse["bad_version"],
                "to": inverse["left_at"],
                "base": inverse["version"],
            }
            others = [h for h in holds_on(registered["tags"], alias) if h.get("key") != applied.idempotency_key]
            left_at = newest([*others, own])["to"]  # what the holds in force serve now
            back_to = newest(others)["to"] if others else base_of(own)
            if current not in (left_at, back_to):
                raise TargetError(
                    f"alias {alias!r} of {name!r} now points at version {current}, not {left_at} where the rollback left it; "
                    f"someone moved it since, so Stanch leaves it there (move it by hand or skip this undo)",
                    retryable=False,
                )
            await registry.set_alias(name, alias, back_to)
            bad = inverse["bad_version"]
            if not any(h.get("from") == bad for h in others):
                await registry.set_version_tag(name, bad, TAG_STATUS, "restored")
            await self._record_move(
                registry, name, alias, registered["tags"], current or left_at, back_to, "undo", inverse.get("incident", ""), ledger_tag
            )
            result = {
                "undone": applied.idempotency_key,
                "registered_model": name,
                "alias": alias,
                "version": back_to,
                "served_version": back_to,
                "still_held_by": [h.get("holder", h.get("incident")) for h in others],
            }
            await registry.set_model_tag(
                name, ledger_tag, json.dumps({"key": applied.idempotency_key, "undo_key": undo_key, "result": result})
            )
        return ApplyResult(result=result)

    async def register_fine_tune(self, model: str, fine_tuned: FineTunedModel, idempotency_key: str) -> dict[str, Any]:
        """A new version of the model's registered model, once per key; see `stanch.targets.mlflow_versions`."""
        async with self._session() as registry:
            return await register_fine_tune(registry, self.registered_name(model), fine_tuned, idempotency_key)

    def plan(self, model: str, action: ActionSpec, idempotency_key: str) -> list[PlannedCall]:
        params = self._params(action)
        name = params.registered_model or self.registered_name(model)
        alias = params.alias or self.config.alias
        bad = params.bad_version or f"<the version {alias} points at now>"
        good = params.to_version or f"<the highest READY version below {bad} not marked rolled_back>"
        ledger_tag = APPLIED_PREFIX + digest(idempotency_key)

        def call(operation: str, method: str, path: str, body: Any = None, undo: list[PlannedCall] | None = None) -> PlannedCall:
            return PlannedCall(
                target=self.name,
                adapter=self.kind,
                operation=operation,
                method=method,
                url=f"{self.base_url}{API}{path}",
                body=body,
                undo=undo or [],
            )

        def tag(version: str, key: str, value: str) -> dict[str, str]:
            return {"name": name, "version": version, "key": key, "value": value}

        undo = [
            call(
                f"move alias {alias} of {name} back to {bad}",
                "POST",
                "/registered-models/alias",
                {"name": name, "alias": alias, "version": bad},
            ),
            call(f"mark version {bad} of {name} restored", "POST", "/model-versions/set-tag", tag(bad, TAG_STATUS, "restored")),
        ]
        calls = [
            call(f"read {name}: its aliases, tags and Stanch's ledger", "GET", "/registered-models/get?" + urlencode({"name": name})),
            call(
                f"record the plan as pending under {ledger_tag}",
                "POST",
                "/registered-models/set-tag",
                {"name": name, "key": ledger_tag, "value": "<plan>"},
            ),
            call(
                f"tag version {bad} of {name} with the incident", "POST", "/model-versions/set-tag", tag(bad, TAG_INCIDENT, "<incident id>")
            ),
            call(f"mark version {bad} of {name} rolled back", "POST", "/model-versions/set-tag", tag(bad, TAG_STATUS, "rolled_back")),
            call(
                f"move alias {alias} of {name} to {good}",
                "POST",
                "/registered-models/alias",
                {"name": name, "alias": alias, "version": good},
                undo,
            ),
            call(
                f"append the move to {HISTORY_PREFIX}{alias}",
                "POST",
                "/registered-models/set-tag",
                {"name": name, "key": HISTORY_PREFIX + alias, "value": "<history>"},
            ),
            call(
                f"record the result as done under {ledger_tag}",
                "POST",
                "/registered-models/set-tag",
                {"name": name, "key": ledger_tag, "value": "<result>"},
            ),
        ]
        if params.to_version is None:
            calls.insert(
                1,
                call(
                    f"list the versions of {name} to find the previous good one",
                    "GET",
                    "/model-versions/search?" + urlencode({"filter": f"name='{name}'"}),
                ),
            )
        return calls

    # --- the rollback's decisions -------------------------------------------------------

    def _params(self, action: ActionSpec) -> RollbackAliasParams:
        if action.kind != "rollback_alias":
            raise TargetError(
                f"the MLflow target {self.name!r} knows no action kind {action.kind!r}; supported: rollback_alias", retryable=False
            )
        try:
            return RollbackAliasParams.model_validate(action.params)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors(include_url=False))
            raise TargetError(f"bad params for rollback_alias: {problems}", retryable=False) from exc

    async def _choose(
        self,
        registry: RegistrySession,
        name: str,
        alias: str,
        current: str | None,
        params: RollbackAliasParams,
        held: list[dict[str, Any]],
    ) -> tuple[str, str]:
        """(bad, good): the version to roll back from (served now, or the reported bad version a
        hold in force already rolled back from) and the one to move the alias to."""
        if current is None:
            raise TargetError(
                f"alias {alias!r} of registered model {name!r} points at no version; there is nothing to roll back", retryable=False
            )
        rolled_back_from = {h.get("from") for h in held} | {base_of(h) for h in held}
        if params.bad_version and params.bad_version != current and params.bad_version not in rolled_back_from:
            raise TargetError(
                f"alias {alias!r} of {name!r} points at version {current}, not the reported bad version {params.bad_version}; "
                f"Stanch rolls back only from the version users are served",
                retryable=False,
            )
        bad = params.bad_version or current
        versions = {v["version"]: v for v in await registry.versions(name)}
        if params.to_version is not None:
            chosen = versions.get(params.to_version)
            if chosen is None or chosen.get("status", "READY") != "READY" or params.to_version == bad:
                why = "does not exist" if chosen is None else "is the bad one" if params.to_version == bad else f"is {chosen.get('status')}"
                raise TargetError(f"cannot move alias {alias!r} of {name!r} to version {params.to_version}: it {why}", retryable=False)
            return bad, params.to_version
        candidates = [
            v
            for v in versions.values()
            if int(v["version"]) < int(bad) and v.get("status", "READY") == "READY" and _tags(v).get(TAG_STATUS) != "rolled_back"
        ]
        if not candidates:
            raise TargetError(f"registered model {name!r} has no good version below {bad} to move alias {alias!r} to", retryable=False)
        return bad, max(candidates, key=by_number)["version"]

    async def _record_move(
        self,
        registry: RegistrySession,
        name: str,
        alias: str,
        tags: Mapping[str, str],
        was: str,
        now: str,
        by: str,
        incident: str,
        ref: str,
    ) -> None:
        """Append one move to the alias history, once per ledger entry, newest last, trimmed to fit."""
        history = json_list(tags.get(HISTORY_PREFIX + alias))
        if any(entry.get("ref") == ref for entry in history):
            return
        history = [*history, {"at": _now(), "from": was, "to": now, "by": by, "incident": incident, "ref": ref}][
            -self.config.history_limit :
        ]
        while len(json.dumps(history)) > MAX_TAG_VALUE and len(history) > 1:
            history = history[1:]
        await registry.set_model_tag(name, HISTORY_PREFIX + alias, json.dumps(history))

    # --- talking to the registry ------------------------------------------------------

    def _session(self) -> RegistrySession:
        # A client per operation: activities may run on different event loops.
        http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=self.config.timeout_seconds,
            transport=self._transport,
            headers=self._auth(),
            verify=tls_verification(),
        )
        return RegistrySession(http, self.base_url)

    def _auth(self) -> dict[str, str]:
        config = self.config
        try:
            if config.token_env or config.token_file:
                return {"Authorization": f"Bearer {read_secret(config.token_env, config.token_file, self.base, self.env, 'token')}"}
            if config.username:
                password = read_secret(config.password_env, config.password_file, self.base, self.env, "password")
                pair = base64.b64encode(f"{config.username}:{password}".encode()).decode()
                return {"Authorization": f"Basic {pair}"}
        except SecretUnavailable as exc:
            raise TargetError(f"MLflow target {self.name!r}: {exc}", retryable=False) from None
        return {}


def _tags(version: Mapping[str, Any]) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in version.get("tags", [])}
