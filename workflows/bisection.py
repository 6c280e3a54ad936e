"""Bisection, the workflow part: once the harm is confirmed, find which platform change brought it.

It runs beside the response (evidence, severity and containment do not wait for it) and
`roll_back` waits for it, so a rollback can pin the last good change rather than merely the
previous version. It never blocks containment: a bisection that cannot run is noted, and the
incident goes on as before bisection existed.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from workflows.failures import cause_of
from workflows.policies import PROBE_TIMEOUT, VERIFY_HEARTBEAT
from workflows.record import Record

with workflow.unsafe.imports_passed_through():
    from activities.bisect import BisectActivities
    from stanch.models.bisection import BisectInput, Cause

# A gateway away is noted soon: the rollback waiting for bisection should not wait long for that.
BISECT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=5), maximum_attempts=2)


class Bisection:
    def __init__(self, record: Record) -> None:
        self.record = record
        self.running: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None] | None:
        """Begin, once per incident, for a target on the gateway (the one with a deployment log)."""
        state = self.record.state
        settings = self.record.runbook.bisect
        if state.cause is not None or self.running is not None or not settings.enabled or state.target.adapter != "gateway":
            return None
        self.running = asyncio.create_task(self.find_cause())
        return self.running

    async def finished(self) -> Cause | None:
        """The cause, once bisection is over (None if it never started). The wait is bounded by
        the activity's timeouts and retries; a responder resolving the incident ends it sooner
        (what waits, the rollback, is skipped then), and bisection goes on noting its cause."""
        running = self.running
        if running is None:
            return self.record.state.cause
        if workflow.patched("bisect-wait-ends-on-resolve"):
            memory = self.record.memory
            await workflow.wait_condition(lambda: running.done() or memory.resolve_request is not None)
            if running.done():
                await running  # its outcome (find_cause catches the activity's failure)
        else:
            await running
        return self.record.state.cause

    def input(self) -> BisectInput:
        state, runbook = self.record.state, self.record.runbook
        # The window ends when the first signal came: a change deployed after the harm was reported is no cause.
        end = state.opened_at
        return BisectInput(
            incident_id=state.id,
            target=state.target,
            checks=[check for check in runbook.confirm.checks if check.kind == "probe"],
            repro=state.repro,
            detector_specs=runbook.detectors,
            window_start=end - runbook.bisect.lookback,
            window_end=end,
            max_changes=runbook.bisect.max_changes,
        )

    async def find_cause(self) -> None:
        record = self.record
        record.note("bisect", "replaying the repro cases on each change in the exposure window")
        try:
            cause = await workflow.execute_activity_method(
                BisectActivities.bisect_changes,
                self.input(),
                start_to_close_timeout=PROBE_TIMEOUT,
                heartbeat_timeout=VERIFY_HEARTBEAT,
                retry_policy=BISECT_RETRY,
            )
        except ActivityError as failure:  # never blocks the response: it goes on without a cause
            cause = Cause(ran=True, note=f"bisection could not run: {cause_of(failure)}")
        record.state.cause = cause
        verdicts = [{"change": c.sequence, "version": c.release_version, "verdict": c.verdict} for c in cause.considered]
        record.note("bisect", cause.summary(), first_bad=cause.first_bad, last_good=cause.last_good, changes=verdicts)
