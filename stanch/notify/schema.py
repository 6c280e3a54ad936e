"""The notification file's shape: what a channel and a recipient list may say.

Validation only; `stanch.notify.config` reads the file and the secrets it points to.
Keys that would hold a secret inline (a Slack webhook URL, a signing secret, a password, a
URL with credentials in it) are refused by name, so a pasted secret never gets past review.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
CHANNEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
ADDRESS = r"^[^@\s<>]+@[^@\s<>]+$"
KINDS = ("slack", "webhook", "email", "console")
# Query parameters that carry a credential: such a URL belongs in url_env / url_file.
_CREDENTIAL_PARAMS = {"token", "key", "apikey", "api_key", "secret", "sig", "signature", "password", "auth", "code", "access_token"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _ChannelSpec(_Strict):
    # Each channel keeps well inside the notify activity's 30 s start-to-close timeout.
    timeout_seconds: float = Field(10.0, gt=0, le=25)
    _refused: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, instead in cls._refused.items():
                if key in data:
                    raise ValueError(f"`{key}` would put a secret in this file, which is refused: use {instead}")
        return data


def _exactly_one(spec: BaseModel, *names: str) -> None:
    given = [name for name in names if getattr(spec, name) is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {' or '.join(names)}" + (", not several" if given else ""))


class SlackSpec(_ChannelSpec):
    _refused: ClassVar[dict[str, str]] = {
        "webhook_url": "webhook_url_env or webhook_url_file",
        "url": "webhook_url_env or webhook_url_file",
    }
    webhook_url_env: str | None = Field(None, pattern=ENV_NAME)
    webhook_url_file: Path | None = None

    @model_validator(mode="after")
    def _one_place(self) -> SlackSpec:
        _exactly_one(self, "webhook_url_env", "webhook_url_file")
        return self


class WebhookSpec(_ChannelSpec):
    _refused: ClassVar[dict[str, str]] = {"secret": "secret_env or secret_file"}
    url: str | None = None
    url_env: str | None = Field(None, pattern=ENV_NAME)
    url_file: Path | None = None
    secret_env: str | None = Field(None, pattern=ENV_NAME, description="Standard Webhooks signing secret (whsec_...)")
    secret_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _url_without_credentials(cls, url: str | None) -> str | None:
        if url is not None:
            _check_plain_url(url)
        return url

    @model_validator(mode="after")
    def _one_place_each(self) -> WebhookSpec:
        _exactly_one(self, "url", "url_env", "url_file")
        _exactly_one(self, "secret_env", "secret_file")
        return self


class EmailSpec(_ChannelSpec):
    _refused: ClassVar[dict[str, str]] = {"password": "password_env or password_file"}
    smtp_host: str = Field(min_length=1)
    smtp_port: int = Field(25, ge=1, le=65535)
    sender: str = Field(pattern=ADDRESS)
    to: list[str] = Field(min_length=1)
    starttls: bool = False
    ssl: bool = Field(False, description="implicit TLS (port 465); starttls upgrades a plain connection instead")
    username: str | None = None
    username_env: str | None = Field(None, pattern=ENV_NAME)
    password_env: str | None = Field(None, pattern=ENV_NAME)
    password_file: Path | None = None

    @field_validator("to")
    @classmethod
    def _addresses(cls, to: list[str]) -> list[str]:
        bad = [address for address in to if not re.match(ADDRESS, address)]
        if bad:
            raise ValueError(f"not an email address: {bad[0]!r}")
        return to

    @model_validator(mode="after")
    def _consistent(self) -> EmailSpec:
        if self.ssl and self.starttls:
            raise ValueError("ssl (implicit TLS) and starttls exclude each other")
        has_user = self.username is not None or self.username_env is not None
        has_password = self.password_env is not None or self.password_file is not None
        if self.username is not None and self.username_env is not None:
            raise ValueError("give username or username_env, not both")
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        if has_user != has_password:
            raise ValueError("SMTP login needs both a username and a password (password_env or password_file)")
        return self


class ConsoleSpec(_ChannelSpec):
    pass


class ChannelSpec(_Strict):
    """One channel: exactly one of the kinds."""

    slack: SlackSpec | None = None
    webhook: WebhookSpec | None = None
    email: EmailSpec | None = None
    console: ConsoleSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [str(key) for key in data if key not in KINDS]
            if unknown:
                raise ValueError(f"unknown channel kind {unknown[0]!r}; use one of {', '.join(KINDS)}")
            if len(data) != 1:
                raise ValueError(f"a channel is exactly one of {', '.join(KINDS)}")
        return data

    @property
    def kind(self) -> str:
        return next(name for name in KINDS if getattr(self, name) is not None)


class NotifyFile(_Strict):
    channels: dict[str, ChannelSpec] = Field(default_factory=dict)
    recipients: dict[str, list[str]] = Field(default_factory=dict)
    board_url: str | None = None
    temporal_ui_url: str | None = None

    @field_validator("channels")
    @classmethod
    def _channel_names(cls, channels: dict[str, ChannelSpec]) -> dict[str, ChannelSpec]:
        bad = [name for name in channels if not re.match(CHANNEL_NAME, name)]
        if bad:
            raise ValueError(f"channel name {bad[0]!r}: use letters, digits, '-', '_' or '.'")
        return channels

    @field_validator("board_url", "temporal_ui_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url:
            _check_plain_url(url)
        return url


def _check_plain_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError("a URL with user:password would put a secret in this file: use url_env or url_file")
    if any(name.lower() in _CREDENTIAL_PARAMS for name, _ in parse_qsl(parts.query)):
        raise ValueError("a URL with a credential in its query would put a secret in this file: use url_env or url_file")
