"""Intake routes: monitoring raises an alert, Stanch opens (or joins) an incident.

Every sender's payload is normalised into Stanch's own `Signal`; each signal goes through
`open_or_join` one by one, and the webhook hears 202 only once Temporal recorded all of them.
A sender that retries after an error is safe: signals are deduplicated by their id.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from stanch.api.deps import Intake, IntakeDep
from stanch.models import ReproCase, Severity, Signal, SignalSource

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/alerts", tags=["intake"])

# Alertmanager severities are free-form labels; these are the spellings seen in the wild.
SEVERITY_LABELS: dict[str, Severity] = {
    **{s.value: s for s in Severity},
    "warning": Severity.medium,
    "page": Severity.high,
    "error": Severity.high,
}


class AlertmanagerAlert(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    status: Literal["firing", "resolved"] = "firing"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # Kept as the strings Alertmanager sent: they are part of the signal id, which must not
    # change when the same alert is re-sent.
    starts_at: str = Field(alias="startsAt")
    ends_at: str | None = Field(None, alias="endsAt")
    generator_url: str = Field("", alias="generatorURL")
    fingerprint: str


class AlertmanagerWebhook(BaseModel):
    """Alertmanager's webhook payload, version 4."""

    model_config = ConfigDict(populate_by_name=True)

    version: str = "4"
    group_key: str = Field("", alias="groupKey")
    truncated_alerts: int = Field(0, alias="truncatedAlerts")
    status: Literal["firing", "resolved"] = "firing"
    receiver: str = ""
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field("", alias="externalURL")
    alerts: list[AlertmanagerAlert] = Field(min_length=1)


class OpenedIncident(BaseModel):
    incident_id: str
    runbook: str
    signal_id: str


class IntakeResponse(BaseModel):
    incidents: list[OpenedIncident]


def _parse_time(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


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
        repro = []
        if annotations.get("repro_prompt"):
            repro.append(ReproCase(prompt=annotations["repro_prompt"], output=annotations.get("repro_output")))
        signals.append(
            Signal(
                signal_id=alertmanager_signal_id(alert),
                source=SignalSource.alert,
                sender="alertmanager",
                status=alert.status,
                title=annotations.get("summary") or labels.get("alertname") or "Alertmanager alert",
                description=annotations.get("description", ""),
                labels=dict(labels),
                severity_hint=SEVERITY_LABELS.get(labels.get("severity", "").strip().lower()),
                category=labels.get("category"),
                model=labels.get("model"),
                model_version=labels.get("model_version") or labels.get("version"),
                repro=repro,
                links=[alert.generator_url] if alert.generator_url else [],
                observed_at=_parse_time(alert.starts_at),
                raw={
                    "group_key": webhook.group_key,
                    "receiver": webhook.receiver,
                    "external_url": webhook.external_url,
                    "alert": alert.model_dump(mode="json", by_alias=True),
                },
            )
        )
    return signals


async def _take_in(intake: Intake, signals: list[Signal]) -> IntakeResponse:
    # One after another: any failure propagates before the 202, and the sender's retry
    # re-delivers everything; the ones already recorded are dropped as duplicates.
    opened = []
    for signal in signals:
        result = await intake(signal)
        opened.append(OpenedIncident(incident_id=result.incident_id, runbook=result.runbook, signal_id=signal.signal_id))
    return IntakeResponse(incidents=opened)


_INTAKE_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"description": "Temporal is unreachable; nothing was recorded reliably. Retry after `Retry-After` seconds."},
}


@router.post(
    "/alertmanager",
    status_code=202,
    response_model=IntakeResponse,
    responses=_INTAKE_RESPONSES,
    summary="Alertmanager webhook (v4)",
)
async def alertmanager_webhook(webhook: AlertmanagerWebhook, intake: IntakeDep) -> IntakeResponse:
    """Each alert in the group becomes its own signal and opens or joins an incident.

    Labels `severity`, `category`, `model`, `model_version`/`version` and annotations
    `summary`, `description`, `repro_prompt`, `repro_output` are understood.
    """
    if webhook.truncated_alerts:
        log.warning("alertmanager group %s truncated %d alerts; raise max_alerts", webhook.group_key, webhook.truncated_alerts)
    return await _take_in(intake, alertmanager_signals(webhook))


@router.post(
    "/generic",
    status_code=202,
    response_model=IntakeResponse,
    responses=_INTAKE_RESPONSES,
    summary="Any sender, in Stanch's own Signal schema",
)
async def generic_alert(signal: Signal, intake: IntakeDep) -> IntakeResponse:
    """The signal opens or joins the incident its runbook's dedup key names.

    Give each distinct alert a stable `signal_id`: repeats with the same id are ignored.
    """
    return await _take_in(intake, [signal])
