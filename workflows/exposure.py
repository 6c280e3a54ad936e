"""Blast radius, measured once the harm is confirmed: how many requests, users and tenants the
model served in the exposure window (the runbook's `exposure.lookback` before confirmation), and
which of them got the harm, by the detectors that confirmed it. Counts and ids only: the activity
never returns a prompt or an answer, so none reaches history.

Re-scoring thousands of sampled answers takes a while (a judge detector, minutes), so it runs
beside the response, as bisection does: containment never waits for it. When it lands, severity
is graded again (it only rises, as with new signals), so `affected_users_at_least` rules and the
widespread report clock still take effect; the review waits for it, so the postmortem and the
Art. 73 draft carry the exposure and the deployers to inform.

Measuring is a read: when it cannot be done, the incident goes on, saying exposure was not measured.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from workflows.failures import cause_of
from workflows.policies import VERIFY_HEARTBEAT
from workflows.record import Record

with workflow.unsafe.imports_passed_through():
    from activities.exposure import ExposureActivities
    from stanch.models.exposure import Exposure, ExposureInput

# Thousands of sampled answers, each scored by regex or a detector service; the activity
# heartbeats after every answer, so a stuck one is noticed within VERIFY_HEARTBEAT.
EXPOSURE_TIMEOUT = timedelta(minutes=15)
# Twice at most: the review waits for the outcome, and "not measured" is an answer it can carry.
EXPOSURE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10), maximum_attempts=2)


class BlastRadius:
    def __init__(self, record: Record) -> None:
        self.record = record
        self.running: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None] | None:
        """Begin, once per incident, beside the response; None when measured already (a continued run)."""
        if self.record.state.exposure is not None or self.running is not None:
            return None
        self.running = asyncio.create_task(self.measure())
        return self.running

    async def landed(self) -> None:
        """Wait until the measure is in, and graded, saying so while it is not: the review carries
        the exposure and the severity and report clock it led to."""
        memory = self.record.memory
        if self.running is None:  # not measured in this run (measured before a hand-over, or never begun)
            return
        if not self.running.done():
            self.record.note("exposure", "the review waits for the blast radius: the sampled answers are still being re-scored")
            await self.running
        if self.record.finished("severity"):  # the re-grading loop runs: let it take the count first
            await workflow.wait_condition(lambda: not memory.regrade_requested and memory.in_flight == 0)

    def exposure_input(self) -> ExposureInput:
        record, state = self.record, self.record.state
        until = workflow.now()
        confirming = record.memory.detectors_fired or [
            name for check in record.runbook.confirm.checks if check.kind == "probe" for name in check.detectors
        ]
        return ExposureInput(
            incident_id=state.id,
            target=state.target,
            since=until - record.runbook.exposure.lookback,
            until=until,
            detectors=list(dict.fromkeys(confirming)),
            detector_specs=record.runbook.detectors,
        )

    async def measure(self) -> None:
        state = self.record.state
        if state.exposure is not None:  # a continued run: measured before the hand-over
            return
        input = self.exposure_input()
        try:
            state.exposure = await workflow.execute_activity_method(
                ExposureActivities.measure_exposure,
                input,
                start_to_close_timeout=EXPOSURE_TIMEOUT,
                heartbeat_timeout=VERIFY_HEARTBEAT,
                retry_policy=EXPOSURE_RETRY,
            )
        except ActivityError as failure:
            detail = f"the exposure could not be read: {cause_of(failure)}"
            state.exposure = Exposure(since=input.since, until=input.until, detectors=input.detectors, detail=detail)
        exposure = state.exposure
        self.record.note(
            "exposure",
            exposure.summary(),
            users_affected=exposure.users_affected,
            tenants_affected=exposure.affected_tenant_ids,
            requests_exposed=exposure.requests_exposed,
        )
        if exposure.users_affected is not None:
            # Graded again with the count (severity only rises), starting the report clock if it
            # makes the incident serious. Graded not yet: the first grading reads it.
            self.record.memory.regrade_requested = True
