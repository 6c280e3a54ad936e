"""What monitoring, users and auditors send to a running incident: signals.

Each signal is deduplicated by its own id (a redelivery is not a second signal) and counted.
A storm of alerts must not grow the memory without bound (it is carried from run to run): the
first signals are kept in full, later ones only when they bring something the rules could read
that no kept signal has; every one is counted, and every one stays in history.

A closing notice (the sender's `resolved`, an `acknowledged` elsewhere) is recorded on the
timeline and is never harm: not counted, never graded, never raising severity. A firing signal
while the incident restores, reviews or waits for its report is harm come back: it pages, and
opens the next occurrence (`record_recurrence`).
"""

from __future__ import annotations

import hashlib

from temporalio import workflow

from workflows.record import Record

with workflow.unsafe.imports_passed_through():
    from stanch.models.signals import Signal

KEEP_FIRST = 100  # signals kept in full whatever they say
KEEP_AT_MOST = 500  # past KEEP_FIRST, a signal is kept only if it is new to the rules, up to this many
RECENT_IDS = 20_000  # signal-id digests remembered for deduplication, newest kept
SIGNALS_PER_NOTE = 1_000  # signals not kept in full are summed up on the timeline every this many


class Monitoring:
    def __init__(self, record: Record) -> None:
        self.record = record
        # What the kept signals tell the rules, derived from state.signals and kept in step
        # with it: rebuilding it for every signal made a storm cost O(kept) per signal, and a
        # workflow task carrying a thousand queued signals then overran the SDK's 2 s deadlock
        # limit on a loaded worker (bench/intake_scale.py).
        self._kept_keys: set[tuple] = set()
        self._kept_from: list[Signal] | None = None  # the kept list _kept_keys was built from
        self._kept_keys_of: int = 0  # and how many of its signals
        self._rules_read: frozenset[str] | None = None

    def add_signal(self, signal: Signal) -> None:
        if not self.is_redelivery(signal):
            self.take(signal)

    def take(self, signal: Signal) -> None:
        """A signal this incident has not seen: a closing notice, harm come back, or harm."""
        hardened = self.record.memory.hardened  # an incident begun before these rules counted every signal
        if signal.is_closing_notice and hardened:
            return self.record_closing_notice(signal)
        if self.record.winding_down and hardened:
            return self.record_recurrence(signal)
        state = self.record.state
        state.signal_count += 1
        self.record.merge_repro(signal.repro)
        if self.worth_keeping(signal):
            state.signals.append(signal)
            self.record.note(
                "signal", f"{signal.sender} {signal.status}: {signal.title or signal.signal_id}", signal.sender, signal_id=signal.signal_id
            )
        elif state.signal_count % SIGNALS_PER_NOTE == 0:
            self.record.note("signal", f"{state.signal_count} signals so far; {len(state.signals)} kept in full, every one in history")

    def is_redelivery(self, signal: Signal) -> bool:
        recent = self.record.memory.recent_signal_ids
        digest = hashlib.sha256(signal.signal_id.encode()).hexdigest()[:16]
        if digest in recent:
            return True
        recent[digest] = None
        if len(recent) > RECENT_IDS:
            del recent[next(iter(recent))]  # the oldest: a redelivery comes soon or not at all
        return False

    def worth_keeping(self, signal: Signal) -> bool:
        kept = self.record.state.signals
        if len(kept) < KEEP_FIRST:
            return True
        if len(kept) >= KEEP_AT_MOST:
            return False
        return what_rules_read(signal, self.labels_rules_read()) not in self.kept_keys()

    def kept_keys(self) -> set[tuple]:
        """What the kept signals tell the rules: extended with each signal kept since the last
        call, rebuilt if the kept list was replaced or cut (a new occurrence, a hand-over)."""
        kept = self.record.state.signals
        if kept is not self._kept_from or len(kept) < self._kept_keys_of:
            self._kept_keys, self._kept_from, self._kept_keys_of = set(), kept, 0
        keys = self.labels_rules_read()
        self._kept_keys.update(what_rules_read(s, keys) for s in kept[self._kept_keys_of :])
        self._kept_keys_of = len(kept)
        return self._kept_keys

    def labels_rules_read(self) -> frozenset[str]:
        """The label names the runbook's severity and seriousness rules match on (`harm`, `sector`)."""
        if self._rules_read is None:
            self._rules_read = frozenset(name for condition in self.record.runbook.grading_conditions() for name in condition.labels)
        return self._rules_read

    def record_closing_notice(self, signal: Signal) -> None:
        state = self.record.state
        state.closing_notices += 1
        what = f"{signal.sender} {signal.status}: {signal.title or signal.signal_id}"
        if signal.status == "acknowledged":
            state.acknowledged_elsewhere = f"{signal.sender} at {workflow.now().isoformat()}"
            what += " (a hint: acknowledge in Stanch to stop escalation)"
        self.record.note("signal", f"{what}; a closing notice, not new harm", signal.sender, signal_id=signal.signal_id, notice=True)

    def record_recurrence(self, signal: Signal) -> None:
        """Harm reported again while protections are lifted or gone: never absorbed. On-call is
        paged (Clocks.page_when_harm_returns), what is still in place stays, and once this
        occurrence's review is done the incident continues as a new occurrence with this signal."""
        memory = self.record.memory
        if len(memory.recurring) < KEEP_FIRST:
            memory.recurring.append(signal)
        else:
            memory.recurring_not_kept += 1  # counted in the next occurrence all the same
        self.record.note(
            "signal",
            f"harm reported again while {self.record.state.status}: {signal.sender} {signal.title or signal.signal_id}",
            signal.sender,
            signal_id=signal.signal_id,
            recurrence=True,
        )


def what_rules_read(signal: Signal, label_names: frozenset[str]) -> tuple:
    """What a runbook's conditions can tell signals apart by: of the labels, only those a rule
    names (an alert's `instance` varies per alert and no rule reads it)."""
    labels = tuple(sorted((name, value) for name, value in signal.labels.items() if name in label_names))
    return (signal.source, signal.sender, signal.category, signal.model, signal.severity_hint, signal.title.casefold(), labels)
