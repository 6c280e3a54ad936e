"""Trusted decisions: the API vouches for who decided, and the workflow checks it.

Every decision the API passes to an incident carries an assertion: an HMAC-SHA256 over the
decision, made with a key the API and the worker share. The key itself never enters workflow
history; only the assertion and the key's id do. A decision without a valid assertion — a raw
signal or update from the Temporal UI or CLI, say — is recorded in the timeline but never
counts toward a role-gated approval.

Keys: `STANCH_DECISION_KEYS` ("kid:base64key,kid2:base64key", the first signs) or, on one
machine, the file `STANCH_HOME/decision-keys` that whichever process starts first creates.
Keep retired keys listed (after the first): replaying an old history checks its assertions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

KEYS_FILE = "decision-keys"

# The keys this process trusts, id -> key. Filled once at start-up (worker, API, replayer);
# workflow code reads it through the sandbox's pass-through, like any constant configuration.
_trusted: dict[str, bytes] = {}
_signing_key_id: str | None = None


class DecisionKeyError(Exception):
    """The decision keys are missing or malformed; the message says where they were looked for."""


def parse_keys(text: str) -> list[tuple[str, bytes]]:
    keys = []
    for item in filter(None, (part.strip() for part in text.replace("\n", ",").split(","))):
        kid, sep, encoded = item.partition(":")
        if not sep or not kid:
            raise DecisionKeyError(f"a decision key must look like 'kid:base64key'; got an entry starting {item[:6]!r}")
        try:
            key = base64.b64decode(encoded, validate=True)
        except ValueError as err:
            raise DecisionKeyError(f"decision key {kid!r} is not valid base64") from err
        if len(key) < 32:
            raise DecisionKeyError(f"decision key {kid!r} is {len(key)} bytes; use at least 32")
        keys.append((kid, key))
    if not keys:
        raise DecisionKeyError("no decision key given")
    return keys


def load_keys(home: Path, env: Mapping[str, str] | None = None) -> list[tuple[str, bytes]]:
    """From STANCH_DECISION_KEYS, else the home folder's key file (created here if absent)."""
    env = os.environ if env is None else env
    if env.get("STANCH_DECISION_KEYS"):
        return parse_keys(env["STANCH_DECISION_KEYS"])
    path = home / KEYS_FILE
    home.mkdir(parents=True, exist_ok=True)
    fresh = f"k1:{base64.b64encode(secrets.token_bytes(32)).decode()}\n"
    try:
        # O_EXCL: when the API and the worker start together, exactly one writes the key.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(fresh)
    except FileExistsError:
        pass
    for _ in range(100):  # the other process may be between create and write
        text = path.read_text()
        if text.strip():
            return parse_keys(text)
        time.sleep(0.05)
    raise DecisionKeyError(f"{path} is empty")


def trust(keys: list[tuple[str, bytes]]) -> None:
    """Make these keys the ones this process signs (the first) and verifies with."""
    global _signing_key_id
    _trusted.clear()
    _trusted.update(keys)
    _signing_key_id = keys[0][0]


def trust_none() -> None:
    """Verify nothing and sign nothing: an audit without the installation's keys."""
    global _signing_key_id
    _trusted.clear()
    _signing_key_id = None


def _message(occurrence: str, nonce: str, decision: BaseModel) -> bytes:
    """What is vouched for: this occurrence of the incident (an id repeats after it closes),
    a one-time nonce (the update id), the kind of decision and every field of it — so an
    assertion copied out of one history counts nowhere else."""
    fields = {
        "occurrence": occurrence,
        "nonce": nonce,
        "kind": type(decision).__name__,
        "decision": decision.model_dump(mode="json", exclude={"assertion"}),
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def sign(occurrence: str, nonce: str, decision: BaseModel) -> str:
    if _signing_key_id is None:
        raise DecisionKeyError("no decision key loaded: call trust(load_keys(...)) at start-up")
    digest = hmac.new(_trusted[_signing_key_id], _message(occurrence, nonce, decision), hashlib.sha256).hexdigest()
    return f"{_signing_key_id}:{digest}"


def verified(occurrence: str, nonce: str, decision: BaseModel) -> bool:
    """Whether the decision carries a valid assertion from a trusted key."""
    kid, _, digest = getattr(decision, "assertion", "").partition(":")
    key = _trusted.get(kid)
    if key is None or not digest:
        return False
    expected = hmac.new(key, _message(occurrence, nonce, decision), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, digest)
