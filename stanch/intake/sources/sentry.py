"""Sentry integration-platform webhooks for alerts: metric alerts and issue alerts.

Sentry names the resource in the `Sentry-Hook-Resource` header (`metric_alert`,
`event_alert`); without the header the body's shape decides (`data.metric_alert` or
`data.event`). Other resources (installation, issue, error, comment) carry no alert.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from stanch.intake.sources.alertmanager import SEVERITY_LABELS
from stanch.intake.sources.common import (
    SenderModel,
    model_version_from,
    parse_time,
    query_labels,
    repro_from,
)
from stanch.models.signals import Severity, Signal, SignalSource

ALERT_RESOURCES = ("metric_alert", "event_alert")

# A metric alert's `action` is the trigger that crossed; "resolved" hints nothing.
METRIC_ACTION_SEVERITY: dict[str, Severity] = {"critical": Severity.critical, "warning": Severity.medium}
# An issue alert's event level, Sentry's spelling.
EVENT_LEVEL_SEVERITY: dict[str, Severity] = {
    "fatal": Severity.critical,
    "error": Severity.high,
    "warning": Severity.medium,
    "info": Severity.low,
    "debug": Severity.low,
}


class SentryAlertRule(SenderModel):
    id: str | None = None
    name: str = ""
    query: str = ""
    environment: str | None = None
    aggregate: str = ""


class SentryMetricAlert(SenderModel):
    id: str = Field(min_length=1)
    title: str = ""
    identifier: str | None = None
    alert_rule: SentryAlertRule | None = None
    projects: list[str] = Field(default_factory=list)
    date_started: str | None = None
    date_detected: str | None = None
    date_closed: str | None = None


class SentryMetricAlertData(SenderModel):
    metric_alert: SentryMetricAlert
    description_text: str = ""
    description_title: str = ""
    web_url: str = ""


class SentryMetricAlertWebhook(SenderModel):
    """`Sentry-Hook-Resource: metric_alert`."""

    action: Literal["critical", "warning", "resolved"]
    data: SentryMetricAlertData
    installation: dict[str, Any] | None = None
    actor: dict[str, Any] | None = None


class SentryEvent(SenderModel):
    event_id: str = Field(min_length=1)
    title: str = ""
    message: str = ""
    level: str | None = None
    # [[key, value], ...]; Sentry writes null for a tag with no value.
    tags: list[tuple[str, str | None]] = Field(default_factory=list)
    web_url: str = ""
    issue_id: str | None = None
    release: str | None = None
    environment: str | None = None
    datetime: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class SentryIssueAlertData(SenderModel):
    event: SentryEvent
    triggered_rule: str = ""
    issue_alert: dict[str, Any] | None = None


class SentryIssueAlertWebhook(SenderModel):
    """`Sentry-Hook-Resource: event_alert`."""

    action: Literal["triggered"] = "triggered"
    data: SentryIssueAlertData
    installation: dict[str, Any] | None = None
    actor: dict[str, Any] | None = None


def resource_of(body: Any) -> str | None:
    """What the body looks like when the header is absent: `metric_alert`, `event_alert`, None."""
    data = body.get("data") if isinstance(body, dict) else None
    if isinstance(data, dict) and "metric_alert" in data:
        return "metric_alert"
    if isinstance(data, dict) and "event" in data:
        return "event_alert"
    return None


def metric_alert_signals(webhook: SentryMetricAlertWebhook) -> list[Signal]:
    alert, data = webhook.data.metric_alert, webhook.data
    rule = alert.alert_rule or SentryAlertRule()
    # The rule's query filters (`model:support-bot`) are the dimensions it watches.
    labels = query_labels(rule.query)
    labels["sentry_action"] = webhook.action
    if rule.name or alert.title:
        labels.setdefault("alertname", rule.name or alert.title)
    if rule.environment:
        labels.setdefault("environment", rule.environment)
    if alert.projects:
        labels.setdefault("project", ",".join(alert.projects))
    resolved = webhook.action == "resolved"
    return [
        Signal(
            # One signal per level the alert reaches, and one for its resolution.
            signal_id=f"sentry:metric_alert:{alert.id}:{webhook.action}",
            source=SignalSource.alert,
            sender="sentry",
            status="resolved" if resolved else "firing",
            title=data.description_title or alert.title or rule.name or "Sentry metric alert",
            description=data.description_text,
            labels=labels,
            severity_hint=SEVERITY_LABELS.get(labels.get("severity", "").lower()) or METRIC_ACTION_SEVERITY.get(webhook.action),
            category=labels.get("category"),
            model=labels.get("model"),
            model_version=model_version_from(labels),
            links=[data.web_url] if data.web_url else [],
            observed_at=parse_time(alert.date_closed if resolved else (alert.date_started or alert.date_detected)),
            raw=webhook.model_dump(mode="json", by_alias=True),
        )
    ]


def issue_alert_signals(webhook: SentryIssueAlertWebhook) -> list[Signal]:
    event, data = webhook.data.event, webhook.data
    labels = {key: value or "" for key, value in event.tags}
    if data.triggered_rule:
        labels.setdefault("alertname", data.triggered_rule)
    if event.environment:
        labels.setdefault("environment", event.environment)
    if event.release:
        labels.setdefault("release", event.release)
    hint = SEVERITY_LABELS.get(labels.get("severity", "").lower()) or EVENT_LEVEL_SEVERITY.get(
        (event.level or labels.get("level", "")).lower()
    )
    return [
        Signal(
            signal_id=f"sentry:event:{event.event_id}",
            source=SignalSource.alert,
            sender="sentry",
            status="firing",  # issue alerts have no resolved notice
            title=event.title or data.triggered_rule or "Sentry issue alert",
            description=event.message,
            labels=labels,
            severity_hint=hint,
            category=labels.get("category"),
            model=labels.get("model"),
            model_version=model_version_from(labels),
            repro=repro_from({**labels, **event.extra}),
            links=[event.web_url] if event.web_url else [],
            observed_at=parse_time(event.datetime),
            raw=webhook.model_dump(mode="json", by_alias=True),
        )
    ]
