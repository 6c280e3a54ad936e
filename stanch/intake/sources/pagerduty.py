"""PagerDuty Events API v2 bodies: a tool that can page PagerDuty can page Stanch.

`routing_key` is PagerDuty's integration credential: it is accepted (senders always include
it) and then dropped, never reaching labels, title, raw or workflow history.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from stanch.intake.sources.alertmanager import SEVERITY_LABELS
from stanch.intake.sources.common import (
    SenderModel,
    canonical_sha256,
    model_version_from,
    parse_time,
    repro_from,
    scalar_labels,
)
from stanch.models.signals import Severity, Signal, SignalSource

# PagerDuty's four severities, in its own words.
PAGERDUTY_SEVERITY: dict[str, Severity] = {
    "critical": Severity.critical,
    "error": Severity.high,
    "warning": Severity.medium,
    "info": Severity.low,
}

# acknowledge and resolve are closing notices: recorded on the open incident, never new harm.
_ACTION_STATUS: dict[str, Literal["firing", "resolved", "acknowledged"]] = {
    "trigger": "firing",
    "acknowledge": "acknowledged",
    "resolve": "resolved",
}


class PagerDutyPayload(SenderModel):
    summary: str = Field(min_length=1)
    source: str = Field(min_length=1)
    severity: Literal["critical", "error", "warning", "info"]
    timestamp: str | None = None
    component: str | None = None
    group: str | None = None
    class_: str | None = Field(None, alias="class")
    custom_details: dict[str, Any] | None = None


class PagerDutyLink(SenderModel):
    href: str
    text: str = ""


class PagerDutyImage(SenderModel):
    src: str
    href: str = ""
    alt: str = ""


class _PagerDutyEvent(SenderModel):
    # exclude=True: a credential, never dumped into raw or anywhere else.
    routing_key: str | None = Field(None, exclude=True, repr=False, description="accepted and discarded")
    links: list[PagerDutyLink] = Field(default_factory=list)
    images: list[PagerDutyImage] = Field(default_factory=list)
    client: str | None = None
    client_url: str | None = None


class PagerDutyTrigger(_PagerDutyEvent):
    event_action: Literal["trigger"]
    dedup_key: str | None = None
    payload: PagerDutyPayload


class PagerDutyFollowUp(_PagerDutyEvent):
    """acknowledge and resolve: PagerDuty needs only the dedup_key; a payload, when the sender
    repeats it (Alertmanager's PagerDuty receiver does), tells Stanch which model the
    follow-up is about, so it reaches the incident its trigger opened. Without one it routes
    nowhere in particular and, matching no open incident, is dropped."""

    event_action: Literal["acknowledge", "resolve"]
    dedup_key: str = Field(min_length=1)
    payload: PagerDutyPayload | None = None


# `event_action` decides which fields are required, and a 422 then names the missing one
# under that action (`body.trigger.payload`).
PagerDutyEvent = Annotated[PagerDutyTrigger | PagerDutyFollowUp, Field(discriminator="event_action")]


def _body_hash(event: PagerDutyTrigger | PagerDutyFollowUp) -> str:
    return canonical_sha256(event.model_dump(mode="json", by_alias=True))[:16]


def pagerduty_signal_id(event: PagerDutyTrigger | PagerDutyFollowUp) -> str:
    """Same event resent, same id; the three actions on one dedup key are three signals."""
    body_hash = _body_hash(event)
    dedup_key = event.dedup_key or f"sha256-{body_hash}"
    stamp = (event.payload.timestamp if event.payload else None) or body_hash
    return f"pagerduty:{dedup_key}:{event.event_action}:{stamp}"


def pagerduty_signals(event: PagerDutyTrigger | PagerDutyFollowUp) -> list[Signal]:
    payload = event.payload
    details = (payload.custom_details if payload else None) or {}
    # Rule authors put Stanch's vocabulary (model, category, alertname, ...) in custom_details.
    labels = scalar_labels(details)
    if payload:
        for key, value in (
            ("component", payload.component),
            ("group", payload.group),
            ("class", payload.class_),
            ("severity", payload.severity),
        ):
            if value:
                labels.setdefault(key, value)
    labels["pagerduty_action"] = event.event_action
    if event.dedup_key:
        labels["pagerduty_dedup_key"] = event.dedup_key
    # PagerDuty's own severity field is authoritative; without a payload, a severity detail.
    hint = PAGERDUTY_SEVERITY[payload.severity] if payload else SEVERITY_LABELS.get(labels.get("severity", "").lower())
    title = payload.summary if payload else f"PagerDuty {event.event_action} for {event.dedup_key}"
    return [
        Signal(
            signal_id=pagerduty_signal_id(event),
            source=SignalSource.alert,
            sender="pagerduty",
            status=_ACTION_STATUS[event.event_action],
            title=title,
            description=str(details.get("description", "")),
            labels=labels,
            severity_hint=hint,
            category=labels.get("category"),
            model=labels.get("model"),
            model_version=model_version_from(labels),
            repro=repro_from(details),
            links=[link.href for link in event.links] + ([event.client_url] if event.client_url else []),
            observed_at=parse_time(payload.timestamp if payload else None),
            raw=event.model_dump(mode="json", by_alias=True),
        )
    ]
