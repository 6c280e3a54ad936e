"""How large what a sender sends may be, checked at intake before anything reaches Temporal.

Temporal refuses any payload over its blob size limit (2 MB by default). An incident keeps its
signals in its state and hands them, raw payloads included, to activities (the evidence
snapshot takes them all): a signal accepted with a 600 KB text would wedge the incident long
after its sender heard 202. So an oversized field is refused at the door, 413 naming the
field and the limit, and the sender can trim it.

The limits are generous for real senders: Alertmanager, Grafana and PagerDuty annotations,
Sentry messages and user reports are a few KB at most. They are counted in UTF-8 bytes (what
Temporal counts), not characters. One place holds them; README's Intake section quotes them.

Two layers:

- the sender's own fields, named as the sender spells them (`alerts[1].annotations.description`,
  a report's `text`), for the payloads Stanch knows field by field: `check_alert_group`,
  `check_report`, `check_finding`;
- every signal any source makes (`check_signal`): its title, description, labels and repro
  cases, then the whole signal as recorded, the sender's payload (`raw`) included.

The mappers themselves stay pure functions of the payload: `stanch plan` uses them on files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from stanch.intake.sources.alertmanager import AlertmanagerWebhook
from stanch.intake.sources.grafana import GrafanaWebhook
from stanch.intake.sources.reports import AuditFinding, UserReport, is_link
from stanch.models.signals import Signal

KIB = 1024
# One free-text value: a description, a report's text or excerpt, an annotation, a label, a
# finding's summary or evidence item, a repro prompt or output.
MAX_TEXT_BYTES = 32 * KIB
# An alert's labels, or its annotations, in total (keys and values).
MAX_FIELDS_BYTES = 64 * KIB
# One signal as Temporal records it, the sender's payload included: eight of them still fit
# one 2 MB payload.
MAX_SIGNAL_BYTES = 256 * KIB


def _kib(limit: int) -> str:
    return f"{limit // KIB} KiB" if limit % KIB == 0 else f"{limit} bytes"


class TooLarge(ValueError):
    """A field over its limit; the API answers 413 with this message, after the source's name."""

    def __init__(
        self,
        field: str,
        size: int,
        limit: int,
        *,
        total: bool = False,
        derived: bool = False,
        subject: str | None = None,
        advice: str = "",
    ) -> None:
        self.field, self.size, self.limit = field, size, limit
        if subject is None:
            subject = f"the signal's `{field}`, as Stanch reads it from your payload," if derived else f"`{field}`"
        in_total = " in total" if total else ""
        super().__init__(f"{subject} is {size} bytes{in_total}; the limit is {limit} bytes ({_kib(limit)}){advice}")


def byte_size(value: Any) -> int:
    """UTF-8 bytes of a string; of anything else, its compact JSON."""
    if not isinstance(value, str):
        value = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    # JSON may carry lone surrogates ("\ud800"): count them, never fail on them.
    return len(value.encode("utf-8", "surrogatepass"))


def check_text(field: str, value: str | None, limit: int = MAX_TEXT_BYTES, *, derived: bool = False) -> None:
    # A character is 1 to 4 bytes: only a string that might be over is encoded to count.
    if value and len(value) * 4 > limit and (size := byte_size(value)) > limit:
        raise TooLarge(field, size, limit, derived=derived)


def check_texts(field: str, values: Sequence[str], limit: int = MAX_TEXT_BYTES, *, derived: bool = False) -> None:
    for index, value in enumerate(values):
        check_text(f"{field}[{index}]", value, limit, derived=derived)


def _key(key: Any) -> str:
    """A key as named back to the sender: a long one shortened (the answer names, never echoes)."""
    text = str(key)
    return text if len(text) <= 64 else text[:64] + "..."


def check_fields(field: str, values: Mapping[str, Any] | None, *, derived: bool = False) -> None:
    """Labels or annotations: each value, then all of them together."""
    total = 0
    for key, value in (values or {}).items():
        size = byte_size(value)
        if size > MAX_TEXT_BYTES:
            raise TooLarge(f"{field}.{_key(key)}", size, MAX_TEXT_BYTES, derived=derived)
        total += byte_size(str(key)) + size
    if total > MAX_FIELDS_BYTES:
        raise TooLarge(field, total, MAX_FIELDS_BYTES, total=True, derived=derived)


# --- the sender's own fields ------------------------------------------------------------


def check_alert_group(webhook: AlertmanagerWebhook | GrafanaWebhook) -> None:
    """Alertmanager's and Grafana's notifications: every alert's labels and annotations, and
    the group's common ones (each alert's signal carries them)."""
    check_fields("groupLabels", webhook.group_labels)
    check_fields("commonLabels", webhook.common_labels)
    check_fields("commonAnnotations", webhook.common_annotations)
    for index, alert in enumerate(webhook.alerts):
        check_fields(f"alerts[{index}].labels", alert.labels)
        check_fields(f"alerts[{index}].annotations", alert.annotations)
    if isinstance(webhook, GrafanaWebhook):
        for index, grafana_alert in enumerate(webhook.alerts):
            check_text(f"alerts[{index}].valueString", grafana_alert.value_string)


def check_report(report: UserReport) -> None:
    check_text("text", report.text)
    check_text("prompt_excerpt", report.prompt_excerpt)
    check_text("response_excerpt", report.response_excerpt)
    check_fields("labels", report.labels)


def check_finding(finding: AuditFinding) -> None:
    check_text("summary", finding.summary)
    check_texts("evidence", finding.evidence)
    check_texts("repro_prompts", finding.repro_prompts)
    check_fields("labels", finding.labels)
    # The summary and the evidence that is not a link become the signal's one description.
    texts = [finding.summary, *(item for item in finding.evidence if not is_link(item))]
    joined = byte_size("\n".join(texts).strip())
    if joined > MAX_TEXT_BYTES:
        raise TooLarge("summary", joined, MAX_TEXT_BYTES, subject="`summary` with the texts of `evidence`")


# --- every signal ---------------------------------------------------------------------------


def check_signal(signal: Signal, *, derived: bool = True) -> None:
    """The signal any source made: its texts, labels and repro cases, then all of it.

    `derived` says the signal was made from a sender's payload (every source but `generic`,
    which sends the signal itself): the message then says the field is the signal's."""
    check_text("title", signal.title, derived=derived)
    check_text("description", signal.description, derived=derived)
    check_fields("labels", signal.labels, derived=derived)
    for index, case in enumerate(signal.repro):
        check_text(f"repro[{index}].prompt", case.prompt, derived=derived)
        check_text(f"repro[{index}].output", case.output, derived=derived)
    check_texts("links", signal.links, derived=derived)
    size = byte_size(signal.model_dump_json())
    if size > MAX_SIGNAL_BYTES:
        subject = "the signal, as Stanch records it with your payload,"
        raise TooLarge("signal", size, MAX_SIGNAL_BYTES, subject=subject, advice=": send less")


def check_signals(signals: Sequence[Signal], *, derived: bool = True) -> None:
    """`check_signal` for each of the signals one request made; when there are several, the
    message says which (a CloudEvents batch, a Sentry or PagerDuty body never has more than one)."""
    for index, signal in enumerate(signals):
        try:
            check_signal(signal, derived=derived)
        except TooLarge as err:
            if len(signals) > 1:
                err.args = (f"signal {index + 1} of {len(signals)}: {err}",)
            raise
