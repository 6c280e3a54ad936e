"""Who hears about an incident, and how: the notification file, read once when a worker starts.

    channels:
      slack-oncall: {slack: {webhook_url_env: SLACK_ONCALL_URL}}
      pager-bridge: {webhook: {url: "https://bridge.example/hook", secret_env: BRIDGE_WHSEC}}
      email-safety: {email: {smtp_host: mail.example, smtp_port: 587, starttls: true,
                             sender: stanch@example.com, to: [safety@example.com],
                             username: stanch, password_env: SMTP_PASSWORD}}
    recipients:            # the names runbooks use in `notify:` and escalation tiers
      oncall: [slack-oncall, console]
      safety: [email-safety]
      "*": [console]       # anyone not listed (the default)
    board_url: https://stanch.example/board      # default: STANCH_API_URL + /board
    temporal_ui_url: https://temporal.example    # default: STANCH_TEMPORAL_UI; null: no link

`console` is always defined. Secrets (Slack webhook URLs, signing secrets, SMTP passwords)
are never written in the file, only the environment variable or file that holds them, so the
file can be reviewed and committed. A malformed file stops the worker with one line per
problem naming file and field; a secret that is missing only breaks its channel (see
`BrokenChannel`), because a worker that will not start handles no incident at all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import ValidationError

from stanch.config.errors import ConfigFileError, load_yaml, validation_lines
from stanch.config.secrets import SecretUnavailable, read_secret
from stanch.config.settings import Settings
from stanch.notify.channels import (
    ANYONE,
    CONSOLE,
    BrokenChannel,
    Channel,
    ConsoleChannel,
    EmailChannel,
    Links,
    NotifyConfig,
    SlackChannel,
    WebhookChannel,
)
from stanch.notify.schema import (
    ChannelSpec,
    EmailSpec,
    NotifyFile,
    SlackSpec,
    WebhookSpec,
)
from stanch.temporal.client import configured_namespace


class NotifyConfigError(ConfigFileError):
    """The notification file cannot be used; one line per problem, naming file and field."""


def load_notify_config(settings: Settings, env: Mapping[str, str] | None = None) -> NotifyConfig:
    """The configured channels, or console-only when the default file does not exist.

    A path named explicitly (STANCH_NOTIFY) must exist: a typo there would otherwise page
    nobody but the console for every incident."""
    path = settings.notify_config_path
    if not path.exists():
        if settings.notify_config is not None:
            raise NotifyConfigError([f"{path}: (file): STANCH_NOTIFY names this file but it does not exist"])
        return parse_notify_config(None, "", settings, env)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NotifyConfigError([f"{path}: (file): cannot read: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}"]) from None
    return parse_notify_config(path, text, settings, env)


def parse_notify_config(path: Path | None, text: str, settings: Settings, env: Mapping[str, str] | None = None) -> NotifyConfig:
    env = os.environ if env is None else env
    where = str(path) if path else "(no notify file)"
    document = load_yaml(where, text, NotifyConfigError) if text.strip() else {}
    if not isinstance(document, dict):
        raise NotifyConfigError([f"{where}: (file): expected a mapping with channels and recipients, got {type(document).__name__}"])
    try:
        parsed = NotifyFile.model_validate(document)
    except ValidationError as exc:
        raise NotifyConfigError(validation_lines(where, exc)) from None
    lines = [
        f"{where}: recipients.{recipient}.{index}: unknown channel {channel!r}; defined: {', '.join(sorted({*parsed.channels, CONSOLE}))}"
        for recipient, channels in parsed.recipients.items()
        for index, channel in enumerate(channels)
        if channel not in parsed.channels and channel != CONSOLE
    ]
    lines += [
        f"{where}: recipients.{recipient}: list at least one channel" for recipient, channels in parsed.recipients.items() if not channels
    ]
    if lines:
        raise NotifyConfigError(lines)

    links = Links(
        board_url=parsed.board_url or f"{settings.api_url.rstrip('/')}/board",
        # Absent: the installation's Temporal UI; written as null or "": no Temporal link at all.
        temporal_ui_url=parsed.temporal_ui_url if "temporal_ui_url" in parsed.model_fields_set else settings.ui_url,
        # The namespace links point into is the one the workers connect to: Temporal's env config decides.
        namespace=configured_namespace(settings.temporal_namespace),
    )
    base = path.parent if path else settings.home
    channels: dict[str, Channel] = {CONSOLE: ConsoleChannel(name=CONSOLE, links=links, log_dir=settings.notifications_dir)}
    for name, spec in parsed.channels.items():
        channels[name] = _build_channel(name, spec, links, settings, base, env, where)
    recipients = {name: tuple(dict.fromkeys(chosen)) for name, chosen in parsed.recipients.items()}
    recipients.setdefault(ANYONE, (CONSOLE,))
    return NotifyConfig(channels=channels, recipients=recipients, file=path)


def _build_channel(
    name: str, spec: ChannelSpec, links: Links, settings: Settings, base: Path, env: Mapping[str, str], where: str
) -> Channel:
    kind = spec.kind
    options = getattr(spec, kind)
    field = f"channels.{name}.{kind}"
    common = {"name": name, "links": links, "timeout_seconds": options.timeout_seconds}

    def secret(prefix: str) -> str:
        return read_secret(
            getattr(options, f"{prefix}_env", None), getattr(options, f"{prefix}_file", None), base, env, f"{field}.{prefix}"
        )

    try:
        if isinstance(options, SlackSpec):
            url = secret("webhook_url")
            _check_secret_url(url, f"{field}.webhook_url")
            return SlackChannel(**common, webhook_url=url)
        if isinstance(options, WebhookSpec):
            url = options.url or secret("url")
            _check_secret_url(url, f"{field}.url")
            signing = secret("secret")
            _check_signing_secret(signing, f"{field}.secret")
            return WebhookChannel(**common, url=url, secret=signing)
        if isinstance(options, EmailSpec):
            username = options.username or (env.get(options.username_env, "").strip() if options.username_env else None)
            if options.username_env and not username:
                raise SecretUnavailable(f"{field}.username_env: environment variable {options.username_env} is not set or empty")
            password = secret("password") if username else None
            return EmailChannel(
                **common,
                smtp_host=options.smtp_host,
                smtp_port=options.smtp_port,
                sender=options.sender,
                to=tuple(options.to),
                starttls=options.starttls,
                ssl=options.ssl,
                username=username,
                password=password,
            )
        return ConsoleChannel(**common, log_dir=settings.notifications_dir)
    except SecretUnavailable as problem:
        return BrokenChannel(**common, declared_kind=kind, problem=f"not configured: {where}: {problem}")


def _check_secret_url(url: str, field: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SecretUnavailable(f"{field}: the value read is not an http(s) URL")  # never echo it: it is the secret


def _check_signing_secret(secret: str, field: str) -> None:
    from standardwebhooks import Webhook

    try:
        Webhook(secret)
    except Exception as exc:
        raise SecretUnavailable(f"{field}: not a Standard Webhooks secret (whsec_ followed by base64): {type(exc).__name__}") from None
