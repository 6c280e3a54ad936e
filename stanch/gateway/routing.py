"""Which upstream answers a request: the client it comes from, and the version it is served by.

A client is named by its `x-client-id`, else its `x-tenant-id`, else a fingerprint of its API key:
endpoint rules restrict by these names, and a canary's share is sticky per client (the same
client keeps seeing the same version, as users of a canary rollout expect).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from starlette.datastructures import Headers

from stanch.gateway.store import GatewayStore, resolve_served_version

# Answers a version in `x-stanch-version` (with the admin token when one is set): the version
# with its hotfixes but no incident protection, for verification. `x-stanch-probe` marks a
# probe: it sees what users see but spends no rate-limit budget. `x-stanch-bare` with a version:
# the version as its upstream answers, without the model's hotfixes (system prompt, guardrails)
# either, for the regression gate, which judges a candidate on its own. `x-stanch-guardrails`
# beside `x-stanch-bare`: a candidate guardrail config (a JSON list of patterns) the gateway
# applies to that bare answer, so the gate judges the answers users would get under it.
VERSION_HEADER = "x-stanch-version"
BARE_HEADER = "x-stanch-bare"
GUARDRAILS_HEADER = "x-stanch-guardrails"
PROBE_HEADER = "x-stanch-probe"
ADMIN_TOKEN_HEADER = "x-stanch-admin-token"


@dataclass(frozen=True)
class Client:
    names: frozenset[str]  # every name rules may use for it
    sticky: str | None  # what a canary bucket is derived from; None: no identity, a random bucket

    def bucket(self, model: str) -> int:
        if self.sticky is None:
            return random.randrange(100)
        return int(hashlib.sha256(f"{model}|{self.sticky}".encode()).hexdigest()[:8], 16) % 100


def key_fingerprint(api_key: str) -> str:
    return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


def client_of(headers: Headers, user: str | None = None) -> Client:
    names: list[str] = []
    for header in ("x-client-id", "x-tenant-id"):
        if value := headers.get(header):
            names.append(value)
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer ") and len(authorization) > 7:
        names.append(key_fingerprint(authorization[7:].strip()))
    sticky = names[0] if names else user
    return Client(names=frozenset(names), sticky=sticky)


@dataclass(frozen=True)
class Route:
    model: str  # the model whose upstream answers (the fallback model when one is active)
    version: str  # what `x-model-version` says: `<model>@<version>` when a fallback model answers
    base_url: str
    upstream_model: str
    api_key: str | None  # a reference
    timeout_seconds: float


def route(store: GatewayStore, model: str, bucket: int | None, *, version: str | None = None, hops: int = 0) -> Route | None:
    """The upstream for a request to `model`: the given version, else what its state serves now."""
    row = store.model_row(model)
    if row is None:
        return None
    versions = store.versions(model)
    if version is None and row["fallback_active"] and row["fallback_model"] and hops == 0:
        other = route(store, row["fallback_model"], bucket, hops=1)
        if other is None:
            return None
        return Route(
            other.model, f"{other.model}@{other.version}", other.base_url, other.upstream_model, other.api_key, other.timeout_seconds
        )
    chosen = version if version is not None else resolve_served_version(row, versions, bucket)
    if chosen is None:
        return None
    chosen_row = next((v for v in versions if v["version"] == chosen), None)
    if chosen_row is None:
        return None
    return Route(model, chosen, chosen_row["base_url"], chosen_row["upstream_model"], chosen_row["api_key"], chosen_row["timeout_seconds"])
