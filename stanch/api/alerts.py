"""Intake routes: monitoring raises an alert, Stanch opens (or joins) an incident.

Every sender's payload is normalised into Stanch's own `Signal` by its mapper in
`stanch.intake.sources`; each signal goes through `open_or_join` one by one, and the sender hears 202
only once Temporal recorded all of them. A sender that retries after an error is safe:
signals are deduplicated by their id.

A closing notice (Alertmanager/Grafana `resolved`, PagerDuty `acknowledge`/`resolve`, Sentry
`resolved`, Datadog `Recovered`, a CloudEvent whose `data.status` says resolved/acknowledged)
only reaches an incident already open for the same alert; with none open it is answered 202
and dropped (`dropped: true`, counted in `stanch_closing_notices_dropped_total`). It never
opens an incident.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from stanch.api.deps import Intake, IntakeDep
from stanch.intake.sources import cloudevents, examples, limits, sentry
from stanch.intake.sources.alertmanager import AlertmanagerWebhook, alertmanager_signals
from stanch.intake.sources.datadog import PAYLOAD_TEMPLATE, DatadogWebhook, datadog_signals
from stanch.intake.sources.grafana import GrafanaWebhook, grafana_signals
from stanch.intake.sources.pagerduty import PagerDutyEvent, pagerduty_signals
from stanch.models.signals import Signal

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/alerts", tags=["intake"])


class OpenedIncident(BaseModel):
    incident_id: str
    runbook: str
    signal_id: str
    opened: bool = Field(False, description="true when this signal opened the incident, false when it joined an open one")
    closing_notice: bool = Field(
        False, description="the sender says the harm stopped or someone is on it (resolved, acknowledged): never opens an incident"
    )
    dropped: bool = Field(
        False,
        description="a closing notice with no open incident to go to: not recorded, no incident opened (`incident_id` is the "
        "one it would have gone to)",
    )


class IntakeResponse(BaseModel):
    incidents: list[OpenedIncident]


async def _take_in(intake: Intake, signals: list[Signal], *, derived: bool = True) -> IntakeResponse:
    """Record every signal, or answer before any is sent. `derived`: the signals were made
    from a sender's payload (every route but /generic, whose body is the signal itself)."""
    # Sizes first, for all of them: an oversized signal must not leave the ones before it
    # half-accepted (limits.TooLarge is a 413, see app.py).
    limits.check_signals(signals, derived=derived)
    # One after another: any failure propagates before the 202, and the sender's retry
    # re-delivers everything; the ones already recorded are dropped as duplicates.
    opened = []
    for signal in signals:
        result = await intake(signal)
        opened.append(
            OpenedIncident(
                incident_id=result.incident_id,
                runbook=result.runbook,
                signal_id=signal.signal_id,
                opened=result.opened,
                closing_notice=result.closing_notice,
                dropped=result.dropped,
            )
        )
    return IntakeResponse(incidents=opened)


INTAKE_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {
        "description": "The body is over 1 MiB, or a field is over its limit (a text 32 KiB, an alert's labels or "
        "annotations 64 KiB in total, a signal 256 KiB); `detail` names the field and the limit. Nothing was recorded."
    },
    502: {"description": "Temporal refused the API's own access (credentials, permissions, server version): for an operator."},
    503: {"description": "Temporal is unreachable; nothing was recorded reliably. Retry after `Retry-After` seconds."},
}
_RAW_BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **INTAKE_RESPONSES,
    400: {"description": "The body is not JSON, or not a valid event; `detail` names the problem."},
}


def openapi_examples(**bodies: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: {"summary": name.replace("_", " "), "value": body} for name, body in bodies.items()}


def _inline_schema(annotation: Any) -> dict[str, Any]:
    """A JSON schema with its `$defs` inlined: routes that read the raw request document
    their body through `openapi_extra`, where references to local `$defs` would not resolve."""
    schema = TypeAdapter(annotation).json_schema(ref_template="#/$defs/{model}", by_alias=True)
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        return [inline(item) for item in node] if isinstance(node, list) else node

    return inline(schema)


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise HTTPException(400, f"body is not valid JSON: {err}") from err


def _validated(model: type[BaseModel], body: Any) -> Any:
    """The same 422 FastAPI gives for a declared body, for routes that validate by hand."""
    try:
        return model.model_validate(body)
    except ValidationError as err:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)], body=body) from err


