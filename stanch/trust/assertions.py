"""Trusted decisions: the API vouches for who decided, and the workflow checks it once.

Every decision the API passes to an incident carries an assertion: an Ed25519 signature over
the decision, `ed25519:<kid>:<base64 signature>`, made with a private key only the API holds.
Workers and auditors verify with public keys, so nobody but the API can vouch for a decision
(an HMAC key, as before, let every holder forge one).

Where the verdict lives: an update's assertion is checked by its validator, which refuses an
unvouched update before it reaches history; validators do not run on replay, so an accepted
update *is* the verdict and replay needs no key. An approval signal is checked by a local
activity whose result is recorded in history (workflows/handlers.py). Runs begun before that
(no `decision-verdict-in-history` patch marker) keep their old path: the handler checks the
assertion, HMAC (`<kid>:<hex>`) or Ed25519, with `legacy_verdict`.

Keys are loaded at start-up by `stanch.trust.decision_keys` and held here, process-wide;
workflow code reads them through the sandbox's pass-through, like any constant configuration.
The private key never enters workflow history; only assertions and key ids do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, Field

from stanch.models.decisions import ApprovalDecision

ED25519 = "ed25519"
# The workflow.patched id from which a decision's verdict is recorded in history (validator,
# local activity); the audit looks for its marker to know which path a run took.
DECISION_VERDICT_PATCH = "decision-verdict-in-history"
# The local activity that checks an approval signal's assertion (activities/decisions.py).
VERIFY_APPROVAL = "verify_approval"
# The legacy HMAC key file; read (never created any more) so old histories verify on one machine.
KEYS_FILE = "decision-keys"


class DecisionKeyError(ValueError):
    """The decision keys are missing, malformed or do not fit together; the message says which
    variable or file to set."""


@dataclass
class DecisionKeys:
    """What one process holds: the API's signing key (the API only), the public keys every
    verifier trusts (retired ones included), and legacy HMAC keys that only verify old assertions."""

    signing: tuple[str, Ed25519PrivateKey] | None = None
    public: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    legacy: dict[str, bytes] = field(default_factory=dict)
    source: str = ""

    @property
    def ids(self) -> list[str]:
        return [*self.public, *(kid for kid in self.legacy if kid not in self.public)]


_keys = DecisionKeys()


def trust_keys(keys: DecisionKeys) -> None:
    """Make these the keys this process signs (the API) and verifies with."""
    global _keys
    _keys = keys


def held() -> DecisionKeys:
    return _keys


def trust(keys: list[tuple[str, bytes]]) -> None:
    """Legacy HMAC keys (`parse_keys`), for verifying assertions made before Ed25519: they
    replace the legacy set and leave the signing and public keys as they are."""
    _keys.legacy = dict(keys)


def trust_none() -> None:
    """Verify nothing and sign nothing: an audit without any of the installation's keys."""
    trust_keys(DecisionKeys(source="none"))


def parse_keys(text: str) -> list[tuple[str, bytes]]:
    """Legacy HMAC keys: "kid:base64key,kid2:base64key" (STANCH_DECISION_KEYS)."""
    keys = []
    for kid, encoded in split_entries(text, "a legacy decision key (STANCH_DECISION_KEYS) must look like 'kid:base64key'"):
        key = decode_b64(encoded, f"legacy decision key {kid!r}")
        if len(key) < 32:
            raise DecisionKeyError(f"legacy decision key {kid!r} is {len(key)} bytes; use at least 32")
        keys.append((kid, key))
    if not keys:
        raise DecisionKeyError("no legacy decision key given")
    return keys


def split_entries(text: str, shape: str) -> list[tuple[str, str]]:
    """`kid:value` entries, separated by commas or newlines; a line starting with `#` is a comment
    (a mounted key file may say what its keys are)."""
    lines = (line for line in text.splitlines() if not line.strip().startswith("#"))
    entries = []
    for item in filter(None, (part.strip() for line in lines for part in line.split(","))):
        kid, sep, encoded = item.partition(":")
        if not sep or not kid.strip() or not encoded.strip():
            raise DecisionKeyError(f"{shape}; got an entry starting {item[:6]!r}")
        entries.append((kid.strip(), encoded.strip()))
    return entries


def decode_b64(encoded: str, what: str) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error) as err:
        raise DecisionKeyError(f"{what} is not valid base64") from err


