"""JWTs checked against the identity provider's JWKS: a real HTTP server on loopback serves the
key set, tokens are minted with PyJWT, and roles come from a claim path (Keycloak's
`realm_access.roles`). Keys are cached, a key the provider rotates in is accepted without a
restart, a key it removes is refused once the cached set is older than jwks_cache_seconds, and a
provider that cannot be reached refuses every token and says so."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from pydantic import ValidationError
from temporalio.client import WorkflowExecutionStatus

from stanch.api.app import create_app
from stanch.config.settings import Settings
from stanch.temporal.codec import EncryptionCodec, parse_encryption_keys
from stanch.temporal.codec_server import create_codec_app
from stanch.trust.responders import (
    IdentityProviderUnavailable,
    JwtIssuer,
    NotAuthenticated,
    ResponderAuth,
    claim_at,
    load_responder_auth,
)
from tests.unit.test_api_alerts import FakeClient, NoCatalog, free_port, use_client

ISSUER, AUDIENCE = "https://idp.test/realms/stanch", "stanch"


class IdentityProvider:
    """A JWKS endpoint on 127.0.0.1: publishes the public halves of its signing keys, counts fetches."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                body = json.dumps(provider.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/realms/stanch/protocol/openid-connect/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def jwks(self) -> dict[str, Any]:
        published = []
        for kid, key in self.keys.items():
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            published.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": published}

    def new_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def token(self, kid: str, **overrides: Any) -> str:
        claims = {
            "sub": "carol",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "exp": int(time.time()) + 300,
            "realm_access": {"roles": ["incident-commander", "offline_access"]},
        }
        return jwt.encode({**claims, **overrides}, self.keys[kid], algorithm="RS256", headers={"kid": kid})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    provider.new_key("2026-01")
    yield provider
    provider.stop()


def responders_file(folder: Path, jwks_url: str, **jwt_fields: Any) -> Path:
    path = folder / "responders.yaml"
    settings = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks_url, "roles_claim": "realm_access.roles", **jwt_fields}
    path.write_text(yaml.safe_dump({"jwt": settings}))
    return path


def auth_for(folder: Path, jwks_url: str, **jwt_fields: Any) -> ResponderAuth:
    return load_responder_auth(responders_file(folder, jwks_url, **jwt_fields), insecure_dev=False, env={})


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_a_token_from_the_idp_gives_user_and_roles_from_the_claim_path_and_keys_are_cached(idp, tmp_path: Path):
    auth = auth_for(tmp_path, idp.url)
    assert idp.fetches == 0, "nothing is fetched before a token comes"
    carol = auth.authenticate(bearer(idp.token("2026-01")))
    assert (carol.user, carol.roles, carol.via, carol.may_act) == ("carol", ["incident-commander", "offline_access"], "jwt", True)
    auth.authenticate(bearer(idp.token("2026-01", sub="dave")))
    assert idp.fetches == 1, "the key set is cached"


@pytest.mark.parametrize(
    ("claims", "says"),
    [
        ({"iss": "https://evil.test/"}, "refused"),
        ({"aud": "someone-else"}, "refused"),
        ({"exp": int(time.time()) - 60}, "expired"),
    ],
    ids=["wrong issuer", "wrong audience", "expired"],
)
def test_wrong_issuer_audience_or_an_expired_token_is_refused(idp, tmp_path: Path, claims: dict[str, Any], says: str):
    auth = auth_for(tmp_path, idp.url)
    with pytest.raises(NotAuthenticated, match=says) as refused:
        auth.authenticate(bearer(idp.token("2026-01", **claims)))
    assert refused.value.status_code == 401


def test_a_token_signed_by_another_key_under_a_published_kid_is_refused(idp, tmp_path: Path):
    auth = auth_for(tmp_path, idp.url)
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        {"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300},
        forger,
        algorithm="RS256",
        headers={"kid": "2026-01"},
    )
    with pytest.raises(NotAuthenticated, match="refused"):
        auth.authenticate(bearer(forged))


def test_a_key_rotated_in_at_the_idp_is_accepted_without_a_restart_and_an_unknown_kid_is_named(idp, tmp_path: Path):
    auth = auth_for(tmp_path, idp.url, jwks_refetch_cooldown_seconds=0)
    auth.authenticate(bearer(idp.token("2026-01")))
    idp.new_key("2026-02")  # the provider rotates: a new kid appears in its key set
    assert auth.authenticate(bearer(idp.token("2026-02"))).user == "carol"
    assert idp.fetches == 2, "an unknown kid fetched the key set once more"
    assert auth.authenticate(bearer(idp.token("2026-01"))).user == "carol", "the old key still verifies while published"

    stranger = IdentityProvider()
    stranger.new_key("not-ours")
    try:
        token = stranger.token("not-ours")
    finally:
        stranger.stop()
    with pytest.raises(NotAuthenticated, match=f"key id 'not-ours' is not among the identity provider's keys at {idp.url}") as refused:
        auth.authenticate(bearer(token))
    assert refused.value.status_code == 401


def codec_server_for(auth: ResponderAuth) -> TestClient:
    """The codec server (what the Temporal UI asks to decode payloads), checking tokens with `auth`."""
    key = "k1:" + base64.b64encode(b"1" * 32).decode()
    return TestClient(create_codec_app(EncryptionCodec(parse_encryption_keys(key)), auth))


