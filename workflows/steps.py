"""Applying a runbook's steps: each once (its idempotency key names the incident's occurrence,
stage, index and target), and a failed one waits for a human (`Gates.attempt`) with every
protection in place. What a failed attempt read before its change is kept for the retry.

Where a stage's gate says `reversible: auto`, its reversible steps (they only add protection and
their undo is exact: `stanch.models.actions.reversibility`) go ahead at once, in runbook order,
and only the rest waits for the approval. Each applied step records which path it took."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, cast

from temporalio import workflow
from temporalio.exceptions import ActivityError
from temporalio.workflow import ActivityCancellationType

from workflows.failures import IncidentAborted, captured_in
from workflows.gates import Gates
from workflows.policies import ACTION_RETRY, ACTION_TIMEOUT, LONG_ACTION_HEARTBEAT
from workflows.record import Record

with workflow.unsafe.imports_passed_through():
    from stanch.models.actions import ActionSpec, AppliedAction, reversibility
    from stanch.models.decisions import FailureDecision
    from stanch.models.incident import StageStatus


AT_ONCE = "at once: reversible (policy)"


class Steps:
    def __init__(self, record: Record, gates: Gates) -> None:
        self.record = record
        self.gates = gates

    async def past_gate(self, stage: str, steps: list[ActionSpec], activity: Any, timeout: timedelta = ACTION_TIMEOUT) -> bool:
        """Through the stage's gate (`Gates.gate`); under `reversible: auto` the reversible steps
        are applied first, at once, and only the rest waits for the approval."""
        record, memory = self.record, self.record.memory
        reversible = [index for index, step in enumerate(steps) if reversibility(step).reversible]
        at_once = (
            record.policy.gate(stage).reversible_at_once
            and reversible
            and stage not in memory.went_ahead  # (a continued run past its gate applies the rest)
            and memory.resolve_request is None
        )
        if not at_once or not workflow.patched("reversible-at-once"):
            return await self.gates.gate(stage, steps)
        applied_now = False
        for index in reversible:
            if f"{stage}/{index}" not in memory.steps_finished:
                await self.apply_one(stage, index, steps[index], activity, timeout, went_ahead=AT_ONCE)
                memory.steps_finished.append(f"{stage}/{index}")
                applied_now = True
        waiting = len(steps) - len(reversible)
        if not waiting:
            memory.went_ahead[stage] = AT_ONCE
            record.mark(stage, StageStatus.running, "every step is reversible: applied at once, as the runbook says")
            return True
        if applied_now and record.state.stage(stage).status in (StageStatus.running, StageStatus.failed):
            # A failed reversible step was retried or skipped: the stage itself is not past its gate.
            record.mark(stage, StageStatus.pending, f"reversible steps applied at once; {waiting} more wait for approval")
        return await self.gates.gate(stage, steps)

    async def apply(self, stage: str, steps: list[ActionSpec], activity: Any, timeout: timedelta = ACTION_TIMEOUT) -> None:
        went_ahead = self.record.memory.went_ahead.get(stage)
        for index, step in enumerate(steps):
            if f"{stage}/{index}" not in self.record.memory.steps_finished:  # (a continued run applied it already)
                await self.apply_one(stage, index, step, activity, timeout, went_ahead=went_ahead)
            self.record.memory.steps_finished.append(f"{stage}/{index}")

    async def apply_one(
        self, stage: str, index: int, step: ActionSpec, activity: Any, timeout: timedelta, went_ahead: str | None = None
    ) -> None:
        record = self.record
        captured = record.memory.captured  # what a failed run read before its change: a retry reuses it

        async def apply_once() -> AppliedAction:
            input = record.apply_input(stage, index, step, captured.get(f"{stage}/{index}"))
            try:
                if timeout > ACTION_TIMEOUT and workflow.patched("abort-a-long-step"):
                    return await self.run_abortably(stage, step, activity, input, timeout)
                return await workflow.execute_activity_method(
                    activity,
                    input,
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
        if went_ahead:
            applied = applied.model_copy(update={"went_ahead": went_ahead})
        record.state.actions.append(applied)
        done = "dry run, would apply" if record.input.dry_run else "applied"
        path = f" {went_ahead}" if went_ahead else ""
        record.note("action", f"{stage}: {done} {step.kind}{path}", key=applied.idempotency_key, result=applied.result)

    async def run_abortably(self, stage: str, step: ActionSpec, activity: Any, input: Any, timeout: timedelta) -> AppliedAction:
        """A long step (a fine-tune) a responder may abort while it runs: the activity is cancelled
        and the workflow waits until it has stopped (a fine-tune cancels its job on the trainer);
        everything already in place stays, as after any abort."""
        memory = self.record.memory
        memory.failure_decision, memory.running_long_step = None, stage
        handle = workflow.start_activity_method(
            activity,
            input,
            start_to_close_timeout=timeout,
            heartbeat_timeout=LONG_ACTION_HEARTBEAT,
            retry_policy=ACTION_RETRY,
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        try:
            await workflow.wait_condition(lambda: handle.done() or memory.failure_decision is not None)
            if handle.done():
                return cast(AppliedAction, await handle)
            decision = cast(FailureDecision, memory.failure_decision)
            handle.cancel()
            try:
                await handle
            except (ActivityError, asyncio.CancelledError):
                pass  # cancelled, as asked
            self.record.mark(stage, StageStatus.skipped, f"{step.kind} aborted by {decision.by} while it ran")
            raise IncidentAborted(decision.by, decision.reason or f"{step.kind} aborted while it ran")
        finally:
            memory.running_long_step = None
