"""OpenFeature kill switches as a Stanch target: edit a flagd flag-definition file.

flagd and OpenFeature's in-process and FILE providers watch a JSON file in flagd's schema
(https://flagd.dev/schema/v0/flags.json); changing it is how a feature is switched off
everywhere at once. This adapter edits that file and nothing else.

Action kinds (runbook steps whose target is a `flagd` entry of targets.yaml):

`disable_feature` — the kill switch.
    params: `flag` (or `feature`, as gateway runbooks say): the flag key;
            `variant`: what to serve while disabled (default `off` if the flag has it,
            else its one variant whose value is `false`).
    does:   `defaultVariant` = that variant, `targeting` = {} so that no rule can still
            serve the feature, `state` = ENABLED, flag metadata `stanchIncident` = the
            incident id (clients see it in the evaluation's flag metadata).
    Why not `state: DISABLED`: flagd evaluates a disabled flag to the caller's code
    default (reason DISABLED), and a kill switch's code default is usually "on".
`enable_feature` — switch a feature on (for example a safer path, or after a fix).
    params: `flag`; `variant` (default `on`, else the one variant whose value is `true`).
    does:   `defaultVariant` = that variant and `state` = ENABLED; targeting is left alone.
undo (both kinds): the flag's `state`, `defaultVariant`, `targeting` and `metadata` go back
exactly as they were before the first Stanch action that still holds the flag.

Several incidents on one flag: each action is a hold on the flag, named by its holder (the
incident occurrence) in the ledger, and the flag serves the newest hold's definition. An undo
releases its own hold only: while a later hold is in force (applied, or planned and not yet
written: its retry will write it), the undo hands its definition-from-before to the next later
hold and leaves the flag as it is; the newest hold's undo puts back what the hold before it
left. So one incident's restore never lifts another's kill switch, and the last restore puts
back the definition from before the first. If someone edited the flag since, undo refuses
rather than clobber the edit.

Writing: every read-modify-write holds an fcntl lock (`<file>.stanch-lock`), so two workers
never lose each other's edits; the file is replaced atomically (temp file in the same folder,
fsync, `os.replace`, fsync of the folder) keeping its permissions, its indentation, its
top-level keys (`$schema`, `$evaluators`, `metadata`) and every other flag as they were.
The idempotency ledger is a sidecar JSON file (`<file>.stanch-ledger.json`): apply records
its plan as `pending` before it edits the flag and `done` after, so a retry after a crash
finishes the same edit, and a repeated key returns the first result with `replayed=True`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from stanch.models.actions import ActionSpec, AppliedAction
from stanch.targets.base import ApplyResult, PlannedCall, ServesNoModel, TargetError

KINDS = ("disable_feature", "enable_feature")
FIELDS = ("state", "defaultVariant", "targeting", "metadata")  # what an action may change, and undo puts back
INCIDENT_METADATA = "stanchIncident"


class FeatureParams(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in a runbook must fail loudly

    flag: str = Field(min_length=1, validation_alias=AliasChoices("flag", "feature"))
    variant: str | None = Field(None, min_length=1)


class FlagdTarget(ServesNoModel):
    """Kill switches in one flagd flag file; see the module docstring."""

    kind: ClassVar[str] = "flagd"
    label: ClassVar[str] = "flagd flag file"

    class Config(BaseModel):
        """The keys under `flagd:` in targets.yaml."""

        model_config = ConfigDict(extra="forbid")

        file: Path = Field(description="the flag-definition JSON file flagd or the OpenFeature providers read")
        ledger: Path | None = Field(None, description="Stanch's idempotency ledger; default: <file>.stanch-ledger.json")
        flags: dict[str, list[str]] = Field(
            default_factory=dict, description="model -> the flags its evidence shows; default: flags named after the model"
        )

        @field_validator("file")
        @classmethod
        def _json_only(cls, file: Path) -> Path:
            if file.suffix.lower() in (".yaml", ".yml"):
                raise ValueError(f"{file} is YAML: Stanch edits JSON flag files only, since a rewrite would drop YAML comments")
            return file

    def __init__(self, config: Config, *, name: str = "flagd", base: Path = Path(".")) -> None:
        self.config = config
        self.name = name
        self.path = (config.file if config.file.is_absolute() else base / config.file).expanduser()
        ledger = config.ledger or self.path.with_name(self.path.name + ".stanch-ledger.json")
        self.ledger_path = ledger if ledger.is_absolute() else base / ledger
        self.lock_path = self.path.with_name(self.path.name + ".stanch-lock")

    @classmethod
    def from_config(cls, config: Config, *, name: str, base: Path, env: Mapping[str, str]) -> Self:
        return cls(config, name=name, base=base)

    # --- the Target protocol ------------------------------------------------------------

    async def state(self, model: str) -> dict[str, Any]:
        """The definitions of the model's flags as they are now, and what Stanch did to them."""
        return await asyncio.to_thread(self._state, model)

    async def apply(self, model: str, action: ActionSpec, idempotency_key: str, incident_id: str, holder: str | None = None) -> ApplyResult:
        params = self._params(action)
        return await asyncio.to_thread(self._apply, action.kind, params, idempotency_key, incident_id, holder or incident_id)

    async def undo(self, applied: AppliedAction, undo_key: str) -> ApplyResult:
        return await asyncio.to_thread(self._undo, applied, undo_key)

    def plan(self, model: str, action: ActionSpec, idempotency_key: str) -> list[PlannedCall]:
        params = self._params(action)
        if action.kind == "disable_feature":
            variant = params.variant or "off (or the flag's one false variant)"
            change = {"state": "ENABLED", "defaultVariant": variant, "targeting": {}, "metadata": {INCIDENT_METADATA: "<incident id>"}}
            operation = f"kill switch: flag {params.flag} serves {variant} to everyone (targeting cleared)"
        else:
            variant = params.variant or "on (or the flag's one true variant)"
            change = {"state": "ENABLED", "defaultVariant": variant, "metadata": {INCIDENT_METADATA: "<incident id>"}}
            operation = f"switch on: flag {params.flag} serves {variant} by default"
        undo = PlannedCall(
            target=self.name,
            adapter=self.kind,
            url=self.path.as_uri(),
            body={"flag": params.flag, "restore": list(FIELDS)},
            operation=f"put flag {params.flag}'s state, defaultVariant, targeting and metadata back as they were",
        )
        call = PlannedCall(
            target=self.name,
            adapter=self.kind,
            operation=f"{operation}, in {self.path}",
            url=self.path.as_uri(),
            body={"flag": params.flag, "set": change, "ledger": str(self.ledger_path)},
            undo=[undo],
        )
        return [call]

    # --- the edits, each under the lock -------------------------------------------------

    def _params(self, action: ActionSpec) -> FeatureParams:
        if action.kind not in KINDS:
            raise TargetError(
                f"the flagd target {self.name!r} knows no action kind {action.kind!r}; supported: {', '.join(KINDS)}", retryable=False
            )
        try:
            return FeatureParams.model_validate(action.params)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors(include_url=False))
            raise TargetError(f"bad params for {action.kind}: {problems}", retryable=False) from exc

    def _state(self, model: str) -> dict[str, Any]:
        with self._locked():
            raw, document = self._read()
            ledger = self._read_ledger()
        flags = document.get("flags", {})
        wanted = self.config.flags.get(model) or [
            key for key in flags if key == model or key.startswith(tuple(model + sep for sep in "-_.:/"))
        ]
        return {
            "adapter": self.kind,
            "target": self.name,
            "file": str(self.path),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "flags": {key: flags[key] for key in wanted if key in flags},
            "missing_flags": [key for key in wanted if key not in flags],
            "flag_set_metadata": document.get("metadata", {}),
            "stanch_ledger": [entry for entry in ledger.values() if entry.get("flag") in wanted],
        }

    def _apply(self, kind: str, params: FeatureParams, key: str, incident_id: str, holder: str) -> ApplyResult:
        with self._locked():
            raw, document = self._read()
            ledger = self._read_ledger()
            entry = ledger.get(key)
            if entry and entry["phase"] in ("done", "undone"):
                return ApplyResult(result=entry["result"], inverse=entry["inverse"], replayed=True)
            flag = self._flag(document, params.flag)
            if entry is None:  # first time: decide the edit and write it down before making it
                before = {name: flag[name] for name in FIELDS if name in flag}
                after = self._desired(kind, params, flag, incident_id)
                seq = 1 + max((e.get("seq", 0) for e in ledger.values()), default=0)
                entry = {
                    "key": key,
                    "incident": incident_id,
                    "holder": holder,
                    "kind": kind,
                    "flag": params.flag,
                    "seq": seq,
                    "phase": "pending",
                    "before": before,
                    "after": after,
                    "applied_at": datetime.now(UTC).isoformat(timespec="seconds"),
                }
                ledger[key] = entry
                self._write_ledger(ledger)
            _replace_fields(flag, entry["after"])
            self._write(raw, document)
            result = {
                "flag": params.flag,
                "default_variant": entry["after"]["defaultVariant"],
                "state": entry["after"]["state"],
                "targeting_cleared": kind == "disable_feature",
                "was": entry["before"],
                "file": str(self.path),
                "holder": entry.get("holder", incident_id),
            }
            inverse = {"op": "restore_flag", "flag": params.flag, "before": entry["before"], "after": entry["after"]}
            entry.update(phase="done", result=result, inverse=inverse)
            self._write_ledger(ledger)
        return ApplyResult(result=result, inverse=inverse)

    def _undo(self, applied: AppliedAction, undo_key: str) -> ApplyResult:
        inverse = applied.inverse or {}
        if inverse.get("op") != "restore_flag":
            raise TargetError(f"action {applied.idempotency_key!r} ({applied.kind}) recorded no flag edit to undo", retryable=False)
        with self._locked():
            raw, document = self._read()
            ledger = self._read_ledger()
            entry = ledger.get(applied.idempotency_key) or {"key": applied.idempotency_key, "flag": inverse["flag"], "seq": 0, **inverse}
            if entry.get("phase") == "undone":
                return ApplyResult(result=entry["undo_result"], replayed=True)
            name, before, after = entry["flag"], entry["before"], entry["after"]
            # A pending hold counts: its plan (with `before` = this hold's change) is written down
            # and a retry writes the flag, so releasing past it would leave its `before` stale.
            later = sorted(
                (
                    e
                    for e in ledger.values()
                    if e.get("flag") == name and e.get("phase") in ("pending", "done") and e.get("seq", 0) > entry["seq"]
                ),
                key=lambda e: e["seq"],
            )
            if later:  # a later action still holds the flag: it inherits the original definition
                later[0]["before"] = before
                if "inverse" in later[0]:
                    later[0]["inverse"] = {**later[0]["inverse"], "before": before}
                result = {
                    "flag": name,
                    "left_in_place": True,
                    "held_by": later[0]["key"],
                    "incident": later[0].get("incident"),
                    "holder": later[0].get("holder", later[0].get("incident")),
                }
            else:
                flag = self._flag(document, name)
                now = {field: flag[field] for field in FIELDS if field in flag}
                if now != after and now != before:
                    changed = sorted(f for f in FIELDS if now.get(f) != after.get(f))
                    raise TargetError(
                        f"flag {name!r} in {self.path} was edited since Stanch changed it ({', '.join(changed)} differ); "
                        f"Stanch leaves it as it is (put it back by hand or skip this undo)",
                        retryable=False,
                    )
                _replace_fields(flag, before)
                self._write(raw, document)
                result = {"flag": name, "restored": before, "file": str(self.path)}
            entry.update(phase="undone", undo_key=undo_key, undo_result=result, undone_at=datetime.now(UTC).isoformat(timespec="seconds"))
            ledger[entry["key"]] = entry
            self._write_ledger(ledger)
        return ApplyResult(result=result)

    def _desired(self, kind: str, params: FeatureParams, flag: dict[str, Any], incident_id: str) -> dict[str, Any]:
        variants = flag.get("variants") or {}
        wanted = params.variant or _default_variant(variants, off=kind == "disable_feature")
        if wanted is None or wanted not in variants:
            named, value = ("off", "false") if kind == "disable_feature" else ("on", "true")
            problem = f"no variant {wanted!r}" if wanted else f"no variant {named!r} and not exactly one {value} variant"
            raise TargetError(
                f"flag {params.flag!r} in {self.path} has {problem}; its variants are {sorted(variants)}: name one with `variant`",
                retryable=False,
            )
        after = {name: flag[name] for name in FIELDS if name in flag}
        after.update(state="ENABLED", defaultVariant=wanted, metadata={**(flag.get("metadata") or {}), INCIDENT_METADATA: incident_id})
        if kind == "disable_feature":
            after["targeting"] = {}
        return after

    # --- files --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            handle = open(self.lock_path, "a+")
        except OSError as exc:
            raise TargetError(f"cannot open the lock file {self.lock_path}: {exc.strerror}", retryable=False) from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read(self) -> tuple[bytes, dict[str, Any]]:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise TargetError(f"cannot read the flag file {self.path}: {exc.strerror}", retryable=False) from None
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise TargetError(f"the flag file {self.path} is not valid JSON: {exc}", retryable=False) from None
        if not isinstance(document, dict) or not isinstance(document.get("flags"), dict):
            raise TargetError(f"the flag file {self.path} has no `flags` object; is it a flagd flag-definition file?", retryable=False)
        return raw, document

    def _flag(self, document: dict[str, Any], key: str) -> dict[str, Any]:
        flag = document["flags"].get(key)
        if not isinstance(flag, dict):
            known = ", ".join(sorted(document["flags"])) or "none"
            raise TargetError(f"the flag file {self.path} has no flag {key!r}; its flags: {known}", retryable=False)
        return flag

    def _write(self, raw: bytes, document: dict[str, Any]) -> None:
        text = json.dumps(document, indent=_indent_of(raw), ensure_ascii=False) + ("\n" if raw.endswith(b"\n") else "")
        write_atomically(self.path, text.encode())

    def _read_ledger(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self.ledger_path.read_bytes()).get("entries", {})
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            raise TargetError(f"Stanch's ledger {self.ledger_path} is unreadable ({exc}); fix or move it aside", retryable=False) from None

    def _write_ledger(self, entries: dict[str, dict[str, Any]]) -> None:
        body = {"about": f"Stanch's record of its edits to {self.path.name}; do not edit", "entries": entries}
        write_atomically(self.ledger_path, (json.dumps(body, indent=2) + "\n").encode())


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so readers see the old file or the new one, never half of one."""
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)


def _replace_fields(flag: dict[str, Any], fields: Mapping[str, Any]) -> None:
    """Set the action fields to exactly `fields`: present ones take their value, absent ones go."""
    for name in FIELDS:
        if name in fields:
            flag[name] = fields[name]
        else:
            flag.pop(name, None)


def _default_variant(variants: Mapping[str, Any], *, off: bool) -> str | None:
    named = "off" if off else "on"
    if named in variants:
        return named
    matching = [name for name, value in variants.items() if value is (not off)]
    return matching[0] if len(matching) == 1 else None


def _indent_of(raw: bytes) -> int | None:
    """The file's indentation, so a rewrite keeps its look (compact files stay compact)."""
    for line in raw.decode("utf-8", "replace").splitlines()[1:]:
        stripped = line.lstrip(" ")
        if stripped:
            return (len(line) - len(stripped)) or None
    return None
