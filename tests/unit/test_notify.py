"""Notification channels without a network: the file's validation, who gets what, the exact
payloads each channel sends, and the notify activity's idempotency and failure rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.notify import NotifyActivities
from stanch.config.settings import Settings
from stanch.models.activity_io import Notification
from stanch.models.signals import Severity
from stanch.notify import (
    BrokenChannel,
    Channel,
    ChannelError,
    ConsoleChannel,
    DeliveryLedger,
    NotifyConfigError,
    WebhookChannel,
    load_notify_config,
    parse_notify_config,
    slack,
    webhook,
)
from stanch.notify import email as email_channel
from stanch.stores.records import RecordsError
from stanch.temporal.activity_deps import ActivityDeps

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SLACK_URL = "https://hooks.slack.example/services/T000/B000/XXXXSECRETXXXX"
ENV = {"SLACK_ONCALL_URL": SLACK_URL, "BRIDGE_WHSEC": SECRET, "SMTP_PASSWORD": "hunter2-smtp"}

FULL = """
channels:
  slack-oncall: {slack: {webhook_url_env: SLACK_ONCALL_URL}}
  pager-bridge: {webhook: {url: "https://bridge.example/hook", secret_env: BRIDGE_WHSEC}}
  email-safety:
    email: {smtp_host: 127.0.0.1, smtp_port: 2525, sender: stanch@example.com, to: [safety@example.com],
            username: stanch, password_env: SMTP_PASSWORD}
recipients:
  oncall: [slack-oncall, console]
  incident-commander: [slack-oncall, pager-bridge]
  safety: [email-safety]
  "*": [pager-bridge]