@router.post(
    "/alertmanager",
    status_code=202,
    response_model=IntakeResponse,
    responses=INTAKE_RESPONSES,
    summary="Alertmanager webhook (v4)",
)
async def alertmanager_webhook(webhook: AlertmanagerWebhook, intake: IntakeDep) -> IntakeResponse:
    """Each alert in the group becomes its own signal and opens or joins an incident; a
    `resolved` alert only reaches the incident open for it (`dropped` when none is).

    Labels `severity`, `category`, `model`, `model_version`/`version` and annotations
    `summary`, `description`, `repro_prompt`, `repro_output` are understood.
    """
    if webhook.truncated_alerts:
        log.warning("alertmanager group %s truncated %d alerts; raise max_alerts", webhook.group_key, webhook.truncated_alerts)
    limits.check_alert_group(webhook)
    return await _take_in(intake, alertmanager_signals(webhook))


@router.post(
    "/grafana",
    status_code=202,
    response_model=IntakeResponse,
    responses=INTAKE_RESPONSES,
    summary="Grafana Alerting webhook contact point (v1)",
)
async def grafana_webhook(
    webhook: Annotated[
        GrafanaWebhook, Body(openapi_examples=openapi_examples(firing=examples.GRAFANA, resolved=examples.GRAFANA_RESOLVED))
    ],
    intake: IntakeDep,
) -> IntakeResponse:
    """Each alert of the notification becomes its own signal, id
    `grafana:{orgId}:{fingerprint}:{startsAt}` (`:resolved` for the resolved notice).

    Labels are read as Alertmanager's are (`alertname`, `severity`, `category`, `model`,
    `model_version`); annotations `summary`, `description`, `repro_prompt`, `repro_output`.
    """
    if webhook.truncated_alerts:
        log.warning("grafana group %s truncated %d alerts", webhook.group_key, webhook.truncated_alerts)
    limits.check_alert_group(webhook)
    return await _take_in(intake, grafana_signals(webhook))


@router.post(
    "/pagerduty",
    status_code=202,
    response_model=IntakeResponse,
    responses=INTAKE_RESPONSES,
    summary="PagerDuty Events API v2 body",
)
async def pagerduty_event(
    event: Annotated[
        PagerDutyEvent,
        Body(
            openapi_examples=openapi_examples(
                trigger=examples.PAGERDUTY, acknowledge=examples.PAGERDUTY_ACKNOWLEDGE, resolve=examples.PAGERDUTY_RESOLVE
            )
        ),
    ],
    intake: IntakeDep,
) -> IntakeResponse:
    """Point any tool that speaks PagerDuty Events v2 here. `trigger` fires; `acknowledge`
    and `resolve` are closing notices, recorded on the incident their trigger opened (send
    the same `payload` with them so Stanch can route them; without an open incident they are
    dropped, never opening one).

    `payload.custom_details` scalars become labels: put `alertname`, `model`, `category` there
    to route. `routing_key` is accepted and discarded; it is never stored.
    """
    return await _take_in(intake, pagerduty_signals(event))


@router.post(
    "/datadog",
    status_code=202,
    response_model=IntakeResponse,
    responses=INTAKE_RESPONSES,
    summary="Datadog webhook (Stanch payload template)",
    description=(
        "Configure the Datadog webhook with this payload template; `$TAGS` become labels, "
        "`Recovered` resolves, every other transition fires.\n\n```json\n" + PAYLOAD_TEMPLATE + "```"
    ),
)
async def datadog_webhook(
    webhook: Annotated[
        DatadogWebhook, Body(openapi_examples=openapi_examples(triggered=examples.DATADOG, recovered=examples.DATADOG_RECOVERED))
    ],
    intake: IntakeDep,
) -> IntakeResponse:
    return await _take_in(intake, datadog_signals(webhook))


_SENTRY_MODELS: dict[str, type[BaseModel]] = {
    "metric_alert": sentry.SentryMetricAlertWebhook,
    "event_alert": sentry.SentryIssueAlertWebhook,
}


