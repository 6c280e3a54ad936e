"""Grafana Alerting's webhook contact point (payload version 1).

The Alertmanager shape plus Grafana's own fields: `orgId`, `title`, `state`, `message`, and per
alert `values`, `valueString`, `silenceURL`, `dashboardURL`, `panelURL`. Grafana's alert labels
are free-form like Alertmanager's, so severities read from the same table.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from stanch.intake.sources.alertmanager import (
    AlertGroupNotification,
    AlertmanagerAlert,
    severity_from_labels,
)
from stanch.intake.sources.common import model_version_from, parse_time, repro_from
from stanch.models.signals import Signal, SignalSource


class GrafanaAlert(AlertmanagerAlert):
    """One alert: Alertmanager's shape (the strings Grafana sent are part of the signal id,
    which must survive re-notification) plus Grafana's links and query values."""

    silence_url: str = Field("", alias="silenceURL")
    dashboard_url: str = Field("", alias="dashboardURL")
    panel_url: str = Field("", alias="panelURL")
    image_url: str = Field("", alias="imageURL")
    # Query results by refId. Typed loosely: a value Stanch does not read must never be the
    # reason an alert is refused.
    values: dict[str, Any] | None = None
    value_string: str = Field("", alias="valueString")


class GrafanaWebhook(AlertGroupNotification):
    """Grafana Alerting's webhook payload, version 1: Alertmanager's plus org and rendering."""

    version: str = "1"
    alerts: list[GrafanaAlert] = Field(min_length=1)
    org_id: str = Field(alias="orgId")
    state: str = ""
    title: str = ""
    message: str = ""


def grafana_signal_id(webhook: GrafanaWebhook, alert: GrafanaAlert) -> str:
    """Fingerprints are per organisation; the resolved notice needs its own id, or it would
    be dropped as a repeat of the firing one."""
    base = f"grafana:{webhook.org_id}:{alert.fingerprint}:{alert.starts_at}"
    return f"{base}:resolved" if alert.status == "resolved" else base


def _description(annotations: dict[str, str], alert: GrafanaAlert) -> str:
    # The query values are what a responder checks first; Grafana renders them in valueString.
    parts = [annotations.get("description", ""), f"Values: {alert.value_string}" if alert.value_string else ""]
    return "\n".join(part for part in parts if part)


def grafana_signals(webhook: GrafanaWebhook) -> list[Signal]:
    """One Signal per alert of the notification; a pure function of the payload."""
    group: dict[str, Any] = {
        "org_id": webhook.org_id,
        "group_key": webhook.group_key,
        "receiver": webhook.receiver,
        "state": webhook.state,
        "title": webhook.title,
        "message": webhook.message,
        "external_url": webhook.external_url,
    }
    signals = []
    for alert in webhook.alerts:
        labels = alert.labels
        annotations = {**webhook.common_annotations, **alert.annotations}
        links = [url for url in (alert.generator_url, alert.dashboard_url, alert.panel_url) if url]
        signals.append(
            Signal(
                signal_id=grafana_signal_id(webhook, alert),
                source=SignalSource.alert,
                sender="grafana",
                status=alert.status,
                title=annotations.get("summary") or labels.get("alertname") or webhook.title or "Grafana alert",
                description=_description(annotations, alert),
                labels=dict(labels),
                severity_hint=severity_from_labels(labels),
                category=labels.get("category"),
                model=labels.get("model"),
                model_version=model_version_from(labels),
                repro=repro_from(annotations),
                links=links,
                observed_at=parse_time(alert.starts_at),
                raw={**group, "alert": alert.model_dump(mode="json", by_alias=True)},
            )
        )
    return signals
