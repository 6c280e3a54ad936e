"""Applying a runbook's steps: each once (its idempotency key names the incident's occurrence,
stage, index and target), and a failed one waits for a human (`Gates.attempt`) with every
protection in place. What a failed attempt read before its change is kept for the retry."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows.failures import captured_in
from workflows.gates import Gates
from workflows.policies import ACTION_RETRY, ACTION_TIMEOUT, LONG_ACTION_HEARTBEAT
from workflows.record import Record

with workflow.unsafe.imports_passed_through():
    from stanch.models.actions import ActionSpec, AppliedAction


class Steps:
    def __init__(self, record: Record, gates: Gates) -> None:
        self.record = record
        self.gates = gates

    async def apply(self, stage: str, steps: list[ActionSpec], activity: Any, timeout: timedelta = ACTION_TIMEOUT) -> None:
        for index, step in enumerate(steps):
            if f"{stage}/{index}" not in self.record.memory.steps_finished:  # (a continued run applied it already)
                await self.apply_one(stage, index, step, activity, timeout)
            self.record.memory.steps_finished.append(f"{stage}/{index}")

    async def apply_one(self, stage: str, index: int, step: ActionSpec, activity: Any, timeout: timedelta) -> None:
        record = self.record
        captured = record.memory.captured  # what a failed run read before its change: a retry reuses it

        async def apply_once() -> AppliedAction:
            try:
                return await workflow.execute_activity_method(
                    activity,
                    record.apply_input(stage, index, step, captured.get(f"{stage}/{index}")),
                    start_to_close_timeout=timeout,
                    heartbeat_timeout=LONG_ACTION_HEARTBEAT if timeout > ACTION_TIMEOUT else None,
                    retry_policy=ACTION_RETRY,
                )
            except ActivityError as failure:
                if found := captured_in(failure):
                    captured[f"{stage}/{index}"] = found
                raise

        applied = await self.gates.attempt(stage, step.kind, apply_once)
        captured.pop(f"{stage}/{index}", None)
        if applied is None:
            return record.note("action", f"{step.kind} skipped by a responder")
        record.state.actions.append(applied)
        done = "dry run, would apply" if record.input.dry_run else "applied"
        record.note("action", f"{stage}: {done} {step.kind}", key=applied.idempotency_key, result=applied.result)