@router.post(
    "/sentry",
    status_code=202,
    response_model=IntakeResponse,
    responses=_RAW_BODY_RESPONSES,
    summary="Sentry metric and issue alerts (integration platform)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"oneOf": [_inline_schema(model) for model in _SENTRY_MODELS.values()]},
                    "examples": openapi_examples(
                        metric_alert=examples.SENTRY_METRIC_ALERT,
                        metric_alert_resolved=examples.SENTRY_METRIC_ALERT_RESOLVED,
                        issue_alert=examples.SENTRY_ISSUE_ALERT,
                    ),
                }
            },
        }
    },
)
async def sentry_webhook(
    request: Request,
    intake: IntakeDep,
    sentry_hook_resource: Annotated[str | None, Header(alias="Sentry-Hook-Resource")] = None,
) -> IntakeResponse:
    """Metric alerts (`critical`, `warning`, `resolved`) and issue alerts (`triggered`).

    `Sentry-Hook-Resource` picks the shape; without it, `data.metric_alert` or `data.event`
    does. Other resources (installation, issue, ...) carry no alert: 202 with no incidents.
    Metric alert rule query filters (`model:support-bot`) and issue event tags become labels.
    """
    body = _json_body(await request.body())
    resource = sentry_hook_resource or sentry.resource_of(body)
    if sentry_hook_resource and sentry_hook_resource not in sentry.ALERT_RESOURCES:
        log.info("sentry resource %r ignored: it carries no alert", sentry_hook_resource)
        return IntakeResponse(incidents=[])
    if resource is None:
        raise HTTPException(
            400, "not a Sentry alert: no Sentry-Hook-Resource header, and the body has neither data.metric_alert nor data.event"
        )
    webhook = _validated(_SENTRY_MODELS[resource], body)
    mapper = sentry.metric_alert_signals if resource == "metric_alert" else sentry.issue_alert_signals
    return await _take_in(intake, mapper(webhook))


_CLOUDEVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": list(cloudevents.REQUIRED_ATTRIBUTES),
    "properties": {
        "specversion": {"type": "string", "enum": [cloudevents.SPECVERSION]},
        "id": {"type": "string", "minLength": 1},
        "source": {"type": "string", "minLength": 1},
        "type": {"type": "string", "minLength": 1},
        "subject": {"type": "string", "minLength": 1},
        "time": {"type": "string", "format": "date-time"},
        "datacontenttype": {"type": "string", "minLength": 1},
        "data": {"description": "title, labels, model, model_version, severity, category, status, repro_prompt, ... are understood"},
    },
    "additionalProperties": True,
}
_CE_HEADERS = ("specversion", "id", "source", "type", "time", "subject")


@router.post(
    "/cloudevents",
    status_code=202,
    response_model=IntakeResponse,
    responses={**_RAW_BODY_RESPONSES, 415: {"description": "The request is in no CloudEvents content mode."}},
    summary="CloudEvents 1.0: binary, structured or batch mode",
    openapi_extra={
        "parameters": [
            {
                "name": f"ce-{name}",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": f"binary mode: the event's `{name}`",
            }
            for name in _CE_HEADERS
        ],
        "requestBody": {
            "required": True,
            "content": {
                cloudevents.STRUCTURED_CONTENT_TYPE: {
                    "schema": _CLOUDEVENT_SCHEMA,
                    "examples": openapi_examples(firing=examples.CLOUDEVENT, resolved=examples.CLOUDEVENT_RESOLVED),
                },
                cloudevents.BATCH_CONTENT_TYPE: {
                    "schema": {"type": "array", "items": _CLOUDEVENT_SCHEMA},
                    "example": [examples.CLOUDEVENT],
                },
                "application/json": {"schema": {}, "example": examples.CLOUDEVENT["data"]},
            },
        },
    },
)
async def cloudevents_intake(request: Request, intake: IntakeDep) -> IntakeResponse:
    """Structured (`application/cloudevents+json`), batch (`application/cloudevents-batch+json`,
    a JSON array of structured events, each its own signal) or binary (`ce-*` headers, the
    body is the event's data). Signal id `cloudevents:{source}:{id}`; `type` becomes label
    `ce_type`. An invalid event is a 400 naming the attribute and, in a batch, the event.
    """
    try:
        received = cloudevents.parse_http(dict(request.headers), await request.body())
    except cloudevents.NotACloudEvent as err:
        raise HTTPException(415, str(err)) from err
    except cloudevents.InvalidCloudEvent as err:
        raise HTTPException(400, str(err)) from err
    return await _take_in(intake, [cloudevents.cloudevent_signal(event) for event in received])


@router.post(
    "/generic",
    status_code=202,
    response_model=IntakeResponse,
    responses=INTAKE_RESPONSES,
    summary="Any sender, in Stanch's own Signal schema",
)
async def generic_alert(signal: Signal, intake: IntakeDep) -> IntakeResponse:
    """The signal opens or joins the incident its runbook's dedup key names.

    Give each distinct alert a stable `signal_id`: repeats with the same id are ignored.
    """
    return await _take_in(intake, [signal], derived=False)