# --- signing and verifying -------------------------------------------------------------------


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
    if _keys.signing is None:
        raise DecisionKeyError(
            "no decision signing key loaded: only the Stanch API signs decisions "
            "(STANCH_DECISION_SIGNING_KEY, or STANCH_HOME/decision-signing-key on one machine)"
        )
    kid, key = _keys.signing
    signature = key.sign(_message(occurrence, nonce, decision))
    return f"{ED25519}:{kid}:{base64.b64encode(signature).decode()}"


def key_of(assertion: str) -> tuple[str, str]:
    """(scheme, key id) an assertion names: ("ed25519", kid), ("hmac", kid), or ("", "") for none."""
    if not assertion:
        return "", ""
    scheme, _, rest = assertion.partition(":")
    if scheme == ED25519:
        return ED25519, rest.partition(":")[0]
    return "hmac", scheme


def check(occurrence: str, nonce: str, decision: BaseModel, *, legacy: bool = False) -> str | None:
    """None if the decision carries a valid Ed25519 assertion from a trusted key (or, with
    `legacy`, an HMAC one); otherwise why not, in words a person can act on."""
    assertion = getattr(decision, "assertion", "") or ""
    scheme, kid = key_of(assertion)
    if not nonce or not assertion:
        return "it carries no assertion from the Stanch API"
    message = _message(occurrence, nonce, decision)
    if scheme == ED25519:
        public = _keys.public.get(kid)
        if public is None:
            have = ", ".join(_keys.public) or "none"
            return f"it is signed with key {kid!r}, which this worker does not trust (STANCH_DECISION_PUBLIC_KEYS: {have})"
        try:
            public.verify(base64.b64decode(assertion.rpartition(":")[2], validate=True), message)
        except (InvalidSignature, ValueError, binascii.Error):
            return f"its assertion does not verify with key {kid!r}: altered, or signed for another incident or request"
        return None
    if not legacy:
        return "it carries an HMAC assertion, which no longer vouches for a new decision (only Ed25519 from the API does)"
    key = _keys.legacy.get(kid)
    digest = assertion.partition(":")[2]
    if key is None:
        return f"it is signed with legacy key {kid!r}, which is not configured (STANCH_DECISION_KEYS)"
    if not hmac.compare_digest(hmac.new(key, message, hashlib.sha256).hexdigest(), digest):
        return f"its assertion does not verify with legacy key {kid!r}"
    return None


def verified(occurrence: str, nonce: str, decision: BaseModel, *, legacy: bool = False) -> bool:
    """Whether the decision carries a valid assertion from a trusted key."""
    return check(occurrence, nonce, decision, legacy=legacy) is None


def legacy_verdict(occurrence: str, nonce: str, decision: BaseModel, *, replaying: bool) -> bool:
    """The verdict of a run begun before verdicts were recorded in history (no patch marker),
    where the handler itself checked the assertion — on replay too.

    No assertion: never vouched (no key needed to know). A key held here: checked, exactly as
    when the run was recorded. A key not held here *during replay*: taken as vouched — the
    history goes on as the decision was counted, and if it was not, the replay diverges and
    the audit names the missing key (stanch.audit.replay) instead of guessing quietly. Outside
    replay, a key not held here vouches for nothing."""
    assertion = getattr(decision, "assertion", "") or ""
    if not nonce or not assertion:
        return False
    scheme, kid = key_of(assertion)
    if kid in (_keys.public if scheme == ED25519 else _keys.legacy):
        return verified(occurrence, nonce, decision, legacy=True)
    return replaying


# --- the signal path's verdict, recorded in history by a local activity ------------------------


class ApprovalToVerify(BaseModel):
    """An approval signal's decision, for the local activity that checks its assertion."""

    occurrence: str
    nonce: str = Field(description="the decision id the API signed the signal under")
    decision: ApprovalDecision


class Verdict(BaseModel):
    """Whether a decision was vouched for; recorded in history, so replay needs no key."""

    vouched: bool
    nonce: str = Field("", description="the decision id it is the verdict on")
    key_id: str = ""
    reason: str = Field("", description="why not, when it was not")


def verdict(request: ApprovalToVerify) -> Verdict:
    reason = check(request.occurrence, request.nonce, request.decision)
    return Verdict(vouched=reason is None, nonce=request.nonce, key_id=key_of(request.decision.assertion)[1], reason=reason or "")