board_url: https://stanch.example/board
"""


def settings_for(home: Path, **extra) -> Settings:
    return Settings(home=home, api_url="http://127.0.0.1:8200", ui_url="http://127.0.0.1:8233", **extra)


def parse(text: str, home: Path, env: dict[str, str] | None = None, name: str = "notify.yaml"):
    return parse_notify_config(home / name, text, settings_for(home), ENV if env is None else env)


def refusal(text: str, home: Path) -> str:
    with pytest.raises(NotifyConfigError) as caught:
        parse(text, home)
    return str(caught.value)


def notification(**changes) -> Notification:
    values = {
        "incident_id": "leak-support-bot-0123456789",
        "kind": "page",
        "recipients": ["oncall"],
        "message": "new incident: support-bot v2 leaks <secrets> & keys",
        "severity": Severity.critical,
        "tier": 1,
        "dedup_id": "leak-support-bot-0123456789@abcd1234/notify/1",
    }
    return Notification(**{**values, **changes})


# --- the file ------------------------------------------------------------------------------


def test_a_full_file_parses_into_channels_with_their_secrets(tmp_path: Path) -> None:
    config = parse(FULL, tmp_path)
    assert set(config.channels) == {"console", "slack-oncall", "pager-bridge", "email-safety"}
    assert config.channels["slack-oncall"].webhook_url == SLACK_URL
    assert config.channels["email-safety"].password == "hunter2-smtp"
    assert SLACK_URL not in repr(config) and SECRET not in repr(config) and "hunter2" not in repr(config)


def test_an_unknown_key_names_the_file_and_the_field(tmp_path: Path) -> None:
    message = refusal("channels:\n  slack-oncall: {slack: {webhook_url_env: X, colour: red}}\n", tmp_path)
    assert message == f"{tmp_path / 'notify.yaml'}: channels.slack-oncall.slack.colour: unknown key"


@pytest.mark.parametrize(
    ("text", "field", "secret"),
    [
        ("channels:\n  s: {slack: {webhook_url: 'https://hooks.slack.com/services/T/B/SEKRIT'}}\n", "channels.s.slack", "SEKRIT"),
        ("channels:\n  w: {webhook: {url: 'https://x.example/h', secret: 'whsec_SEKRIT'}}\n", "channels.w.webhook", "SEKRIT"),
        ("channels:\n  w: {webhook: {url: 'https://x.example/h?token=SEKRIT', secret_env: S}}\n", "channels.w.webhook.url", "SEKRIT"),
        ("channels:\n  w: {webhook: {url: 'https://u:SEKRIT@x.example/h', secret_env: S}}\n", "channels.w.webhook.url", "SEKRIT"),
        (
            "channels:\n  e: {email: {smtp_host: h, sender: a@b.c, to: [d@e.f], username: u, password: SEKRIT}}\n",
            "channels.e.email",
            "SEKRIT",
        ),
        ("channels:\n  s: {slack: {webhook_url_env: 'https://hooks.slack.com/SEKRIT'}}\n", "channels.s.slack.webhook_url_env", "SEKRIT"),
    ],
)
def test_an_inline_secret_is_refused_without_being_repeated(tmp_path: Path, text: str, field: str, secret: str) -> None:
    message = refusal(text, tmp_path)
    assert message.startswith(f"{tmp_path / 'notify.yaml'}: {field}: ")
    assert "secret" in message or "environment variable" in message
    assert secret not in message


def test_recipients_must_name_defined_channels(tmp_path: Path) -> None:
    message = refusal("recipients:\n  oncall: [console, slakc-oncall]\n  safety: []\n", tmp_path)
    assert f"{tmp_path / 'notify.yaml'}: recipients.oncall.1: unknown channel 'slakc-oncall'; defined: console" in message
    assert f"{tmp_path / 'notify.yaml'}: recipients.safety: list at least one channel" in message


def test_a_channel_is_exactly_one_kind(tmp_path: Path) -> None:
    assert "channels.x: unknown channel kind 'pagerduty'" in refusal("channels:\n  x: {pagerduty: {}}\n", tmp_path)
    assert "channels.x: a channel is exactly one of" in refusal("channels:\n  x: {console: {}, slack: {webhook_url_env: A}}\n", tmp_path)


def test_a_yaml_error_gives_its_position(tmp_path: Path) -> None:
    message = refusal("channels:\n  x: {console: {}}}\n", tmp_path)
    assert message.startswith(f"{tmp_path / 'notify.yaml'}: line 2, column 19: YAML syntax error")


def test_a_missing_secret_breaks_only_its_channel_and_says_where(tmp_path: Path) -> None:
    config = parse(FULL, tmp_path, env={"BRIDGE_WHSEC": SECRET, "SMTP_PASSWORD": "p"})
    broken = config.channels["slack-oncall"]
    assert isinstance(broken, BrokenChannel) and broken.kind == "slack"
    assert broken.problem == (
        f"not configured: {tmp_path / 'notify.yaml'}: channels.slack-oncall.slack.webhook_url_env: "
        "environment variable SLACK_ONCALL_URL is not set or empty"
    )
    assert isinstance(config.channels["pager-bridge"], WebhookChannel)


def test_a_bad_signing_secret_breaks_the_webhook_channel(tmp_path: Path) -> None:
    config = parse(FULL, tmp_path, env={**ENV, "BRIDGE_WHSEC": "not base64!"})
    assert "channels.pager-bridge.webhook.secret: not a Standard Webhooks secret" in config.channels["pager-bridge"].problem


def test_secrets_can_come_from_files_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "slack").write_text(SLACK_URL + "\n")
    config = parse("channels:\n  s: {slack: {webhook_url_file: secrets/slack}}\n", tmp_path, env={})
    assert config.channels["s"].webhook_url == SLACK_URL


def test_without_a_file_everyone_goes_to_the_console(tmp_path: Path) -> None:
    config = load_notify_config(settings_for(tmp_path))
    assert [channel.name for channel in config.channels_for(["oncall", "executive"])] == ["console"]
    assert isinstance(config.channels["console"], ConsoleChannel)


def test_a_named_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    settings = Settings.from_env({"STANCH_HOME": str(tmp_path), "STANCH_NOTIFY": str(tmp_path / "nope.yaml")})
    assert settings.notify_config_path == tmp_path / "nope.yaml"
    assert settings.child_env()["STANCH_NOTIFY"] == str(tmp_path / "nope.yaml")
    with pytest.raises(NotifyConfigError, match="nope.yaml: \\(file\\): STANCH_NOTIFY names this file but it does not exist"):
        load_notify_config(settings)


# --- who hears about it --------------------------------------------------------------------


def test_recipients_resolve_to_each_channel_once_with_the_star_for_the_rest(tmp_path: Path) -> None:
    config = parse(FULL, tmp_path)

    def names(recipients):
        return [channel.name for channel in config.channels_for(recipients)]

    assert names(["oncall"]) == ["slack-oncall", "console"]
    assert names(["oncall", "incident-commander"]) == ["slack-oncall", "console", "pager-bridge"]
    assert names(["executive"]) == ["pager-bridge"]  # not listed: "*"
    assert names([]) == ["pager-bridge"]  # addressed to no one still reaches someone


def test_without_a_star_unlisted_recipients_reach_the_console(tmp_path: Path) -> None:
    config = parse("recipients:\n  oncall: [console]\n", tmp_path)
    assert [channel.name for channel in config.channels_for(["executive"])] == ["console"]


# --- what each channel sends ----------------------------------------------------------------


def test_the_slack_message_is_block_kit_with_board_and_temporal_buttons(tmp_path: Path) -> None:
    channel = parse(FULL, tmp_path).channels["slack-oncall"]
    payload = slack.build_payload(notification(), channel)
    header, section, context, actions = payload["blocks"]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert "CRITICAL" in header["text"]["text"] and "leak-support-bot-0123456789" in header["text"]["text"]
    # Slack control characters are escaped: model output quoted in a message cannot ping or link.
    assert section["text"]["text"] == "new incident: support-bot v2 leaks &lt;secrets&gt; &amp; keys"
    assert "`page`" in context["elements"][0]["text"] and "tier 1" in context["elements"][0]["text"]
    assert "oncall" in context["elements"][0]["text"]
    board, temporal = actions["elements"]
    assert board["text"]["text"] == "Open in Stanch board"
    assert board["url"] == "https://stanch.example/board/incidents/leak-support-bot-0123456789"
    assert temporal["url"] == "http://127.0.0.1:8233/namespaces/default/workflows/leak-support-bot-0123456789"
    assert payload["text"].startswith("[CRITICAL] New incident: leak-support-bot-0123456789")


def test_no_temporal_button_when_the_file_turns_it_off(tmp_path: Path) -> None:
    text = "channels:\n  s: {slack: {webhook_url_env: SLACK_ONCALL_URL}}\ntemporal_ui_url: null\n"
    payload = slack.build_payload(notification(), parse(text, tmp_path).channels["s"])
    (board,) = payload["blocks"][-1]["elements"]
    assert board["url"] == "http://127.0.0.1:8200/board/incidents/leak-support-bot-0123456789"  # default: STANCH_API_URL/board


def test_the_webhook_is_signed_per_standard_webhooks(tmp_path: Path) -> None:
    channel = parse(FULL, tmp_path).channels["pager-bridge"]
    body, headers = webhook.build_request(notification(), channel)
    assert headers["webhook-id"] == "leak-support-bot-0123456789@abcd1234/notify/1/pager-bridge"
    received = Webhook(SECRET).verify(body, headers)
    assert Notification.model_validate(received) == notification()
    assert received["links"]["board"] == "https://stanch.example/board/incidents/leak-support-bot-0123456789"
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace("critical", "low"), headers)
    # A retry signs again with a new timestamp but keeps the id receivers deduplicate on.
    _, later = webhook.build_request(notification(), channel, now=datetime(2030, 1, 1, tzinfo=UTC))
    assert later["webhook-id"] == headers["webhook-id"] and later["webhook-timestamp"] == "1893456000"


def test_the_email_has_the_subject_a_stable_message_id_and_the_board_link(tmp_path: Path) -> None:
    channel = parse(FULL, tmp_path).channels["email-safety"]
    message = email_channel.build_message(notification(kind="report_reminder"), channel)
    assert message["Subject"] == "[Stanch][critical] leak-support-bot-0123456789: report_reminder"
    assert message["Message-ID"] == email_channel.build_message(notification(kind="report_reminder"), channel)["Message-ID"]
    assert message["Message-ID"].endswith("@example.com>")
    assert message["Message-ID"] != email_channel.build_message(notification(dedup_id="other"), channel)["Message-ID"]
    assert "https://stanch.example/board/incidents/leak-support-bot-0123456789" in message.get_content()


# --- the activity ---------------------------------------------------------------------------


class FakeChannels:
    """Stands in for the network: records deliveries, fails the channels it is told to."""

    def __init__(self, failing: dict[str, Exception] | None = None) -> None:
        self.failing = failing or {}
        self.sent: list[tuple[str, str]] = []

    async def __call__(self, note: Notification, channel: Channel) -> None:
        if channel.name in self.failing:
            raise self.failing[channel.name]
        if isinstance(channel, BrokenChannel):
            raise ChannelError(channel.problem)
        self.sent.append((note.dedup_id, channel.name))


def activities(tmp_path: Path, fake: FakeChannels, text: str = FULL, env: dict[str, str] | None = None) -> NotifyActivities:
    settings = settings_for(tmp_path)
    return NotifyActivities(ActivityDeps.from_settings(settings), config=parse(text, tmp_path, env), deliver_to=fake)


async def run(acts: NotifyActivities, note: Notification):
    return await ActivityEnvironment().run(acts.deliver, note)


async def test_a_retry_skips_channels_already_delivered(tmp_path: Path) -> None:
    fake = FakeChannels()
    acts = activities(tmp_path, fake)
    first = await run(acts, notification(recipients=["oncall", "incident-commander"]))
    assert first.delivered == ["slack-oncall", "console", "pager-bridge"] and first.failed == []
    again = await run(activities(tmp_path, fake), notification(recipients=["oncall", "incident-commander"]))  # a new worker, same home
    assert again.delivered == first.delivered and again.already_delivered == first.delivered
    assert len(fake.sent) == 3
    await run(acts, notification(dedup_id="another/notify/2"))
    assert len(fake.sent) == 5  # a new notification is delivered again


async def test_a_failing_channel_is_reported_while_the_others_deliver(tmp_path: Path) -> None:
    fake = FakeChannels({"slack-oncall": ChannelError(f"Slack webhook answered HTTP 404: no_service at {SLACK_URL}")})
    acts = activities(tmp_path, fake)
    result = await run(acts, notification())
    assert result.delivered == ["console"]
    assert result.failed == ["slack-oncall: Slack webhook answered HTTP 404: no_service at ***"]  # the URL is the secret
    # The next attempt tries the failed channel again, and only that one.
    fake.failing.clear()
    retry = await run(acts, notification())
    assert retry.delivered == ["slack-oncall", "console"] and retry.already_delivered == ["console"]
    assert fake.sent == [(notification().dedup_id, "console"), (notification().dedup_id, "slack-oncall")]


async def test_a_crashing_channel_is_a_failure_of_that_channel_only(tmp_path: Path) -> None:
    acts = activities(tmp_path, FakeChannels({"pager-bridge": KeyError("links")}))
    result = await run(acts, notification(recipients=["incident-commander"]))
    assert result.delivered == ["slack-oncall"] and result.failed == ["pager-bridge: KeyError: 'links'"]


BLIP = "the records database sqlite:///stanch.db (STANCH_DATABASE_URL) failed: database is locked"


class LedgerThatCannotRecord(DeliveryLedger):
    """The records database has a blip after the sends: reading works, writing one channel's row fails."""

    def __init__(self, ledger: DeliveryLedger, failing_channel: str) -> None:
        super().__init__(ledger.records)
        self.failing_channel = failing_channel

    def record(self, dedup_id: str, channel: str, incident_id: str) -> None:
        if channel == self.failing_channel:
            raise RecordsError(BLIP)
        super().record(dedup_id, channel, incident_id)


