"""What Stanch keeps in an MLflow registered model's tags: its idempotency ledger (one record per
applied or undone key) and the holds on an alias those records make.

Each applied record (`stanch.applied.<sha256 of key>`) is a hold on its alias while no undone
record (`stanch.undone.<…>`) names the same key: `holder`, `from` (the version rolled back
from), `to` (the version it serves), `base` (what the alias served before the first hold in
force when it was taken) and `seq` (the order of taking: the newest hold is served). One tag per
record, so two workers never overwrite each other's holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

TAG_INCIDENT, TAG_STATUS = "stanch.incident", "stanch.status"
HISTORY_PREFIX, APPLIED_PREFIX, UNDONE_PREFIX = "stanch.alias_history.", "stanch.applied.", "stanch.undone."
MAX_TAG_VALUE = 5000  # what MLflow's SQL stores hold in a registered-model tag value


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def holds_on(tags: Mapping[str, str], alias: str, *, released: bool = False) -> list[dict[str, Any]]:
    """The rollbacks holding `alias` (planned or done, not undone), oldest first; with
    `released`, the undone ones too (to number the next)."""
    records = [json_dict(value) for key, value in tags.items() if key.startswith(APPLIED_PREFIX)]
    holds = [
        r
        for r in records
        if r.get("alias") == alias
        and r.get("phase") in ("pending", "done")
        and r.get("key")
        and (released or UNDONE_PREFIX + digest(r["key"]) not in tags)
    ]
    return sorted(holds, key=lambda r: (int(r.get("seq", 0)), r["key"]))


def newest(holds: list[dict[str, Any]]) -> dict[str, Any]:
    return max(holds, key=lambda r: int(r.get("seq", 0)))


def base_of(hold: Mapping[str, Any]) -> Any:
    """What the alias pointed at before the first hold in force when `hold` was taken (a record
    from before holders has no base: the version it rolled back from)."""
    return hold.get("base") or hold.get("from")


def json_list(value: str | None) -> list[dict[str, Any]]:
    return _loaded(value, list)


def json_dict(value: str | None) -> dict[str, Any]:
    return _loaded(value, dict)


def _loaded(value: str | None, kind: type) -> Any:
    """A tag's JSON, or an empty one when the tag is absent or was edited into something else."""
    try:
        loaded = json.loads(value) if value else kind()
    except ValueError:
        return kind()
    return loaded if isinstance(loaded, kind) else kind()
