"""The protections a request passes through, in the order an incident responder expects.

An endpoint that is shut is shut before anything else runs; a killed feature refuses before the
model is called; blocked prompts never reach the model; blocked outputs never reach the user
(in a stream too: `OutputGuard` holds back what it has not checked yet); guardrails redact
last. Every refusal names the incident that put the protection in place. A detector that
cannot decide blocks: while an incident's protection is in place, unchecked is not safe.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers

from stanch.gateway.detection import block_detectors
from stanch.gateway.routing import ADMIN_TOKEN_HEADER, BARE_HEADER, GUARDRAILS_HEADER, VERSION_HEADER, Client
from stanch.gateway.store import GatewayStore

REDACTED = "[redacted]"


@dataclass(frozen=True)
class Refusal:
    status_code: int
    code: str
    message: str
    incident_id: str | None = None
    error_type: str = "invalid_request_error"
    detector: str | None = None  # the detector that found the content harmful (metrics count it)

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


class EndpointRateLimiter:
    """Sliding one-minute windows, one per rate-limit rule (and client, for a per-client rule).

    Kept in memory on purpose: a restarted gateway forgiving the last minute is harmless, and
    the rule itself (what containment put in place) is durable in SQLite.
    """

    def __init__(self) -> None:
        self._hits: dict[tuple[int, str], deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, rule_id: int, per_minute: int, *, client: str = "", record: bool = True) -> bool:
        now = time.monotonic()
        with self._lock:
            hits = self._hits.setdefault((rule_id, client), deque())
            while hits and now - hits[0] >= 60.0:
                hits.popleft()
            if len(hits) >= per_minute:
                return False
            if record:
                hits.append(now)
            return True


# -- what a request uses -------------------------------------------------------------------


def message_text(content: Any) -> str:
    """Text of an OpenAI message `content`: a plain string or a list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def prompt_text(body: dict[str, Any]) -> str:
    """Everything a request asks the model, every turn but the model's own: what prompt blocks read."""
    if "messages" in body:
        messages = body.get("messages") or []
        return "\n".join(message_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") != "assistant")
    for field in ("prompt", "input"):
        value = body.get(field)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return "\n".join(v for v in value if isinstance(v, str))
    return ""


def user_text(body: dict[str, Any]) -> str:
    """What the user typed: the echo reference for leak detectors. A system prompt or a tool result
    the model repeats is a leak, not an echo."""
    if "messages" in body:
        messages = body.get("messages") or []
        return "\n".join(message_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user")
    return prompt_text(body)


def untokenised_prompt(body: dict[str, Any]) -> bool:
    """A legacy completion whose prompt is token ids: no pattern or detector can read it."""
    prompt = body.get("prompt")
    return isinstance(prompt, list) and any(not isinstance(item, str) for item in prompt)


def features_requested(route: str, body: dict[str, Any], feature_header: str | None) -> set[str]:
    """Features a request uses: its route, tools, images, streaming, `x-feature` header values and
    the names of its tools. Names are normalised (lower case, `_` -> `-`), so a tool called
    `web_search` hits the `web-search` kill switch."""
    names: list[str] = [route, *(feature_header or "").split(",")]
    tools = body.get("tools") or body.get("functions") or []
    if tools:
        names.append("tools")
    for tool in tools:
        if isinstance(tool, dict):
            declared = tool.get("function")
            function: dict[Any, Any] = declared if isinstance(declared, dict) else tool
            names.append(str(function.get("name") or tool.get("type") or ""))
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in ("image_url", "input_image") for p in content):
            names.append("images")
    if body.get("stream"):
        names.append("streaming")
    return {n.strip().lower().replace("_", "-") for n in names if n and n.strip()}


# -- before the model ----------------------------------------------------------------------


def check_endpoint(
    store: GatewayStore, limiter: EndpointRateLimiter, model: str, route: str, client: Client, *, record: bool
) -> Refusal | None:
    # Strictest first, whatever order incidents added them in: a closed endpoint says
    # "closed", not "slow down", and refused requests never eat rate-limit budget.
    strictness = {"deny": 0, "allow_list": 1, "rate_limit": 2}
    for rule in sorted(store.endpoint_rules(model), key=lambda r: (strictness[r["mode"]], r["id"])):
        routes, clients, incident = json.loads(rule["routes"]), json.loads(rule["clients"]), rule["incident_id"]
        if routes and route not in routes:
            continue
        scope = f"route {route} of model {model!r}" if routes else f"the endpoint for model {model!r}"
        if rule["mode"] == "allow_list":
            if client.names & set(clients):
                continue
            who = "this client" if client.names else "requests without an x-client-id, x-tenant-id or API key"
            return Refusal(
                503,
                "endpoint_restricted",
                f"{scope} is restricted to an allow list by incident {incident}; {who} is not on it.",
                incident,
                "service_unavailable",
            )
        if clients and not client.names & set(clients):
            continue
        if rule["mode"] == "deny":
            return Refusal(
                503, "endpoint_restricted", f"{scope.capitalize()} is closed by incident {incident}.", incident, "service_unavailable"
            )
        window = (client.sticky or "") if rule["per_client"] else ""
        if not limiter.allow(rule["id"], rule["per_minute"], client=window, record=record):
            each = " per client" if rule["per_client"] else ""
            return Refusal(
                429,
                "rate_limited",
                f"{scope.capitalize()} is rate limited to {rule['per_minute']} requests per minute{each} by incident {incident}.",
                incident,
                "rate_limit_error",
            )
    return None


def check_features(store: GatewayStore, model: str, requested: set[str]) -> Refusal | None:
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


async def check_prompt(store: GatewayStore, model: str, text: str) -> Refusal | None:
    return await _check_blocks(store.blocks(model, "prompt"), "request", text)


async def _check_blocks(rows: list[Any], what: str, text: str, prompt: str = "") -> Refusal | None:
    for row in rows:
        if row["pattern"] and re.search(row["pattern"], text):
            return _blocked(what, row["incident_id"])
    names, detectors = block_detectors(rows)
    if not names:
        return None
    scan = await detectors.scan(names, text, prompt)
    incidents = {row["detector"]: row["incident_id"] for row in rows if row["detector"]}
    if scan.hits:
        return _blocked(what, incidents[scan.hits[0].detector], f" (detector {scan.hits[0].detector})", scan.hits[0].detector)
    if scan.undecided:
        undecided = scan.undecided[0]
        return _blocked(what, incidents[undecided.detector], f": detector {undecided.detector} could not decide, and unchecked is not safe")
    return None


def _blocked(what: str, incident: str, why: str = "", detector: str | None = None) -> Refusal:
    message = f"This {what} was blocked by a content rule of incident {incident}{why}."
    return Refusal(403, "content_blocked", message, incident, detector=detector)


# -- the hotfixes a request carries upstream ------------------------------------------------


def with_system_prompt(body: dict[str, Any], system_prompt: str | None) -> dict[str, Any]:
    """The body the upstream receives: a system-prompt hotfix goes first, ahead of the app's own
    messages — or, for a legacy completion, ahead of its prompt text."""
    if not system_prompt:
        return body
    if "messages" in body:
        return {**body, "messages": [{"role": "system", "content": system_prompt}, *body["messages"]]}
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return {**body, "prompt": f"{system_prompt}\n\n{prompt}"}
    if isinstance(prompt, list) and all(isinstance(item, str) for item in prompt):
        return {**body, "prompt": [f"{system_prompt}\n\n{item}" for item in prompt]}
    return body


# -- a candidate guardrail config, for the regression gate -----------------------------------

# A header is a few KB at most (the HTTP server refuses more): the gate keeps to the same
# bounds (stanch/gate/models.py), so a config it accepts is one the gateway takes.
MAX_CANDIDATE_GUARDRAILS = 50
MAX_GUARDRAIL_CHARS = 500
MAX_GUARDRAILS_HEADER_CHARS = 8000


def candidate_guardrails(headers: Headers, *, admin: bool, bare: bool) -> list[str] | Refusal | None:
    """The candidate guardrails a request carries in x-stanch-guardrails: None when it carries
    none; a refusal when it may not (no admin token: 401; not a bare version: 400) or a
    pattern is unusable (400 naming it). They replace every guardrail on a bare answer: the
    gate judges the candidate config, not the model's standing one."""
    value = headers.get(GUARDRAILS_HEADER)
    if value is None:
        return None
    if not admin:
        message = f"{GUARDRAILS_HEADER} needs the gateway's admin token in {ADMIN_TOKEN_HEADER}."
        return Refusal(401, "admin_token_required", message, None, "authentication_error")
    if not bare:
        message = f"{GUARDRAILS_HEADER} applies only to a version asked for bare: send it with {VERSION_HEADER} and {BARE_HEADER}."
        return Refusal(400, "invalid_request", message)
    try:
        return parse_guardrails(value)
    except ValueError as problem:
        return Refusal(400, "invalid_guardrails", f"{GUARDRAILS_HEADER}: {problem}")


def parse_guardrails(value: str) -> list[str]:
    """A JSON list of regex patterns, bounded, each compiled; ValueError names what is wrong."""
    if len(value) > MAX_GUARDRAILS_HEADER_CHARS:
        raise ValueError(f"is {len(value)} characters; at most {MAX_GUARDRAILS_HEADER_CHARS}")
    try:
        patterns = json.loads(value)
    except ValueError:
        raise ValueError("is not JSON: send a JSON list of regex patterns") from None
    if not isinstance(patterns, list) or not all(isinstance(pattern, str) for pattern in patterns):
        raise ValueError("must be a JSON list of regex patterns (strings)")
    if len(patterns) > MAX_CANDIDATE_GUARDRAILS:
        raise ValueError(f"holds {len(patterns)} patterns; at most {MAX_CANDIDATE_GUARDRAILS}")
    for number, pattern in enumerate(patterns, start=1):
        if not pattern or len(pattern) > MAX_GUARDRAIL_CHARS:
            raise ValueError(f"pattern {number} must be 1 to {MAX_GUARDRAIL_CHARS} characters (an empty one redacts everything)")
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"pattern {number} {pattern!r} does not compile: {error}") from None
    return patterns


