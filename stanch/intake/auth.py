"""Who may send signals: the intake authentication file, read once at start-up.

One YAML file names, per intake source, the credentials it accepts (any one may match):

    alertmanager:
      - basic: {username: alertmanager, password_env: STANCH_ALERTMANAGER_PASSWORD}
    grafana:
      - grafana_hmac: {secret_file: secrets/grafana-webhook}
    generic:
      - bearer: {token_env: STANCH_GENERIC_TOKEN}
    pagerduty:
      enabled: false

A source is either a list of credentials or `{enabled: ..., credentials: [...]}`. Secrets
never live in the file itself, only the name of an environment variable or a file holding
them: the file can then be reviewed, committed and diffed without leaking anything.

Every secret is read at start-up, so a missing variable stops the API before it answers
its first webhook rather than 401-ing every alert in the middle of an incident. Rotating a
secret therefore takes a restart. Checking signatures is `stanch.api.auth`'s job; this module
only turns the file into an `IntakeAuthPolicy`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stanch.config.errors import ConfigFileError, load_yaml, validation_lines
from stanch.config.secrets import SecretUnavailable, read_secret

# Every intake endpoint: `/v1/alerts/<source>` for the first seven, then `/v1/reports` and
# `/v1/findings`. The API refuses to start while any of them is open without --insecure-dev.
INTAKE_SOURCES = ("alertmanager", "grafana", "pagerduty", "datadog", "sentry", "cloudevents", "generic", "reports", "findings")
Scheme = Literal["standard_webhooks", "github_hmac", "grafana_hmac", "sentry", "bearer", "basic"]
SCHEMES: tuple[Scheme, ...] = ("standard_webhooks", "github_hmac", "grafana_hmac", "sentry", "bearer", "basic")

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Keys someone might reach for to paste a secret in directly.
_INLINE_SECRET_KEYS = ("secret", "token", "password", "client_secret")


class IntakeAuthError(ConfigFileError):
    """The intake authentication cannot be used; one line per problem, naming file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _SecretHolder(_Strict):
    """A credential's settings: `<prefix>_env` or `<prefix>_file`, never the secret itself."""

    _prefix: ClassVar[str] = "secret"

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            inline = [key for key in _INLINE_SECRET_KEYS if key in data]
            if inline:
                raise ValueError(
                    f"`{inline[0]}` would put a secret in this file, which is refused: "
                    f"name an environment variable with {cls._prefix}_env or a file with {cls._prefix}_file"
                )
        return data

    @model_validator(mode="after")
    def _one_place(self) -> _SecretHolder:
        env_field, file_field = f"{self._prefix}_env", f"{self._prefix}_file"
        given = [name for name in (env_field, file_field) if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {env_field} or {file_field}" + (", not both" if given else ""))
        return self


class SecretRef(_SecretHolder):
    secret_env: str | None = Field(None, pattern=ENV_NAME_PATTERN, description="environment variable holding the secret")
    secret_file: Path | None = Field(None, description="file holding the secret (relative to this file)")


class GrafanaHmacRef(SecretRef):
    header: str = "X-Grafana-Alerting-Signature"
    # Grafana has no default name for its timestamp header; this is the one its provisioning
    # docs use. When the header is present the signed string is `timestamp:body`.
    timestamp_header: str = "X-Grafana-Alerting-Signature-Timestamp"
    require_timestamp: bool = Field(False, description="refuse signatures without a timestamp (no replay window otherwise)")


class BearerRef(_SecretHolder):
    _prefix: ClassVar[str] = "token"
    token_env: str | None = Field(None, pattern=ENV_NAME_PATTERN)
    token_file: Path | None = None


class BasicRef(_SecretHolder):
    _prefix: ClassVar[str] = "password"
    username: str = Field(min_length=1)
    password_env: str | None = Field(None, pattern=ENV_NAME_PATTERN)
    password_file: Path | None = None


class Credential(_Strict):
    """One accepted credential: exactly one scheme key."""

    standard_webhooks: SecretRef | None = None
    github_hmac: SecretRef | None = None
    grafana_hmac: GrafanaHmacRef | None = None
    sentry: SecretRef | None = None
    bearer: BearerRef | None = None
    basic: BasicRef | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_known_scheme(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [str(key) for key in data if key not in SCHEMES]
            if unknown:
                raise ValueError(f"unknown credential scheme {unknown[0]!r}; use one of {', '.join(SCHEMES)}")
            if len(data) != 1:
                raise ValueError(f"a credential names exactly one scheme ({', '.join(SCHEMES)}); list several to accept any of them")
        return data

    @property
    def scheme(self) -> Scheme:
        return next(name for name in SCHEMES if getattr(self, name) is not None)


class SourceAuth(_Strict):
    enabled: bool = True
    credentials: list[Credential] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _list_is_shorthand(cls, data: Any) -> Any:
        return {"credentials": data} if isinstance(data, list) else data


class IntakeAuthFile(_Strict):
    alertmanager: SourceAuth | None = None
    grafana: SourceAuth | None = None
    pagerduty: SourceAuth | None = None
    datadog: SourceAuth | None = None
    sentry: SourceAuth | None = None
    cloudevents: SourceAuth | None = None
    generic: SourceAuth | None = None
    reports: SourceAuth | None = None
    findings: SourceAuth | None = None


# --- what the API uses -----------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedCredential:
    """A credential with its secret read. `where` (e.g. `grafana.credentials.0`) is for logs;
    the secret is kept out of repr so it cannot end up in a log line or a traceback."""

    scheme: Scheme
    where: str
    secret: str = field(repr=False)
    username: str | None = None
    header: str | None = None
    timestamp_header: str | None = None
    require_timestamp: bool = False


@dataclass(frozen=True)
class SourcePolicy:
    enabled: bool = True
    credentials: tuple[ResolvedCredential, ...] = ()


@dataclass(frozen=True)
class IntakeAuthPolicy:
    sources: Mapping[str, SourcePolicy] = field(default_factory=dict)
    file: Path | None = None
    insecure_dev: bool = False

    @classmethod
    def insecure_open(cls) -> IntakeAuthPolicy:
        """No file and --insecure-dev: every source accepts anyone (local demos and tests)."""
        return cls(insecure_dev=True)

    @property
    def mode(self) -> Literal["enforced", "insecure-dev"]:
        return "insecure-dev" if self.insecure_dev else "enforced"

    def for_source(self, name: str) -> SourcePolicy:
        # A source the file does not mention is enabled without credentials: open under
        # --insecure-dev, and refused at start-up (and at request time) otherwise.
        return self.sources.get(name, SourcePolicy())

    def open_sources(self, names: Iterable[str] = INTAKE_SOURCES) -> list[str]:
        """Enabled sources that accept requests without any credential."""
        return [name for name in dict.fromkeys(names) if self.for_source(name).enabled and not self.for_source(name).credentials]

    def require_credentials(self, names: Iterable[str] = INTAKE_SOURCES) -> None:
        """Raise unless every enabled source has a credential, or --insecure-dev was given."""
        open_sources = self.open_sources(names)
        if not open_sources or self.insecure_dev:
            return
        where = f"in {self.file}" if self.file else "(no intake auth file)"
        one = len(open_sources) == 1
        message = (
            f"intake {'source' if one else 'sources'} {', '.join(open_sources)} {'is' if one else 'are'} enabled with no "
            f"credential {where}: anyone who reaches the API could open incidents. Give each a credential "
            f"({', '.join(SCHEMES)}) or `enabled: false`; for a local demo only, pass --insecure-dev."
        )
        raise IntakeAuthError([message])


def _read_secret(path: Path, where: str, ref: _SecretHolder, env: Mapping[str, str]) -> str:
    prefix = ref._prefix
    try:
        return read_secret(getattr(ref, f"{prefix}_env"), getattr(ref, f"{prefix}_file"), path.parent, env, f"{where}.{prefix}")
    except SecretUnavailable as problem:
        raise IntakeAuthError([f"{path}: {problem}"]) from None


def _resolve(path: Path, where: str, credential: Credential, env: Mapping[str, str]) -> ResolvedCredential:
    scheme = credential.scheme
    ref: _SecretHolder = getattr(credential, scheme)
    secret = _read_secret(path, f"{where}.{scheme}", ref, env)
    if scheme == "standard_webhooks":
        _check_standard_webhooks_secret(path, f"{where}.{scheme}", secret)
    if isinstance(ref, BasicRef):
        return ResolvedCredential(scheme, where, secret, username=ref.username)
    if isinstance(ref, GrafanaHmacRef):
        return ResolvedCredential(
            scheme, where, secret, header=ref.header, timestamp_header=ref.timestamp_header, require_timestamp=ref.require_timestamp
        )
    return ResolvedCredential(scheme, where, secret)


def _check_standard_webhooks_secret(path: Path, where: str, secret: str) -> None:
    from standardwebhooks import Webhook
    from standardwebhooks.webhooks import EmptyWebhookSecretError

    try:
        Webhook(secret)
    except (EmptyWebhookSecretError, ValueError, RuntimeError) as exc:  # never echo the secret itself
        raise IntakeAuthError(
            [f"{path}: {where}: not a Standard Webhooks secret (whsec_ followed by base64): {type(exc).__name__}"]
        ) from None


def parse_intake_auth(
    path: Path, text: str | bytes, env: Mapping[str, str] | None = None, *, insecure_dev: bool = False
) -> IntakeAuthPolicy:
    """Validate the file's content and read every secret it refers to."""
    env = os.environ if env is None else env
    document = load_yaml(path, text, IntakeAuthError)
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise IntakeAuthError([f"{path}: (file): expected a mapping of source names, got {type(document).__name__}"])
    lines = [
        f"{path}: {key}: unknown intake source; the sources are {', '.join(INTAKE_SOURCES)}"
        for key in document
        if key not in INTAKE_SOURCES
    ]
    try:
        parsed = IntakeAuthFile.model_validate({key: value for key, value in document.items() if key in INTAKE_SOURCES})
    except ValidationError as exc:
        lines += validation_lines(path, exc)
    if lines:
        raise IntakeAuthError(lines)
    sources: dict[str, SourcePolicy] = {}
    problems: list[str] = []
    for name in INTAKE_SOURCES:
        source: SourceAuth | None = getattr(parsed, name)
        if source is None:
            continue
        resolved = []
        for index, credential in enumerate(source.credentials):
            try:
                resolved.append(_resolve(path, f"{name}.credentials.{index}", credential, env))
            except IntakeAuthError as exc:
                problems.extend(exc.lines)
        sources[name] = SourcePolicy(enabled=source.enabled, credentials=tuple(resolved))
    if problems:
        raise IntakeAuthError(problems)
    return IntakeAuthPolicy(sources=sources, file=path, insecure_dev=insecure_dev)


def load_intake_auth(path: Path, *, explicit: bool, insecure_dev: bool, env: Mapping[str, str] | None = None) -> IntakeAuthPolicy:
    """The policy from `path`. A missing file is an error when it was asked for by name;
    at the default location it means "no credentials at all", which only --insecure-dev allows
    (`require_credentials` says so, naming the sources)."""
    path = Path(path).expanduser()
    if not path.exists():
        if explicit:
            raise IntakeAuthError([f"{path}: the intake auth file does not exist"])
        if insecure_dev:
            return IntakeAuthPolicy.insecure_open()
        message = (
            f"no intake auth file at {path} (set STANCH_INTAKE_AUTH or pass --intake-auth FILE): every intake source "
            f"({', '.join(INTAKE_SOURCES)}) would accept anyone's alerts. Write the file, or pass --insecure-dev "
            "for a local demo only."
        )
        raise IntakeAuthError([message])
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise IntakeAuthError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    return parse_intake_auth(path, text, env, insecure_dev=insecure_dev)
