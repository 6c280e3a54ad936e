"""Which signals a storm keeps in full: the first KEEP_FIRST, then only those that tell the
runbook's rules something no kept signal does, up to KEEP_AT_MOST — decided in constant time per
signal, so a workflow task carrying thousands of queued signals stays far under the SDK's 2 s
deadlock limit (bench/intake_scale.py found it overrun on a loaded worker)."""

from __future__ import annotations

from types import SimpleNamespace

from stanch.models.signals import Signal
from workflows import monitoring as monitoring_module
from workflows.monitoring import KEEP_AT_MOST, KEEP_FIRST, Monitoring


class RulesReading:
    """A runbook whose grading rules read the `harm` label."""

    def grading_conditions(self):
        return [SimpleNamespace(labels={"harm": "secret"})]


def monitoring() -> Monitoring:
    state = SimpleNamespace(signals=[], signal_count=0)
    record = SimpleNamespace(
        state=state,
        memory=SimpleNamespace(hardened=True, recent_signal_ids={}),
        runbook=RulesReading(),
        winding_down=False,
        notes=[],
        merge_repro=lambda repro: None,
    )
    record.note = lambda *args, **kwargs: record.notes.append(args)
    return Monitoring(record)


def alert(n: int, harm: str = "secret") -> Signal:
    return Signal(signal_id=f"a-{n}", title="leak", labels={"harm": harm, "instance": f"pod-{n}"})


def test_past_the_first_signals_only_what_the_rules_can_tell_apart_is_kept():
    watch = monitoring()
    for n in range(KEEP_FIRST + 50):
        watch.add_signal(alert(n))  # the same to the rules: only the instance differs
    assert len(watch.record.state.signals) == KEEP_FIRST
    watch.add_signal(alert(10_000, harm="pii"))
    watch.add_signal(alert(10_001, harm="pii"))
    kept = watch.record.state.signals
    assert [s.signal_id for s in kept[KEEP_FIRST:]] == ["a-10000"], "new to the rules once, then not again"
    assert watch.record.state.signal_count == KEEP_FIRST + 52, "every one counted"


def test_a_kept_list_cut_at_a_hand_over_is_read_afresh():
    watch = monitoring()
    for n in range(KEEP_FIRST):
        watch.add_signal(alert(n, harm=f"kind-{n}"))
    watch.add_signal(alert(500, harm="pii"))
    assert len(watch.record.state.signals) == KEEP_FIRST + 1
    del watch.record.state.signals[KEEP_FIRST:]  # what a hand-over that slims the memory does
    watch.add_signal(alert(501, harm="pii"))
    assert watch.record.state.signals[-1].signal_id == "a-501", "no longer kept, so new to the rules again"


def test_each_signal_is_compared_once_however_many_are_kept(monkeypatch):
    """Rebuilding what the kept signals tell the rules for every signal made a storm cost
    O(kept) per signal; now each signal is read once, and each kept one once more."""
    watch = monitoring()
    kinds = 300
    for n in range(kinds):
        watch.add_signal(alert(n, harm=f"kind-{n}"))
    reads = []
    original = monitoring_module.what_rules_read
    monkeypatch.setattr(monitoring_module, "what_rules_read", lambda signal, names: reads.append(signal) or original(signal, names))
    for n in range(kinds, kinds + 1_000):
        watch.add_signal(alert(n, harm=f"kind-{n % kinds}"))  # nothing new to the rules
    assert len(watch.record.state.signals) == kinds
    assert watch.record.state.signal_count == kinds + 1_000
    assert len(reads) <= 1_000 + kinds, f"{len(reads)} reads for 1,000 signals"
