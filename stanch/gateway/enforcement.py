"""The path of one chat completion through the gateway's protections.

Order matters and mirrors what an incident responder expects: an endpoint that is shut is shut
before anything else runs; a killed feature refuses before the model is called; blocked
prompts never reach the model; blocked outputs never reach the user; guardrails redact last.
Every refusal names the incident that put the protection in place.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from stanch.gateway.demo_models import generate, last_user_message
from stanch.gateway.store import GatewayStore

REDACTED = "[redacted]"


@dataclass(frozen=True)
class Refusal:
    status_code: int
    code: str
    message: str
    incident_id: str | None = None
    error_type: str = "invalid_request_error"

    def body(self) -> dict[str, Any]:
        """The OpenAI error shape, plus the incident that caused the refusal."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "code": self.code,
                "param": None,
                "incident": self.incident_id,
            }
        }


@dataclass(frozen=True)
class Completion:
    output: str
    version: str


class EndpointRateLimiter:
    """Sliding one-minute windows, one per rate-limit rule, shared by all clients of the model.

    Kept in memory on purpose: a restarted gateway forgiving the last minute is harmless, and
    the rule itself (what containment put in place) is durable in SQLite.
    """

    def __init__(self) -> None:
        self._hits: dict[int, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, rule_id: int, per_minute: int, *, record: bool = True) -> bool:
        now = time.monotonic()
        with self._lock:
            hits = self._hits.setdefault(rule_id, deque())
            while hits and now - hits[0] >= 60.0:
                hits.popleft()
            if len(hits) >= per_minute:
                return False
            if record:
                hits.append(now)
            return True


def features_requested(tools: list[Any] | None, feature_header: str | None) -> set[str]:
    """Feature names a request uses: `x-feature` header values plus the names of its tools.

    Names are normalised (lower case, `_` -> `-`) so a tool called `web_search` hits the
    `web-search` kill switch.
    """
    names: list[str] = [part for part in (feature_header or "").split(",")]
    for tool in tools or []:
        if isinstance(tool, str):
            names.append(tool)
        elif isinstance(tool, dict):
            declared = tool.get("function")
            function: dict[Any, Any] = declared if isinstance(declared, dict) else {}
            names.append(function.get("name") or tool.get("name") or tool.get("type") or "")
    return {n.strip().lower().replace("_", "-") for n in names if n and n.strip()}


def _check_endpoint(
    store: GatewayStore, limiter: EndpointRateLimiter, model: str, client_id: str | None, *, record: bool
) -> Refusal | None:
    # Strictest first, whatever order incidents added them in: a closed endpoint says
    # "closed", not "slow down", and refused requests never eat rate-limit budget.
    strictness = {"deny": 0, "allow_list": 1, "rate_limit": 2}
    for rule in sorted(store.endpoint_rules(model), key=lambda r: (strictness[r["mode"]], r["id"])):
        incident = rule["incident_id"]
        if rule["mode"] == "deny":
            return Refusal(
                503,
                "endpoint_restricted",
                f"The endpoint for model {model!r} is closed by incident {incident}.",
                incident,
                "service_unavailable",
            )
        if rule["mode"] == "allow_list" and client_id not in json.loads(rule["clients"]):
            who = f"client {client_id!r}" if client_id else "requests without an x-client-id header"
            return Refusal(
                503,
                "endpoint_restricted",
                f"The endpoint for model {model!r} is restricted to an allow list by incident {incident}; {who} is not on it.",
                incident,
                "service_unavailable",
            )
        if rule["mode"] == "rate_limit" and not limiter.allow(rule["id"], rule["per_minute"], record=record):
            return Refusal(
                429,
                "rate_limited",
                f"Model {model!r} is rate limited to {rule['per_minute']} requests per minute by incident {incident}.",
                incident,
                "rate_limit_error",
            )
    return None


def _check_features(store: GatewayStore, model: str, requested: set[str]) -> Refusal | None:
    for feature in store.features(model):
        if feature["name"] in requested and not feature["enabled"]:
            incident = feature["incident_id"]
            return Refusal(
                503,
                "feature_disabled",
                f"Feature {feature['name']!r} of model {model!r} is disabled by incident {incident}.",
                incident,
                "service_unavailable",
            )
    return None


def _check_patterns(store: GatewayStore, model: str, direction: str, text: str) -> Refusal | None:
    for block in store.blocks(model, direction):
        if re.search(block["pattern"], text):
            what = "request" if direction == "prompt" else "response"
            incident = block["incident_id"]
            return Refusal(403, "content_blocked", f"This {what} was blocked by a content rule of incident {incident}.", incident)
    return None


def _redact(store: GatewayStore, model: str, text: str) -> str:
    for rule in store.guardrails(model):
        text = re.sub(rule["pattern"], REDACTED, text)
    return text


def _answer(store: GatewayStore, model: str, version: str, messages: list[dict[str, Any]]) -> str:
    row = store.version_row(model, version)
    model_row = store.model_row(model)
    assert row is not None and model_row is not None  # callers resolved both
    return generate(row["behaviour"], messages, model_row["system_prompt"])


def complete(
    store: GatewayStore,
    limiter: EndpointRateLimiter,
    model: str,
    messages: list[dict[str, Any]],
    *,
    client_id: str | None = None,
    features: set[str] | None = None,
    count_towards_rate_limit: bool = True,
) -> Completion | Refusal:
    """Exactly what a user of `model` gets now, every protection applied."""
    if store.model_row(model) is None:
        return Refusal(404, "model_not_found", f"The model {model!r} does not exist; known models: {', '.join(store.model_names())}.")
    refusal = _check_endpoint(store, limiter, model, client_id, record=count_towards_rate_limit) or _check_features(
        store, model, features or set()
    )
    if refusal:
        return refusal
    refusal = _check_patterns(store, model, "prompt", last_user_message(messages))
    if refusal:
        return refusal
    version = store.served_version(model)
    if version is None:
        return Refusal(503, "model_unavailable", f"Every version of model {model!r} is disabled.", None, "service_unavailable")
    output = _answer(store, model, version, messages)
    refusal = _check_patterns(store, model, "output", output)
    if refusal:
        return refusal
    return Completion(_redact(store, model, output), version)


def complete_unprotected(store: GatewayStore, model: str, version: str, messages: list[dict[str, Any]]) -> Completion | Refusal:
    """A given version's answer with its hotfixes (system prompt, guardrails) but no incident
    containment and no pins: how verification tests the patched model while users stay protected."""
    model_row = store.model_row(model)
    if model_row is None:
        return Refusal(404, "model_not_found", f"The model {model!r} does not exist; known models: {', '.join(store.model_names())}.")
    if version == "release":
        version = model_row["release_version"]
    if store.version_row(model, version) is None:
        known = ", ".join(v["version"] for v in store.versions(model))
        return Refusal(404, "version_not_found", f"Model {model!r} has no version {version!r}; known versions: {known}.")
    return Completion(_redact(store, model, _answer(store, model, version, messages)), version)
