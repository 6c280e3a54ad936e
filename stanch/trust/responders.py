"""Who is responding: API tokens (hashed at rest) or JWTs, each giving a user and roles.

Configured in one YAML file (`STANCH_RESPONDERS`, `stanch api --responders FILE`, default
`STANCH_HOME/responders.yaml`):

    tokens:                        # static API tokens: only their sha256 is stored
      - {user: alice, roles: [oncall], token_sha256: 5e884898da28...}
    jwt:                           # or tokens from your identity provider
      issuer: https://idp.example.com/
      audience: stanch
      algorithms: [RS256]
      public_key_file: /etc/stanch/idp.pem     # or secret_env: NAME for HS256
      roles_claim: roles

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
from typing import Literal

import jwt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stanch.config.errors import validation_lines
from stanch.trust.permissions import RESPONDERS


class Principal(BaseModel):
    user: str
    roles: list[str] = Field(default_factory=list)
    via: Literal["token", "jwt", "insecure-dev"] = "token"

    @property
    def may_act(self) -> bool:
        """Holds a role that runs the response (stanch.trust.permissions); any other only reads."""
        return bool(set(self.roles) & RESPONDERS)


class NotAuthenticated(Exception):
    """No usable credential; the message says what was wrong (never the credential)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StaticToken(_Strict):
    user: str = Field(min_length=1)
    roles: list[str] = Field(min_length=1)
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the token, hex: the token itself is never stored")


JwtAlgorithm = Literal["HS256", "RS256", "ES256"]


def _default_algorithms() -> list[JwtAlgorithm]:
    return ["RS256"]


class JwtIssuer(_Strict):
    issuer: str
    audience: str
    algorithms: list[JwtAlgorithm] = Field(default_factory=_default_algorithms)
    secret_env: str | None = None
    public_key_file: Path | None = None
    user_claim: str = "sub"
    roles_claim: str = "roles"

    @model_validator(mode="after")
    def _one_key(self) -> JwtIssuer:
        if (self.secret_env is None) == (self.public_key_file is None):
            raise ValueError("give exactly one of secret_env (HS256) or public_key_file (RS256/ES256)")
        return self


class RespondersFile(_Strict):
    tokens: list[StaticToken] = Field(default_factory=list)
    jwt: JwtIssuer | None = None


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ResponderAuth:
    """Turns an `Authorization: Bearer ...` header into a Principal, or says why it cannot."""

    def __init__(self, config: RespondersFile, *, insecure_dev: bool = False, jwt_key: str | None = None) -> None:
        self.config = config
        self.insecure_dev = insecure_dev
        self._jwt_key = jwt_key

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

    def _from_jwt(self, credential: str, issuer: JwtIssuer) -> Principal:
        # load_responder_auth always gives the key with a jwt issuer; only a hand-built
        # ResponderAuth can lack it, and then every JWT is refused.
        if self._jwt_key is None:
            raise NotAuthenticated("the token was refused: no key is configured for the jwt issuer")
        try:
            claims = jwt.decode(
                credential,
                self._jwt_key,
                algorithms=issuer.algorithms,
                audience=issuer.audience,
                issuer=issuer.issuer,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as err:
            raise NotAuthenticated("the token has expired") from err
        except jwt.PyJWTError as err:  # includes key/algorithm mismatches: a refusal, never a 500
            raise NotAuthenticated(f"the token was refused: {err}") from err
        user, roles = claims.get(issuer.user_claim), claims.get(issuer.roles_claim, [])
        if not user:
            raise NotAuthenticated(f"the token has no {issuer.user_claim!r} claim")
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
    if config.jwt:
        # JwtIssuer._one_key: exactly one of secret_env and public_key_file is set.
        if config.jwt.secret_env is not None:
            key = env.get(config.jwt.secret_env) or None
            if key is None:
                raise ValueError(f"{path}: jwt.secret_env: environment variable {config.jwt.secret_env} is not set")
        elif config.jwt.public_key_file is not None:
            key = (path.parent / config.jwt.public_key_file).read_text()
    if not config.tokens and not config.jwt and not insecure_dev:
        raise ValueError(f"{path}: no tokens and no jwt issuer: nobody could respond")
    return ResponderAuth(config, insecure_dev=insecure_dev, jwt_key=key)