async def test_a_delivery_the_ledger_cannot_record_counts_as_delivered_and_is_reported(tmp_path: Path) -> None:
    fake = FakeChannels()
    acts = activities(tmp_path, fake)
    acts.ledger = LedgerThatCannotRecord(acts.ledger, "slack-oncall")
    note = notification(recipients=["oncall", "incident-commander"])
    result = await run(acts, note)  # no error: an activity retry would page slack-oncall again
    assert result.delivered == ["slack-oncall", "console", "pager-bridge"]
    assert result.failed == [f"slack-oncall: delivered, not recorded: {BLIP}"]
    assert sorted(fake.sent) == sorted((note.dedup_id, name) for name in result.delivered)  # each channel paged once


async def test_every_channel_failing_raises_a_retryable_error(tmp_path: Path) -> None:
    fake = FakeChannels({"email-safety": ChannelError("SMTP 127.0.0.1:2525: ConnectionRefusedError: [Errno 111] Connection refused")})
    with pytest.raises(ApplicationError) as caught:
        await run(activities(tmp_path, fake), notification(recipients=["safety"]))
    assert caught.value.type == "NotificationUndelivered" and not caught.value.non_retryable
    assert "no channel delivered page for leak-support-bot-0123456789: email-safety: SMTP 127.0.0.1:2525" in caught.value.message


