"""Helpers every sender mapping shares: the sender model base, times, hashes, labels, repro."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from stanch.models.signals import ReproCase


class SenderModel(BaseModel):
    """A payload in the sender's own spelling.

    Unknown fields are kept, not refused: senders add fields over time, and the audit record
    should hold everything they sent. Numbers are accepted where an id is expected because
    senders are not consistent about quoting them.
    """

    model_config = ConfigDict(populate_by_name=True, extra="allow", coerce_numbers_to_str=True)


def parse_time(value: str | None) -> datetime | None:
    """ISO 8601 as the sender wrote it, or None when absent or unreadable (the raw keeps it)."""
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def epoch_time(value: str | int | None) -> datetime | None:
    """Epoch seconds or milliseconds (Datadog's `$DATE` is milliseconds)."""
    try:
        number = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    if number is None:
        return None
    if number > 1e11:  # later than the year 5138 in seconds: it is milliseconds
        number /= 1000
    try:
        return datetime.fromtimestamp(number, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def canonical_sha256(body: Any) -> str:
    """sha256 of the body's canonical JSON: the same content hashes the same however it was
    formatted or ordered, so a resend is recognised as a resend."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def scalar_labels(values: Mapping[str, Any] | None) -> dict[str, str]:
    """The scalar entries of a free-form mapping as string labels; nested values stay in raw."""
    labels: dict[str, str] = {}
    for key, value in (values or {}).items():
        if isinstance(value, bool):
            labels[str(key)] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            labels[str(key)] = str(value)
    return labels


def key_value_labels(pairs: Iterable[str]) -> dict[str, str]:
    """`key:value` tokens (Datadog tags, Sentry queries) as labels.

    A tag without a value becomes a label with an empty value; a key given twice keeps every
    value, comma-joined, so nothing the sender said is silently dropped.
    """
    labels: dict[str, str] = {}
    for pair in pairs:
        pair = pair.strip()
        if not pair:
            continue
        key, _, value = pair.partition(":")
        key, value = key.strip(), value.strip().strip('"')
        labels[key] = f"{labels[key]},{value}" if labels.get(key) else value
    return labels


_QUERY_FILTER = re.compile(r'(?<![\S])([A-Za-z_][\w.\-]*):("[^"]*"|\S+)')


def query_labels(query: str | None) -> dict[str, str]:
    """The positive `key:value` filters of a search query (`model:support-bot level:error`):
    the dimensions the alert rule watches. Negated filters (`!key:value`) say nothing of the
    alert itself and are skipped by the look-behind."""
    return key_value_labels(f"{key}:{value}" for key, value in _QUERY_FILTER.findall(query or ""))


def repro_from(fields: Mapping[str, Any]) -> list[ReproCase]:
    """`repro_prompt` (+ `repro_output`) wherever a sender lets a rule author put them."""
    prompt = fields.get("repro_prompt")
    if not isinstance(prompt, str) or not prompt:
        return []
    output = fields.get("repro_output")
    return [ReproCase(prompt=prompt, output=output if isinstance(output, str) else None)]


def model_version_from(labels: Mapping[str, str]) -> str | None:
    return labels.get("model_version") or labels.get("version")
