"""Checking a sender's credential before its signal reaches Temporal.

`authenticate_sender` is a FastAPI dependency attached to the intake routers. It finds the
source from the path, reads the raw body (Starlette caches it, so the route still parses its
model) and accepts the request if any credential configured for that source matches.
Anything else is a 401 whose `detail` says what was wrong — a missing header, a signature
that does not match, a timestamp outside the window — so whoever wires up a sender can fix
it without reading our logs. Secrets and received signatures are never part of a reason.

Each `verify_*` function is pure (body, headers, now) so it is tested without HTTP.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from starlette.datastructures import Headers as StarletteHeaders

from stanch.intake.auth import IntakeAuthPolicy, ResolvedCredential

log = logging.getLogger(__name__)

# Standard Webhooks' own tolerance (hard-coded in `standardwebhooks.Webhook`), also used for
# Grafana's timestamped signatures: one replay window for every signed source.
SIGNATURE_TOLERANCE_S = 300
REALM = "stanch-intake"
MAX_WEBHOOK_ID_LENGTH = 256

INTAKE_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, forged or stale credentials; `detail` says which."},
    404: {"description": "This intake source is disabled on this installation."},
    413: {"description": "The body is over 1 MiB."},
}


class CredentialRefused(Exception):
    """This credential does not accept the request. `attempted` is False when the sender did
    not even present this kind of credential (its header is missing): with several accepted
    credentials, the reasons of those the sender tried are the ones worth reporting."""

    def __init__(self, reason: str, *, attempted: bool = True, challenge: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.attempted, self.challenge = reason, attempted, challenge


@dataclass(frozen=True)
class Accepted:
    scheme: str
    webhook_id: str | None = None


Headers = Mapping[str, str]


def _same(expected: str, given: str) -> bool:
    # Bytes, because compare_digest refuses non-ASCII str and headers can hold anything.
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8", "surrogateescape"))


def _hex_hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _header(headers: Headers, name: str) -> str:
    value = headers.get(name)
    if not value:
        raise CredentialRefused(f"missing {name} header", attempted=False)
    return value.strip()


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}" + ("" if count == 1 else "s")


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole >= 2 * 86400:
        return _plural(whole // 86400, "day")
    if whole >= 2 * 3600:
        return _plural(whole // 3600, "hour")
    minutes, rest = divmod(whole, 60)
    if minutes >= 10 or rest == 0:
        return _plural(minutes, "minute")
    return f"{_plural(minutes, 'minute')} {_plural(rest, 'second')}"


def check_timestamp(value: str, header: str, now: float) -> None:
    """Refuse a signing time outside the tolerance, saying by how much."""
    try:
        signed_at = int(value)
    except ValueError:
        raise CredentialRefused(f"{header} header is not a Unix time in seconds") from None
    tolerance = _duration(SIGNATURE_TOLERANCE_S)
    if now - signed_at > SIGNATURE_TOLERANCE_S:
        raise CredentialRefused(f"webhook timestamp is {_duration(now - signed_at)} old; the tolerance is {tolerance}")
    if signed_at - now > SIGNATURE_TOLERANCE_S:
        raise CredentialRefused(
            f"webhook timestamp is {_duration(signed_at - now)} in the future; the tolerance is {tolerance} (check the sender's clock)"
        )


# One `<version>,<base64>` entry of a Standard Webhooks signature header (`v1,K5oZ…=`, `v1a,…`).
SIGNATURE_ENTRY = re.compile(r"v\d+[a-z]?,(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
MALFORMED_SIGNATURE = "webhook-signature header is malformed; expected space-separated `v1,<base64>` entries"


def verify_standard_webhooks(credential: ResolvedCredential, body: bytes, headers: Headers, now: float) -> Accepted:
    from standardwebhooks import Webhook
    from standardwebhooks.webhooks import WebhookVerificationError

    missing = [name for name in ("webhook-id", "webhook-timestamp", "webhook-signature") if not headers.get(name)]
    if missing:
        raise CredentialRefused(f"missing {', '.join(missing)} header{'s' if len(missing) > 1 else ''}", attempted=len(missing) < 3)
    webhook_id = headers["webhook-id"].strip()
    if len(webhook_id) > MAX_WEBHOOK_ID_LENGTH:
        raise CredentialRefused(f"webhook-id header is longer than {MAX_WEBHOOK_ID_LENGTH} characters")
    # Checked here first for a reason that says how stale; the package checks it again.
    check_timestamp(headers["webhook-timestamp"].strip(), "webhook-timestamp", now)
    try:
        Webhook(credential.secret).verify(body, dict(headers), json_parse=False)
    except WebhookVerificationError:
        # Stanch names a malformed header itself: the package's own errors word it differently by release.
        if not all(SIGNATURE_ENTRY.fullmatch(entry) for entry in headers["webhook-signature"].split()):
            raise CredentialRefused(MALFORMED_SIGNATURE) from None
        raise CredentialRefused("signature does not match") from None
    except UnicodeDecodeError:
        raise CredentialRefused("signature does not match (the body is not UTF-8 text)") from None
    except (ValueError, binascii.Error):  # a signature entry that is not `v1,<base64>`
        raise CredentialRefused(MALFORMED_SIGNATURE) from None
    return Accepted("standard_webhooks", webhook_id=webhook_id)


def verify_github_hmac(credential: ResolvedCredential, body: bytes, headers: Headers, now: float) -> Accepted:
    given = _header(headers, "X-Hub-Signature-256")
    if not given.startswith("sha256="):
        raise CredentialRefused("X-Hub-Signature-256 header must be `sha256=<hex HMAC-SHA256 of the body>`")
    if not _same(_hex_hmac(credential.secret, body), given.removeprefix("sha256=").lower()):
        raise CredentialRefused("signature does not match")
    return Accepted("github_hmac")


def verify_grafana_hmac(credential: ResolvedCredential, body: bytes, headers: Headers, now: float) -> Accepted:
    signature_header = credential.header or "X-Grafana-Alerting-Signature"
    timestamp_header = credential.timestamp_header or "X-Grafana-Alerting-Signature-Timestamp"
    given = _header(headers, signature_header)
    timestamp = (headers.get(timestamp_header) or "").strip()
    if timestamp:
        check_timestamp(timestamp, timestamp_header, now)
        signed = timestamp.encode("utf-8") + b":" + body  # Grafana signs `<timestamp>:<body>`
    elif credential.require_timestamp:
        raise CredentialRefused(f"missing {timestamp_header} header; this source only accepts timestamped signatures")
    else:
        signed = body
    if not _same(_hex_hmac(credential.secret, signed), given.lower()):
        raise CredentialRefused("signature does not match")
    return Accepted("grafana_hmac")


def verify_sentry(credential: ResolvedCredential, body: bytes, headers: Headers, now: float) -> Accepted:
    # Sentry signs the raw body with the integration's client secret; its timestamp header
    # is not signed, so there is no replay window to check.
    given = _header(headers, "Sentry-Hook-Signature")
    if not _same(_hex_hmac(credential.secret, body), given.lower()):
        raise CredentialRefused("signature does not match")
    return Accepted("sentry")


def _authorization(headers: Headers, scheme: str, challenge: str) -> str:
    value = (headers.get("Authorization") or "").strip()
    if not value:
        raise CredentialRefused("missing Authorization header", attempted=False, challenge=challenge)
    given_scheme, _, credentials = value.partition(" ")
    if given_scheme.lower() != scheme.lower():
        raise CredentialRefused(f"Authorization header is not {scheme} credentials", attempted=False, challenge=challenge)
    return credentials.strip()


def verify_bearer(credential: ResolvedCredential, body: bytes, headers: Headers, now: float) -> Accepted:
    challenge = f'Bearer realm="{REALM}"'
    token = _authorization(headers, "Bearer", challenge)
    if not _same(credential.secret, token):
        raise CredentialRefused("bearer token does not match", challenge=f'{challenge}, error="invalid_token"')
    return Accepted("bearer")


def verify_basic(credential: ResolvedCredential, body: bytes, headers: Headers, now: float) -> Accepted:
    challenge = f'Basic realm="{REALM}", charset="UTF-8"'
    encoded = _authorization(headers, "Basic", challenge)
    try:
        username, separator, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise CredentialRefused("Basic credentials are not base64 of `username:password`", challenge=challenge) from None
    # Both compared every time, so timing does not tell which one was wrong.
    user_ok = _same(credential.username or "", username)
    password_ok = _same(credential.secret, password)
    if not (separator and user_ok and password_ok):
        raise CredentialRefused("username or password does not match", challenge=challenge)
    return Accepted("basic")


VERIFIERS: dict[str, Callable[[ResolvedCredential, bytes, Headers, float], Accepted]] = {
    "standard_webhooks": verify_standard_webhooks,
    "github_hmac": verify_github_hmac,
    "grafana_hmac": verify_grafana_hmac,
    "sentry": verify_sentry,
    "bearer": verify_bearer,
    "basic": verify_basic,
}


def check_credentials(credentials: tuple[ResolvedCredential, ...], body: bytes, headers: Headers, now: float | None = None) -> Accepted:
    """The first credential that accepts the request; else CredentialRefused with the reasons
    of the credentials the sender tried (or, if it tried none, what each one needs)."""
    now = time.time() if now is None else now
    headers = headers if isinstance(headers, StarletteHeaders) else StarletteHeaders(headers=dict(headers))  # case-insensitive
    refusals: list[tuple[ResolvedCredential, CredentialRefused]] = []
    for credential in credentials:
        try:
            return VERIFIERS[credential.scheme](credential, body, headers, now)
        except CredentialRefused as refusal:
            refusals.append((credential, refusal))
    tried = [(c, r) for c, r in refusals if r.attempted] or refusals
    if len(tried) == 1:
        reason = tried[0][1].reason
    else:
        reason = "no accepted credential: " + "; ".join(f"{c.scheme}: {r.reason}" for c, r in tried)
    challenges = ", ".join(dict.fromkeys(r.challenge for _, r in refusals if r.challenge))
    raise CredentialRefused(reason, challenge=challenges or None)


def intake_source(path: str) -> str | None:
    """The intake source a request path belongs to, or None for non-intake paths."""
    parts = path.strip("/").split("/")
    if parts[:2] == ["v1", "alerts"] and len(parts) >= 3:
        return parts[2]
    if parts[:2] in (["v1", "reports"], ["v1", "findings"]):
        return parts[1]
    return None


async def authenticate_sender(request: Request) -> None:
    """FastAPI dependency for every intake route; see the module docstring."""
    policy: IntakeAuthPolicy = request.app.state.intake_auth
    source = intake_source(request.url.path) or "unknown"
    source_policy = policy.for_source(source)
    if not source_policy.enabled:
        raise HTTPException(404, detail=f"intake from {source!r} is disabled on this Stanch installation")
    if not source_policy.credentials:
        if policy.insecure_dev:
            return
        # Start-up refuses this configuration; failing closed covers a route added since.
        log.error("intake source %r has no credential configured; refusing", source)
        raise HTTPException(401, detail=f"intake source {source!r} has no credential configured; nothing is accepted")
    body = await request.body()
    try:
        accepted = check_credentials(source_policy.credentials, body, request.headers)
    except CredentialRefused as refused:
        client = request.client.host if request.client else "unknown"
        log.warning("intake %s from %s refused: %s", source, client, refused.reason)
        headers = {"WWW-Authenticate": refused.challenge} if refused.challenge else None
        raise HTTPException(401, detail=refused.reason, headers=headers) from None
    request.state.authenticated_by = accepted.scheme
    if accepted.webhook_id is not None:
        request.state.webhook_id = accepted.webhook_id


def webhook_id(request: Request) -> str | None:
    """The verified Standard Webhooks `webhook-id` of this delivery: an idempotency key the
    sender keeps across retries. None when the sender did not use Standard Webhooks."""
    return getattr(request.state, "webhook_id", None)