async def test_only_misconfigured_channels_fail_for_good(tmp_path: Path) -> None:
    text = "channels:\n  slack-oncall: {slack: {webhook_url_env: SLACK_ONCALL_URL}}\nrecipients:\n  oncall: [slack-oncall]\n"
    with pytest.raises(ApplicationError) as caught:
        await run(activities(tmp_path, FakeChannels(), text=text, env={}), notification())
    assert caught.value.type == "NotificationChannelsMisconfigured" and caught.value.non_retryable  # retrying cannot set the variable
    assert "SLACK_ONCALL_URL is not set" in caught.value.message


async def test_the_console_channel_writes_the_incident_log(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    acts = NotifyActivities(ActivityDeps.from_settings(settings))  # no file: console only, real delivery
    result = await run(acts, notification(recipients=["executive"]))
    assert result.delivered == ["console"]
    (line,) = (settings.notifications_dir / "leak-support-bot-0123456789.jsonl").read_text().splitlines()
    assert json.loads(line)["dedup_id"] == notification().dedup_id
    assert (await run(acts, notification(recipients=["executive"]))).already_delivered == ["console"]
    assert len((settings.notifications_dir / "leak-support-bot-0123456789.jsonl").read_text().splitlines()) == 1


async def test_a_dry_runs_notifications_go_to_the_console_only(tmp_path: Path) -> None:
    fake = FakeChannels()
    result = await run(activities(tmp_path, fake), notification(recipients=["oncall", "incident-commander"], dry_run=True))
    assert result.delivered == ["console"] and fake.sent == [(notification().dedup_id, "console")]
