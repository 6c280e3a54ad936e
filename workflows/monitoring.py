"""What monitoring, users and auditors send to a running incident: signals.

Each signal is deduplicated by its own id (a redelivery is not a second signal).
"""

from __future__ import annotations

from temporalio import workflow

from workflows.record import Record

with workflow.unsafe.imports_passed_through():
    from stanch.models.signals import Signal


class Monitoring:
    def __init__(self, record: Record) -> None:
        self.record = record

    def add_signal(self, signal: Signal) -> None:
        memory = self.record.memory
        if signal.signal_id in memory.seen_signal_ids:
            return  # a redelivery, not a second signal
        memory.seen_signal_ids.add(signal.signal_id)
        self.record.state.signals.append(signal)
        self.record.merge_repro(signal.repro)
        self.record.note(
            "signal", f"{signal.sender} {signal.status}: {signal.title or signal.signal_id}", signal.sender, signal_id=signal.signal_id
        )
