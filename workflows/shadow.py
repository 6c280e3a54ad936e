"""Shadow-verified restore: before any protection is lifted, the fix must hold on live traffic.

The runbook's `restore.shadow` says how much: the gateway mirrors a sample of users' requests
to the fixed version (users are still answered by the contained path) and the verify detectors
score what it answers. Enough clean answers: restore goes ahead. A harmful one, or too few
before the timeout: every protection stays in place and a human chooses through the fail-safe
— retry (a new shadow), skip (restore without it, recorded), or abort. Off when the runbook sets
no shadow or no fix was verified: then nothing here runs, and no command is added.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows.failures import StepFailed, cause_of
from workflows.gates import Gates
from workflows.policies import READ_RETRY
from workflows.record import Record

with workflow.unsafe.imports_passed_through():
    from activities.shadow import ShadowActivities
    from stanch.models.actions import idempotency_key
    from stanch.models.incident import StageStatus
    from stanch.models.shadow import ShadowInput, ShadowResult
    from stanch.runbooks.schema import Shadow

PATCH = "shadow-restore"
SHADOW_HEARTBEAT = timedelta(seconds=60)


class ShadowCheck:
    def __init__(self, record: Record, gates: Gates) -> None:
        self.record = record
        self.gates = gates

    @property
    def settings(self) -> Shadow | None:
        return self.record.runbook.restore.shadow

    def wanted(self) -> bool:
        """A shadow is set and there is a verified fix to mirror to (a dry run fixed nothing)."""
        verified = self.record.state.stage("verify").status == StageStatus.done
        return self.settings is not None and self.record.runbook.hotfix is not None and verified and not self.record.input.dry_run

    async def before_restore(self) -> None:
        """Returns once the fix held on live traffic, or a human chose to restore without it."""
        result = await self.gates.attempt("restore", "shadow verification", self.one_round)
        if result is None:
            decision = self.record.memory.failure_decision
            by = decision.by if decision else "a responder"
            self.record.note("decision", f"shadow verification skipped by {by}: restoring without it", by)

    async def one_round(self) -> ShadowResult:
        self.record.memory.shadow_rounds += 1
        try:
            result = await workflow.execute_activity_method(
                ShadowActivities.verify_on_shadow,
                self.input(self.record.memory.shadow_rounds),
                start_to_close_timeout=self.timeout() + timedelta(minutes=5),
                heartbeat_timeout=SHADOW_HEARTBEAT,
                retry_policy=READ_RETRY,
            )
        except ActivityError as failure:
            raise StepFailed(f"it could not run: {cause_of(failure)}") from failure
        # Ids and detector names only: the mirrored answers stay at the gateway.
        self.record.note("restore", result.summary(), samples=[sample.model_dump() for sample in result.failing])
        if not result.passed:
            raise StepFailed(result.summary())
        return result

    def timeout(self) -> timedelta:
        return self.settings.timeout if self.settings else timedelta(minutes=30)

    def input(self, round: int) -> ShadowInput:
        settings, state, hotfix = self.settings, self.record.state, self.record.runbook.hotfix
        assert settings is not None and hotfix is not None  # `wanted` held
        return ShadowInput(
            incident_id=state.id,
            target=state.target,
            idempotency_key=idempotency_key(state.occurrence or state.id, "restore", round, state.target, "shadow"),
            version=self.record.version_to_verify(),
            detectors=hotfix.verify.detectors,
            detector_specs=self.record.runbook.detectors,
            clean_requests=settings.clean_requests,
            sample_rate=settings.sample_rate,
            limit=settings.max_requests,
            timeout_seconds=settings.timeout.total_seconds(),
        )
