"""Who is responding: API tokens (hashed at rest) or JWTs, each giving a user and roles.

Configured in one YAML file (`STANCH_RESPONDERS`, `stanch api --responders FILE`, default
`STANCH_HOME/responders.yaml`):

    tokens:                        # static API tokens: only their sha256 is stored
      - {user: alice, roles: [oncall], token_sha256: 5e884898da28...}
    jwt:                           # or tokens from your identity provider
      issuer: https://idp.example.com/
      audience: stanch
      algorithms: [RS256]
      jwks_url: https://idp.example.com/.well-known/jwks.json   # or public_key_file: /etc/stanch/idp.pem,
                                                                # or secret_env: NAME for HS256
      roles_claim: realm_access.roles   # a claim, or a dotted path into one (Keycloak); default roles

With `jwks_url` the identity provider's key set is fetched and kept for `jwks_cache_seconds`,
then fetched again; every token is checked against the set as last fetched. So a key the
provider removes is refused once that set is older than `jwks_cache_seconds`, and a token
naming a key id not in the set fetches it once more (at most every
`jwks_refetch_cooldown_seconds`), so a key the provider rotates in is accepted without a restart.

`stanch responders token --user alice --role oncall` mints a token and prints its line.
Under `--insecure-dev` (the local demo) identity is taken as claimed: `X-Stanch-User` and
`X-Stanch-Roles` headers, else the names in the request body.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import jwt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stanch.config.errors import validation_lines
from stanch.config.network import is_loopback
from stanch.trust.permissions import RESPONDERS


class Principal(BaseModel):
    user: str
    roles: list[str] = Field(default_factory=list)
    via: Literal["token", "jwt", "insecure-dev"] = "token"

    @property
    def may_act(self) -> bool:
        """Holds a role that runs the response (stanch.trust.permissions); any other only reads."""
        return bool(set(self.roles) & RESPONDERS)


# How long a client waits before asking again when the identity provider's keys are out of reach.
IDP_RETRY_AFTER_SECONDS = 30


class NotAuthenticated(Exception):
    """No usable credential; the message says what was wrong (never the credential).
    `status_code` and `http_headers` are what every HTTP entry point answers with."""

    status_code = 401

    @property
    def http_headers(self) -> dict[str, str]:
        """A refused credential: the client is told to send a bearer token (RFC 6750)."""
        return {"WWW-Authenticate": "Bearer"}


class IdentityProviderUnavailable(NotAuthenticated):
    """The identity provider's keys could not be fetched: no token can be checked, so none is
    accepted. Not the caller's fault, hence 503 rather than 401."""

    status_code = 503

    @property
    def http_headers(self) -> dict[str, str]:
        """The same request may well pass once the identity provider answers again."""
        return {"Retry-After": str(IDP_RETRY_AFTER_SECONDS)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StaticToken(_Strict):
    user: str = Field(min_length=1)
    roles: list[str] = Field(min_length=1)
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the token, hex: the token itself is never stored")


JwtAlgorithm = Literal["HS256", "RS256", "ES256"]
# A request waits this long at most for the identity provider's keys (only when they are fetched).
JWKS_TIMEOUT_SECONDS = 5.0


def _default_algorithms() -> list[JwtAlgorithm]:
    return ["RS256"]


class JwtIssuer(_Strict):
    issuer: str
    audience: str
    algorithms: list[JwtAlgorithm] = Field(default_factory=_default_algorithms)
    secret_env: str | None = None
    public_key_file: Path | None = None
    jwks_url: str | None = Field(None, description="the identity provider's JWKS (https; http only on loopback)")
    jwks_cache_seconds: float = Field(
        300,
        gt=0,
        description="how long a fetched key set is used before fetching it again: a key the IdP removes is refused after this long",
    )
    jwks_refetch_cooldown_seconds: float = Field(
        30, ge=0, description="at most one extra fetch for an unknown key id in this long: a flood of made-up ids cannot hammer the IdP"
    )
    user_claim: str = "sub"
    roles_claim: str = Field("roles", description="a claim name, or a dotted path into nested claims (realm_access.roles)")

    @model_validator(mode="after")
    def _one_key(self) -> JwtIssuer:
        given = [name for name in ("secret_env", "public_key_file", "jwks_url") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of secret_env (HS256), public_key_file (RS256/ES256) or jwks_url (the identity provider's keys)"
                + (f"; got {' and '.join(given)}" if given else "")
            )
        if self.jwks_url is not None:
            url = urlparse(self.jwks_url)
            if url.scheme not in ("https", "http") or not url.hostname:
                raise ValueError(f"jwks_url {self.jwks_url!r} must be an https:// URL")
            if url.scheme == "http" and not is_loopback(url.hostname):
                raise ValueError(f"jwks_url {self.jwks_url!r} must use https (plain http only on loopback, for tests)")
            if "HS256" in self.algorithms:
                raise ValueError("jwks_url gives public keys: list RS256 or ES256 in algorithms, not HS256")
        return self


class RespondersFile(_Strict):
    tokens: list[StaticToken] = Field(default_factory=list)
    jwt: JwtIssuer | None = None


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def claim_at(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by its name, else by a dotted path into nested claims: `realm_access.roles`
    (Keycloak) is claims["realm_access"]["roles"], while a name that itself holds dots
    (`https://example.com/roles`) is found as it is first. None if neither is there."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


class ResponderAuth:
    """Turns an `Authorization: Bearer ...` header into a Principal, or says why it cannot."""

    def __init__(
        self,
        config: RespondersFile,
        *,
        insecure_dev: bool = False,
        jwt_key: str | None = None,
        jwks: jwt.PyJWKClient | None = None,
    ) -> None:
        self.config = config
        self.insecure_dev = insecure_dev
        self._jwt_key = jwt_key
        self._jwks = jwks

    @property
    def mode(self) -> Literal["token", "insecure-dev"]:
        return "insecure-dev" if self.insecure_dev else "token"

    @classmethod
    def insecure(cls) -> ResponderAuth:
        return cls(RespondersFile(), insecure_dev=True)

    def vouch(self, authorization: str | None) -> Principal | None:
        """Who sent a request, by the one rule every entry point uses: a credential is checked
        whenever one is sent or the responders file is enforced. None only for a request without
        one under --insecure-dev. Raises NotAuthenticated."""
        if authorization or not self.insecure_dev:
            return self.authenticate(authorization)
        return None

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise NotAuthenticated("missing Authorization header: send `Authorization: Bearer <your Stanch token>`")
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise NotAuthenticated("the Authorization header must be `Bearer <token>`")
        credential = credential.strip()
        digest = token_sha256(credential)
        for entry in self.config.tokens:
            if hmac.compare_digest(entry.token_sha256, digest):
                return Principal(user=entry.user, roles=entry.roles, via="token")
        if self.config.jwt and credential.count(".") == 2:
            return self._from_jwt(credential, self.config.jwt)
        raise NotAuthenticated("unknown token")

    def _key_for(self, credential: str, issuer: JwtIssuer) -> Any:
        """The key to check this token with: the configured one, or the IdP's key its `kid` names."""
        if self._jwks is None:
            # load_responder_auth always gives the key with a jwt issuer; only a hand-built
            # ResponderAuth can lack it, and then every JWT is refused.
            if self._jwt_key is None:
                raise NotAuthenticated("the token was refused: no key is configured for the jwt issuer")
            return self._jwt_key
        try:
            kid = jwt.get_unverified_header(credential).get("kid")
        except jwt.PyJWTError as err:
            raise NotAuthenticated(f"the token was refused: {err}") from err
        if not kid:
            raise NotAuthenticated("the token names no key id (kid): the identity provider's keys are chosen by it")
        unavailable = f"could not fetch the identity provider's keys from {issuer.jwks_url}"
        try:
            self._jwks.get_signing_keys()  # the cached set, or a fetch: a failure here is the IdP's, not the token's
        except jwt.PyJWKClientConnectionError as err:
            raise IdentityProviderUnavailable(f"{unavailable}: {err.__cause__ or err}") from err
        except (jwt.PyJWTError, ValueError) as err:  # not a key set: an error page, no usable key
            raise IdentityProviderUnavailable(f"{unavailable}: {err}") from err
        try:
            return self._jwks.get_signing_key(str(kid)).key  # not in the set: fetched once more (after the cooldown)
        except jwt.PyJWKClientConnectionError as err:
            raise IdentityProviderUnavailable(f"{unavailable}: {err.__cause__ or err}") from err
        except jwt.PyJWKClientError as err:
            raise NotAuthenticated(
                f"the token was refused: its key id {str(kid)[:64]!r} is not among the identity provider's keys at {issuer.jwks_url}"
            ) from err
        except (jwt.PyJWTError, ValueError) as err:
            raise IdentityProviderUnavailable(f"{unavailable}: {err}") from err

    def _from_jwt(self, credential: str, issuer: JwtIssuer) -> Principal:
        key = self._key_for(credential, issuer)
        try:
            claims = jwt.decode(
                credential,
                key,
                algorithms=issuer.algorithms,
                audience=issuer.audience,
                issuer=issuer.issuer,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as err:
            raise NotAuthenticated("the token has expired") from err
        except jwt.PyJWTError as err:  # includes key/algorithm mismatches: a refusal, never a 500
            raise NotAuthenticated(f"the token was refused: {err}") from err
        user, roles = claim_at(claims, issuer.user_claim), claim_at(claims, issuer.roles_claim)
        if not user:
            raise NotAuthenticated(f"the token has no {issuer.user_claim!r} claim")
        if roles is None:
            roles = []
        return Principal(user=str(user), roles=[str(r) for r in (roles if isinstance(roles, list) else [roles])], via="jwt")


def load_responder_auth(path: Path, *, insecure_dev: bool, env: Mapping[str, str] | None = None) -> ResponderAuth:
    """The responders file, checked; without one, only --insecure-dev may start."""
    env = os.environ if env is None else env
    if not path.exists():
        if insecure_dev:
            return ResponderAuth.insecure()
        raise ValueError(f"{path}: no responders file; create one (see `stanch responders token`) or run with --insecure-dev")
    try:
        config = RespondersFile.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as err:
        raise ValueError("\n".join(validation_lines(path, err))) from None
    key: str | None = None
    jwks: jwt.PyJWKClient | None = None
    if config.jwt:
        # JwtIssuer._one_key: exactly one of secret_env, public_key_file and jwks_url is set.
        if config.jwt.jwks_url is not None:
            # Nothing is fetched here: an IdP that is down at start-up refuses tokens (503) until it is back.
            # Only the whole key set is cached, for jwks_cache_seconds. cache_keys would add PyJWT's
            # per-key cache, which never expires: a key the IdP removed would stay trusted until restart.
            jwks = jwt.PyJWKClient(
                config.jwt.jwks_url,
                cache_keys=False,
                cache_jwk_set=True,
                lifespan=config.jwt.jwks_cache_seconds,
                timeout=JWKS_TIMEOUT_SECONDS,
                cooldown_duration=config.jwt.jwks_refetch_cooldown_seconds,
            )
        elif config.jwt.secret_env is not None:
            key = env.get(config.jwt.secret_env) or None
            if key is None:
                raise ValueError(f"{path}: jwt.secret_env: environment variable {config.jwt.secret_env} is not set")
        elif config.jwt.public_key_file is not None:
            key = (path.parent / config.jwt.public_key_file).read_text()
    if not config.tokens and not config.jwt and not insecure_dev:
        raise ValueError(f"{path}: no tokens and no jwt issuer: nobody could respond")
    return ResponderAuth(config, insecure_dev=insecure_dev, jwt_key=key, jwks=jwks)
