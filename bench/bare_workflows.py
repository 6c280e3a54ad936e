"""The baselines of bench/critical_path.py and bench/open_incidents.py: bare workflows, nothing of Stanch.

They run in the SDK's default sandbox, as the incident workflow does, so a ratio shows what
Stanch's code adds and not what the sandbox costs every workflow. This module stays tiny and
imports nothing heavy: the sandbox re-imports a workflow's module for every run.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from stanch.models.signals import Signal
    from stanch.temporal.search_attributes import INCIDENT_STATUS

# --- the critical path's baseline: the incident's shape up to the rollback ---------------------

STEPS_BEFORE_CONTAIN = ["notify", "confirm", "evidence", "severity", "notify-gate"]


@activity.defn(name="bench_step")
async def bare_step(step: str) -> str:
    return step


@workflow.defn(name="BareCriticalPath")
class BareCriticalPath:
    """Five activities, "contain" (at once, as a reversible block goes on), one activity, a gate of two updates, "rollback"."""

    def __init__(self) -> None:
        self.waiting_for: str | None = None
        self.approvals: dict[str, int] = defaultdict(int)
        self.done: list[str] = []

    @workflow.run
    async def run(self) -> None:
        for step in STEPS_BEFORE_CONTAIN:
            await self.step(step)
        await self.step("contain")
        await self.step("notify-contained")
        await self.gate("rollback")
        await self.step("rollback")

    async def step(self, name: str) -> None:
        await workflow.execute_activity(bare_step, name, start_to_close_timeout=timedelta(seconds=30))
        self.done.append(name)

    async def gate(self, stage: str) -> None:
        self.waiting_for = stage
        await workflow.wait_condition(lambda: self.approvals[stage] >= 2)
        self.waiting_for = None

    @workflow.update
    def approve(self, stage: str) -> str:
        self.approvals[stage] += 1
        return stage

    @workflow.query
    def gate_pending(self) -> str | None:
        return self.waiting_for

    @workflow.query
    def steps_done(self) -> list[str]:
        return self.done


# --- the open incidents' baseline: wait for a signal that never comes --------------------------

GATE = "triage"  # the status a triage incident waits in: visibility counts both sides alike


@workflow.defn(name="BareOpenIncident")
class BareOpenIncident:
    def __init__(self) -> None:
        self.signals: list[Signal] = []
        self.released = False

    @workflow.run
    async def run(self) -> None:
        workflow.upsert_search_attributes([INCIDENT_STATUS.value_set(GATE)])
        await workflow.wait_condition(lambda: self.released)

    @workflow.signal
    def add_signal(self, signal: Signal) -> None:
        self.signals.append(signal)

    @workflow.signal
    def release(self) -> None:
        self.released = True
