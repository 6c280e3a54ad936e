"""CloudEvents 1.0 over HTTP: binary, structured and batch content modes.

The `cloudevents` package (v2) parses and validates; this module picks the mode from the
request, checks what the package would otherwise fill in silently (it invents an `id` and a
`time` when they are missing, and an invented id would defeat deduplication), and maps an
event's `data` onto a Signal. `source` + `id` identify an event, so they make the signal id.

Closing notices: an event is `resolved` or `acknowledged` (recorded on the open incident,
never opening one, never counted as harm) when its `data` is a JSON object whose `status`
says so (`resolved`/`resolve`, `acknowledged`/`acknowledge`, any case), or, without a
`status`, when the last dot-separated part of its `type` does
(`com.example.guardrail.violation.resolved`). Anything else fires.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, NamedTuple

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from cloudevents.core.exceptions import BaseCloudEventException

from stanch.intake.sources.alertmanager import SEVERITY_LABELS
from stanch.intake.sources.common import model_version_from, repro_from, scalar_labels
from stanch.models.signals import ReproCase, Signal, SignalSource

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
SPECVERSION = "1.0"
REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type")
# Plain JSON with no ce-* headers is read as a structured event: some senders label it so.
_PLAIN_JSON = ("application/json", "text/json")

Mode = Literal["binary", "structured", "batch"]


class InvalidCloudEvent(ValueError):
    """The request is not a valid CloudEvent; the message names the problem (HTTP 400)."""


class NotACloudEvent(InvalidCloudEvent):
    """No content mode fits the request at all (HTTP 415)."""


class ReceivedEvent(NamedTuple):
    event: BaseCloudEvent
    mode: Mode
    # What the sender put in `time`, if anything: the package defaults a missing one to now.
    sent_time: datetime | None


def _media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidCloudEvent(f"body is not valid JSON: {err}") from err


def _check_required(attributes: Mapping[str, Any], where: str) -> None:
    for name in REQUIRED_ATTRIBUTES:
        value = attributes.get(name)
        if not isinstance(value, str) or not value:
            raise InvalidCloudEvent(f"{where}: required attribute `{name}` is missing or not a non-empty string")
    if attributes["specversion"] != SPECVERSION:
        raise InvalidCloudEvent(f"{where}: specversion {attributes['specversion']!r} is not supported; send CloudEvents {SPECVERSION}")


def _parse(message: HTTPMessage, where: str) -> BaseCloudEvent:
    try:
        return from_http_event(message)
    except (BaseCloudEventException, ValueError, TypeError, OverflowError) as err:
        raise InvalidCloudEvent(f"{where}: {err}") from err


def _structured(document: Any, where: str, mode: Mode) -> ReceivedEvent:
    if not isinstance(document, dict):
        raise InvalidCloudEvent(f"{where}: a structured event is a JSON object, got {type(document).__name__}")
    _check_required(document, where)
    body = json.dumps(document).encode()
    event = _parse(HTTPMessage(headers={"content-type": STRUCTURED_CONTENT_TYPE}, body=body), where)
    return ReceivedEvent(event, mode, event.get_time() if "time" in document else None)


def parse_http(headers: Mapping[str, str], body: bytes) -> list[ReceivedEvent]:
    """The events of one HTTP request, in order; raises `InvalidCloudEvent` naming the problem.

    `headers` must have lower-case names (as Starlette gives them).
    """
    media_type = _media_type(headers)
    if media_type == BATCH_CONTENT_TYPE:
        documents = _json(body)
        if not isinstance(documents, list):
            raise InvalidCloudEvent(f"a {BATCH_CONTENT_TYPE} body is a JSON array of structured events")
        return [_structured(document, f"event [{index}]", "batch") for index, document in enumerate(documents)]
    ce_headers = {name: value for name, value in headers.items() if name.startswith("ce-")}
    if ce_headers:
        _check_required({name[3:]: value for name, value in ce_headers.items()}, "binary mode (ce-* headers)")
        if "content-type" in headers:
            ce_headers["content-type"] = headers["content-type"]
        event = _parse(HTTPMessage(headers=ce_headers, body=body), "binary mode")
        return [ReceivedEvent(event, "binary", event.get_time() if "ce-time" in ce_headers else None)]
    if media_type == STRUCTURED_CONTENT_TYPE or media_type in _PLAIN_JSON:
        return [_structured(_json(body), "structured mode", "structured")]
    raise NotACloudEvent(
        f"Content-Type {media_type or '(none)'!r} with no ce-* headers is no CloudEvents content mode: send "
        f"ce-specversion/ce-id/ce-source/ce-type headers (binary), {STRUCTURED_CONTENT_TYPE} (structured) "
        f"or {BATCH_CONTENT_TYPE} (batch)"
    )


def _raw(received: ReceivedEvent) -> dict[str, Any]:
    attributes = dict(received.event.get_attributes())
    if received.sent_time is None:
        attributes.pop("time", None)  # the package's default, not the sender's
    attributes = {key: value.isoformat() if isinstance(value, datetime) else value for key, value in attributes.items()}
    data = received.event.get_data()
    raw: dict[str, Any] = {"mode": received.mode, "attributes": attributes}
    if isinstance(data, bytes | bytearray):
        raw["data_base64"] = base64.b64encode(data).decode()
    else:
        raw["data"] = data
    return raw


def _repro(fields: Mapping[str, Any]) -> list[ReproCase]:
    cases = repro_from(fields)
    for case in fields.get("repro") or []:
        if isinstance(case, dict) and isinstance(case.get("prompt"), str) and case["prompt"]:
            output = case.get("output")
            cases.append(ReproCase(prompt=case["prompt"], output=output if isinstance(output, str) else None))
    return cases


def _text(fields: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        if isinstance(fields.get(name), str) and fields[name]:
            return fields[name]
    return None


# What a sender may write for a closing notice; `firing` and anything unknown are harm.
_CLOSING_WORDS: dict[str, Literal["resolved", "acknowledged"]] = {
    "resolved": "resolved",
    "resolve": "resolved",
    "acknowledged": "acknowledged",
    "acknowledge": "acknowledged",
}


def event_status(event_type: str, fields: Mapping[str, Any]) -> Literal["firing", "resolved", "acknowledged"]:
    """`data.status`, else the last part of `type`, as a Signal status (module docstring)."""
    status = fields.get("status")
    if isinstance(status, str) and status.strip():
        return _CLOSING_WORDS.get(status.strip().lower(), "firing")
    return _CLOSING_WORDS.get(event_type.rsplit(".", 1)[-1].lower(), "firing")


def cloudevent_signal(received: ReceivedEvent) -> Signal:
    """`data` may speak Stanch's vocabulary (title, labels, model, model_version, severity,
    category, status, repro_prompt/repro_output or repro[], links); what is there is used."""
    event = received.event
    data = event.get_data()
    fields: Mapping[str, Any] = data if isinstance(data, dict) else {}
    labels = scalar_labels(fields["labels"]) if isinstance(fields.get("labels"), dict) else {}
    for name in ("model", "model_version", "category", "severity", "alertname"):
        if _text(fields, name):
            labels.setdefault(name, fields[name])
    labels["ce_type"] = event.get_type()
    links = [link for link in fields.get("links") or [] if isinstance(link, str)] if isinstance(fields.get("links"), list) else []
    if _text(fields, "url"):
        links.append(fields["url"])
    description = _text(fields, "description", "message") or (data if isinstance(data, str) else "")
    return Signal(
        signal_id=f"cloudevents:{event.get_source()}:{event.get_id()}",
        source=SignalSource.alert,
        sender="cloudevents",
        status=event_status(event.get_type(), fields),
        title=_text(fields, "title", "summary") or event.get_subject() or event.get_type(),
        description=description,
        labels=labels,
        severity_hint=SEVERITY_LABELS.get(labels.get("severity", "").strip().lower()),
        category=labels.get("category"),
        model=labels.get("model"),
        model_version=model_version_from(labels),
        repro=_repro(fields),
        links=links,
        observed_at=received.sent_time,
        raw=_raw(received),
    )