def test_a_key_the_idp_removes_is_refused_once_the_key_set_is_older_than_jwks_cache_seconds(idp, tmp_path: Path):
    cache_seconds = 0.3
    auth = auth_for(tmp_path, idp.url, jwks_cache_seconds=cache_seconds)
    idp.new_key("2026-02")
    signed_with_the_old_key = idp.token("2026-01")
    assert auth.authenticate(bearer(signed_with_the_old_key)).user == "carol"

    del idp.keys["2026-01"]  # revoked at the provider (say it leaked); 2026-02 stays published
    time.sleep(cache_seconds + 0.2)  # no restart: the cached key set has only grown old
    removed = f"key id '2026-01' is not among the identity provider's keys at {idp.url}"
    with pytest.raises(NotAuthenticated, match=removed) as refused:
        auth.authenticate(bearer(signed_with_the_old_key))
    assert refused.value.status_code == 401
    assert idp.fetches == 2, "the old set was fetched again once; the removed key id did not fetch it again and again"
    assert auth.authenticate(bearer(idp.token("2026-02"))).user == "carol", "the key still published verifies"

    answer = codec_server_for(auth).post("/decode", content="{}", headers={"Authorization": bearer(signed_with_the_old_key)})
    assert (answer.status_code, answer.headers["www-authenticate"]) == (401, "Bearer")
    assert removed in answer.json()["detail"]


def test_an_unreachable_idp_refuses_every_token_with_a_503_naming_the_url(tmp_path: Path):
    idp = IdentityProvider()
    idp.new_key("2026-01")
    token = idp.token("2026-01")
    idp.stop()
    auth = auth_for(tmp_path, idp.url)
    with pytest.raises(IdentityProviderUnavailable, match=f"could not fetch the identity provider's keys from {idp.url}") as refused:
        auth.authenticate(bearer(token))
    assert refused.value.status_code == 503
    assert token not in str(refused.value)


def test_roles_claim_is_a_name_first_then_a_dotted_path():
    claims = {
        "groups": ["oncall"],
        "https://example.com/roles": ["safety"],
        "realm_access": {"roles": ["incident-commander"]},
        "a": {"b": "single"},
    }
    assert claim_at(claims, "groups") == ["oncall"]
    assert claim_at(claims, "https://example.com/roles") == ["safety"], "a claim name with dots is found as it is"
    assert claim_at(claims, "realm_access.roles") == ["incident-commander"]
    assert claim_at(claims, "a.b") == "single"
    assert claim_at(claims, "realm_access.missing") is None and claim_at(claims, "groups.x") is None


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"jwks_url": "http://idp.example.com/jwks.json"}, "must use https"),
        ({"jwks_url": "file:///etc/passwd"}, "must be an https:// URL"),
        ({"jwks_url": "https://idp/jwks", "public_key_file": "idp.pem"}, "exactly one of"),
        ({}, "exactly one of"),
        ({"jwks_url": "https://idp/jwks", "algorithms": ["HS256"]}, "not HS256"),
    ],
)
def test_the_jwks_settings_are_checked(fields: dict[str, Any], says: str):
    with pytest.raises(ValidationError, match=says):
        JwtIssuer(issuer=ISSUER, audience=AUDIENCE, **fields)
    for loopback in ("http://127.0.0.1:9/jwks", "http://localhost:9/jwks", "http://[::1]:9/jwks", "https://idp.example.com/jwks"):
        assert JwtIssuer(issuer=ISSUER, audience=AUDIENCE, jwks_url=loopback).jwks_url == loopback


def test_through_the_api_the_idps_token_decides_in_its_holders_name(idp, tmp_path: Path):
    app = create_app(
        Settings(home=tmp_path, runbooks_dir=tmp_path, temporal_address="127.0.0.1:1"),
        catalog=NoCatalog(),
        responders=auth_for(tmp_path, idp.url),
        insecure_dev=True,  # the intake and decision keys only: the responders given are enforced
    )
    client = FakeClient({"inc-1": WorkflowExecutionStatus.RUNNING})
    http = use_client(app, client)
    token = idp.token("2026-01")
    me = http.get("/v1/me", headers={"Authorization": bearer(token)})
    assert me.status_code == 200, me.text
    assert me.json() == {"user": "carol", "roles": ["incident-commander", "offline_access"], "via": "jwt"}
    approval = {"stage": "contain", "approver": "mallory", "approve": True}
    decided = http.post("/v1/incidents/inc-1/approvals", json=approval, headers={"Authorization": bearer(token)})
    assert decided.status_code == 200, decided.text
    name, decision, _ = client.updates[-1]
    assert (name, decision.approver, decision.roles) == ("approve", "carol", ["incident-commander", "offline_access"])
    expired = http.get("/v1/me", headers={"Authorization": bearer(idp.token("2026-01", exp=int(time.time()) - 60))})
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]


def test_through_the_api_an_unreachable_idp_accepts_no_token(tmp_path: Path):
    idp = IdentityProvider()
    idp.new_key("2026-01")
    token = idp.token("2026-01")
    idp.stop()
    unreachable = f"http://127.0.0.1:{free_port()}/certs"
    app = create_app(
        Settings(home=tmp_path, runbooks_dir=tmp_path, temporal_address="127.0.0.1:1"),
        catalog=NoCatalog(),
        responders=auth_for(tmp_path, unreachable),
        insecure_dev=True,
    )
    http = use_client(app, FakeClient({"inc-1": WorkflowExecutionStatus.RUNNING}))
    refused = http.get("/v1/me", headers={"Authorization": bearer(token)})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "30"
    assert f"could not fetch the identity provider's keys from {unreachable}" in refused.json()["detail"]
    assert token not in refused.text
    from_the_codec_server = codec_server_for(auth_for(tmp_path, unreachable)).post(
        "/decode", content="{}", headers={"Authorization": bearer(token)}
    )
    assert from_the_codec_server.status_code == 503 and from_the_codec_server.headers["retry-after"] == "30"
    assert f"could not fetch the identity provider's keys from {unreachable}" in from_the_codec_server.json()["detail"]