# -- after the model -----------------------------------------------------------------------


class OutputGuard:
    """The output protections of one model, read once per request.

    `check` looks at a whole answer; a stream feeds `release` what has arrived and gets back
    only what is safe to send: everything but the last HOLD_BACK characters, which a pattern
    still arriving could turn out to belong to. With a service detector among the blocks the
    whole answer is held until it is checked (`holds_whole_answer`).
    """

    HOLD_BACK = 256

    def __init__(self, store: GatewayStore, *models: str) -> None:
        """The union of these models' output protections (the one asked for, and a fallback model)."""
        self.rows = [row for model in models for row in store.blocks(model, "output")]
        self.guardrails = [g["pattern"] for model in models for g in store.guardrails(model)]
        self.names, self.detectors = block_detectors(self.rows)
        self.holds_whole_answer = bool(self.names) and self.detectors.calls_a_service(self.names)

    @property
    def protects_output(self) -> bool:
        return bool(self.rows or self.guardrails)

    @classmethod
    def hotfixes_only(cls, store: GatewayStore, model: str) -> OutputGuard:
        """Guardrails (a hotfix) but no incident's blocks: a version asked for by name, to verify it."""
        guard = cls(store, model)
        guard.rows, guard.names, guard.holds_whole_answer = [], [], False
        return guard

    @classmethod
    def unguarded(cls, store: GatewayStore, model: str) -> OutputGuard:
        """No protection at all: a version asked for bare, for the regression gate."""
        guard = cls.hotfixes_only(store, model)
        guard.guardrails = []
        return guard

    def redact(self, text: str) -> str:
        for pattern in self.guardrails:
            text = re.sub(pattern, REDACTED, text)
        return text

    def check_now(self, text: str, prompt: str = "") -> Refusal | None:
        """Patterns and regex detectors only: cheap enough for every chunk of a stream."""
        for row in self.rows:
            if row["pattern"] and re.search(row["pattern"], text):
                return _blocked("response", row["incident_id"])
        if self.names:
            scan = self.detectors.scan_regex(self.names, text, prompt)
            if scan.hits:
                incident = next(r["incident_id"] for r in self.rows if r["detector"] == scan.hits[0].detector)
                return _blocked("response", incident, f" (detector {scan.hits[0].detector})", scan.hits[0].detector)
        return None

    async def check(self, text: str, prompt: str = "") -> Refusal | None:
        return self.check_now(text, prompt) or await _check_blocks(self.rows, "response", text, prompt)

    def releasable(self, received: str, sent: int) -> int:
        """How far into `received` a stream may have sent once the text up to here is checked."""
        if self.holds_whole_answer:
            return sent
        return max(sent, len(received) - self.HOLD_BACK)
