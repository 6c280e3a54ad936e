"""Datadog's webhook integration, with the payload template Stanch documents.

Datadog posts whatever JSON the webhook's payload template renders. Paste `PAYLOAD_TEMPLATE`
into the webhook's "Payload" field (Integrations > Webhooks) and name the webhook in a
monitor's message (`@webhook-stanch`); Stanch accepts exactly that shape. Datadog substitutes
every `$VARIABLE` as a string.

Tags (`$TAGS`, comma-separated `key:value`) become labels, so tag the monitor with
`model:support-bot`, `category:...` or `alertname:...` to route it to a runbook.
"""

from __future__ import annotations

import json

from pydantic import Field

from stanch.intake.sources.alertmanager import SEVERITY_LABELS
from stanch.intake.sources.common import (
    SenderModel,
    epoch_time,
    key_value_labels,
    model_version_from,
    repro_from,
)
from stanch.models.signals import Severity, Signal, SignalSource

PAYLOAD_TEMPLATE = """\
{
  "id": "$ID",
  "alert_id": "$ALERT_ID",
  "alert_cycle_key": "$ALERT_CYCLE_KEY",
  "alert_transition": "$ALERT_TRANSITION",
  "alert_title": "$ALERT_TITLE",
  "alert_type": "$ALERT_TYPE",
  "alert_priority": "$ALERT_PRIORITY",
  "event_msg": "$EVENT_MSG",
  "tags": "$TAGS",
  "date": "$DATE",
  "link": "$LINK",
  "hostname": "$HOSTNAME",
  "org_id": "$ORG_ID"
}
"""
TEMPLATE_FIELDS = tuple(json.loads(PAYLOAD_TEMPLATE))

# Only a recovery resolves. Every other transition (Triggered, Re-Triggered, Warn, and the
# rarer Re-Warn, No Data, Renotify) is the monitor saying something is wrong: firing.
RESOLVING_TRANSITIONS = frozenset({"recovered"})

# $ALERT_PRIORITY is the monitor's priority, set by its owner: the best hint when present.
PRIORITY_SEVERITY: dict[str, Severity] = {
    "p1": Severity.critical,
    "p2": Severity.high,
    "p3": Severity.medium,
    "p4": Severity.low,
    "p5": Severity.low,
}
# $ALERT_TYPE otherwise; "success" is a recovery and hints nothing.
ALERT_TYPE_SEVERITY: dict[str, Severity] = {
    "error": Severity.high,
    "warning": Severity.medium,
    "info": Severity.low,
}


class DatadogWebhook(SenderModel):
    """The body `PAYLOAD_TEMPLATE` renders."""

    id: str = Field(min_length=1, description="$ID: the event id")
    alert_id: str = Field(min_length=1, description="$ALERT_ID: the monitor id")
    alert_cycle_key: str = Field(min_length=1, description="$ALERT_CYCLE_KEY: one trigger-to-recovery cycle")
    alert_transition: str = Field(min_length=1, description="$ALERT_TRANSITION: Triggered, Re-Triggered, Warn, Recovered, ...")
    alert_title: str = ""
    alert_type: str = ""
    alert_priority: str = ""
    event_msg: str = ""
    tags: str = Field("", description="$TAGS: comma-separated key:value")
    date: str = Field("", description="$DATE: epoch milliseconds")
    link: str = ""
    hostname: str = ""
    org_id: str = ""


def datadog_signal_id(webhook: DatadogWebhook) -> str:
    """One signal per transition of one alert cycle: re-notifications of it are repeats."""
    return f"datadog:{webhook.alert_id}:{webhook.alert_cycle_key}:{webhook.alert_transition}"


def datadog_severity(webhook: DatadogWebhook, labels: dict[str, str]) -> Severity | None:
    """A `severity` tag, else the monitor's priority, else the alert type."""
    return (
        SEVERITY_LABELS.get(labels.get("severity", "").strip().lower())
        or PRIORITY_SEVERITY.get(webhook.alert_priority.strip().lower())
        or ALERT_TYPE_SEVERITY.get(webhook.alert_type.strip().lower())
    )


def datadog_signals(webhook: DatadogWebhook) -> list[Signal]:
    labels = key_value_labels(webhook.tags.split(","))
    labels["datadog_transition"] = webhook.alert_transition
    if webhook.hostname:
        labels.setdefault("host", webhook.hostname)
    resolved = webhook.alert_transition.strip().lower() in RESOLVING_TRANSITIONS
    return [
        Signal(
            signal_id=datadog_signal_id(webhook),
            source=SignalSource.alert,
            sender="datadog",
            status="resolved" if resolved else "firing",
            title=webhook.alert_title or f"Datadog monitor {webhook.alert_id}",
            description=webhook.event_msg,
            labels=labels,
            severity_hint=None if resolved else datadog_severity(webhook, labels),
            category=labels.get("category"),
            model=labels.get("model"),
            model_version=model_version_from(labels),
            repro=repro_from(labels),
            links=[webhook.link] if webhook.link else [],
            observed_at=epoch_time(webhook.date),
            raw=webhook.model_dump(mode="json"),
        )
    ]
