"""Which runbook handles a signal, which incident it belongs to, and what it acts on.

The incident id is derived from the runbook's dedup key, so repeats of the same alert land on
the same workflow id (signal-with-start joins the open incident) while a different model or
alert opens a different one. Everything here is a pure function of the signal and catalog.
A signal whose model could climb a path or break out of a quoted string is refused (UnsafeSignal).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

from pydantic import BaseModel

from stanch.models.actions import TargetRef
from stanch.models.signals import Signal
from stanch.runbooks.conditions import condition_holds, signal_category, signal_model
from stanch.runbooks.loader import LoadedRunbook, RunbookCatalog

UNKNOWN = "unknown"
MAX_INCIDENT_ID = 80
_HASH_CHARS = 10
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


_QUOTES = "\"'`"
# Control characters, and the line and paragraph separators some readers split lines on.
_CONTROL_CATEGORIES = ("Cc", "Zl", "Zp")


class UnsafeSignal(ValueError):
    """A signal whose model Stanch will not act on (see `unsafe_model`); the API answers 422
    naming the field. The reason never repeats the value: it came from a sender, and goes back to one."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"the signal's model {reason}: a model names files and fills queries and requests, so it may not "
            "start with '/', hold a backslash, an empty, '.' or '..' path segment, a control character or a quote"
        )


class Route(BaseModel):
    runbook: LoadedRunbook
    incident_id: str
    dedup_key: str
    target: TargetRef


class _Defaulting(dict[str, Any]):
    """A format_map context where anything absent renders as "unknown" instead of raising."""

    def __missing__(self, key: str) -> str:
        return UNKNOWN


def slug(text: str) -> str:
    """Lowercase, runs of anything but [a-z0-9] become one dash; "unknown" if nothing is left."""
    return _NOT_SLUG.sub("-", text.lower()).strip("-") or UNKNOWN


def signal_version(signal: Signal) -> str | None:
    return signal.model_version or signal.labels.get("model_version") or signal.labels.get("version")


def template_context(signal: Signal, runbook_name: str) -> _Defaulting:
    """What `dedup_key` and `target.model` templates may refer to (see the Runbook schema)."""
    values = {
        "runbook": runbook_name,
        "model": signal_model(signal),
        "version": signal_version(signal),
        "category": signal_category(signal),
        "sender": signal.sender,
        "source": signal.source.value,
        "title": signal.title,
    }
    context = _Defaulting({key: value for key, value in values.items() if value not in (None, "")})
    context["labels"] = _Defaulting(signal.labels)
    return context


def render_template(template: str, signal: Signal, runbook_name: str) -> str:
    return template.format_map(template_context(signal, runbook_name))


def unsafe_model(model: str) -> str | None:
    """Why a model from a signal may not become an incident's target, or None. The reason never
    repeats the value: it came from a sender, and goes back to one."""
    if "\\" in model:
        return "contains a backslash"
    # `org/name` (as vLLM and Hugging Face name models) is fine: files get a safe name of their own.
    if model.startswith("/") or any(segment in ("", ".", "..") for segment in model.split("/")):
        return "is an absolute path or climbs one"
    if any(unicodedata.category(char) in _CONTROL_CATEGORIES for char in model):
        return "contains a control character"
    if any(char in _QUOTES for char in model):
        return "contains a quote"
    return None


def incident_id_for(runbook_name: str, model: str, dedup_key: str) -> str:
    """`<runbook>-<model slug>-<10 hex of sha256(dedup key)>`: readable, stable, <= 80 chars."""
    digest = hashlib.sha256(dedup_key.encode()).hexdigest()[:_HASH_CHARS]
    prefix = f"{slug(runbook_name)}-{slug(model)}"[: MAX_INCIDENT_ID - _HASH_CHARS - 1].rstrip("-")
    return f"{prefix}-{digest}"


def matching_runbook(signal: Signal, catalog: RunbookCatalog) -> LoadedRunbook:
    """The matching runbook with the highest priority (ties broken by name), else `triage`."""
    candidates = [
        loaded for loaded in catalog.all() if any(condition_holds(condition, signals=[signal]) for condition in loaded.runbook.match.any)
    ]
    if not candidates:
        return catalog.fallback
    # catalog.all() is sorted by name and min() keeps the first of equals: name order on ties.
    return min(candidates, key=lambda loaded: -loaded.runbook.match.priority)


def route_signal(signal: Signal, catalog: RunbookCatalog) -> Route:
    loaded = matching_runbook(signal, catalog)
    runbook = loaded.runbook
    dedup_key = render_template(runbook.dedup_key, signal, runbook.name)
    target = TargetRef(
        adapter=runbook.target.adapter,
        model=render_template(runbook.target.model, signal, runbook.name),
        version=signal_version(signal),
    )
    # The rendered model, not the label: a runbook may build its target's model from any label.
    if (reason := unsafe_model(target.model)) is not None:
        raise UnsafeSignal(reason)
    return Route(
        runbook=loaded,
        incident_id=incident_id_for(runbook.name, target.model, dedup_key),
        dedup_key=dedup_key,
        target=target,
    )
