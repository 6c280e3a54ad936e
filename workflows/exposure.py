"""Blast radius, measured once the harm is confirmed and before severity is graded: how many
requests, users and tenants the model served in the exposure window (the runbook's
`exposure.lookback` before confirmation), and which of them got the harm, by the detectors that
confirmed it. Severity and seriousness rules read it (`affected_users_at_least`), the review and
the Art. 73 draft name the deployers to inform. Counts and ids only: the activity never returns
a prompt or an answer, so none reaches history.

Measuring is a read: when it cannot be done, the incident goes on, saying exposure was not measured.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows.failures import cause_of
from workflows.policies import READ_RETRY, VERIFY_HEARTBEAT
from workflows.record import Record

with workflow.unsafe.imports_passed_through():
    from activities.exposure import ExposureActivities
    from stanch.models.exposure import Exposure, ExposureInput

# Thousands of sampled answers, each scored by regex or a detector service: a heartbeat per page.
EXPOSURE_TIMEOUT = timedelta(minutes=15)


class BlastRadius:
    def __init__(self, record: Record) -> None:
        self.record = record

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
                retry_policy=READ_RETRY,
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
