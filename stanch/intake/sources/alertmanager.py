"""Alertmanager's webhook (version 4): one signal per alert of the notified group."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stanch.intake.sources.common import (
    SenderModel,
    model_version_from,
    parse_time,
    repro_from,
)
from stanch.models.signals import Severity, Signal, SignalSource

# Alertmanager severities are free-form labels; these are the spellings seen in the wild.
# Grafana's alerts carry the same free-form labels and use this table too.
SEVERITY_LABELS: dict[str, Severity] = {
    **{s.value: s for s in Severity},
    "warning": Severity.medium,
    "page": Severity.high,
    "error": Severity.high,
}


def severity_from_labels(labels: dict[str, str]) -> Severity | None:
    return SEVERITY_LABELS.get(labels.get("severity", "").strip().lower())


class AlertmanagerAlert(SenderModel):
    status: Literal["firing", "resolved"] = "firing"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # Kept as the strings Alertmanager sent: they are part of the signal id, which must not
    # change when the same alert is re-sent.
    starts_at: str = Field(alias="startsAt")
    ends_at: str | None = Field(None, alias="endsAt")
    generator_url: str = Field("", alias="generatorURL")
    fingerprint: str


class AlertGroupNotification(SenderModel):
    """What Alertmanager's and Grafana's webhooks share: one notification for a group of alerts.
    Each declares its own `alerts`, of its own alert type."""

    version: str
    group_key: str = Field("", alias="groupKey")
    truncated_alerts: int = Field(0, alias="truncatedAlerts")
    status: Literal["firing", "resolved"] = "firing"
    receiver: str = ""
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field("", alias="externalURL")


class AlertmanagerWebhook(AlertGroupNotification):
    """Alertmanager's webhook payload, version 4."""

    version: str = "4"
    alerts: list[AlertmanagerAlert] = Field(min_length=1)


def alertmanager_signal_id(alert: AlertmanagerAlert) -> str:
    """Stable across Alertmanager's repeat notifications of the same firing alert.

    The resolved notification gets its own id, or it would be dropped as a repeat.
    """
    base = f"alertmanager:{alert.fingerprint}:{alert.starts_at}"
    return f"{base}:resolved" if alert.status == "resolved" else base


def alertmanager_signals(webhook: AlertmanagerWebhook) -> list[Signal]:
    """One Signal per alert of the group; a pure function of the payload."""
    signals = []
    for alert in webhook.alerts:
        labels = alert.labels
        annotations = {**webhook.common_annotations, **alert.annotations}
        signals.append(
            Signal(
                signal_id=alertmanager_signal_id(alert),
                source=SignalSource.alert,
                sender="alertmanager",
                status=alert.status,
                title=annotations.get("summary") or labels.get("alertname") or "Alertmanager alert",
                description=annotations.get("description", ""),
                labels=dict(labels),
                severity_hint=severity_from_labels(labels),
                category=labels.get("category"),
                model=labels.get("model"),
                model_version=model_version_from(labels),
                repro=repro_from(annotations),
                links=[alert.generator_url] if alert.generator_url else [],
                observed_at=parse_time(alert.starts_at),
                raw={
                    "group_key": webhook.group_key,
                    "receiver": webhook.receiver,
                    "external_url": webhook.external_url,
                    "alert": alert.model_dump(mode="json", by_alias=True),
                },
            )
        )
    return signals
