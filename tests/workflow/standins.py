"""Activity stand-ins for workflow tests: same names as the real activities, scripted outcomes.

Each test builds a `Script` saying how the outside world behaves (does confirm reproduce, which
action fails, does verification pass) and reads back what the workflow asked for.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.decisions import verify_approval
from stanch.models.actions import AppliedAction, idempotency_key
from stanch.models.activity_io import (
    ApplyInput,
    CaseResult,
    ConfirmInput,
    ConfirmResult,
    EvidenceInput,
    EvidenceResult,
    Finding,
    GradeInput,
    GradeResult,
    Notification,
    NotifyResult,
    ReviewInput,
    ReviewResult,
    UndoInput,
    VerifyInput,
    VerifyResult,
)
from stanch.models.bisection import BisectInput, Cause
from stanch.models.exposure import Exposure, ExposureInput
from stanch.models.shadow import FailingSample, ShadowInput, ShadowResult
from stanch.models.signals import ReproCase, Severity
from stanch.runbooks.conditions import grade, seriousness


@dataclass
class Script:
    confirm: str = "confirmed"  # confirmed | not_confirmed | inconclusive
    detectors: list[str] = field(default_factory=lambda: ["secret"])
    failing_kinds: set[str] = field(default_factory=set)  # apply fails (non-retryable) for these kinds
    failures_left: dict[str, int] = field(default_factory=dict)  # kind -> how many more times to fail
    verify_passes: list[bool] = field(default_factory=lambda: [True])
    applied: list[str] = field(default_factory=list)  # idempotency keys, in order
    undone: list[str] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    evidence_before_first_change: bool | None = None
    reviews: list[ReviewInput] = field(default_factory=list)
    review_fails: bool = False  # open_review refused (non-retryable), every time
    verified_versions: list[str] = field(default_factory=list)  # the version each verification probed
    long_running_kinds: set[str] = field(default_factory=set)  # these run (heartbeating) until cancelled
    cancelled: list[str] = field(default_factory=list)  # kinds whose activity was cancelled
    affected_users: list[str] | None = None  # the blast radius: these users got the harm; None: not measured
    exposure_inputs: list[ExposureInput] = field(default_factory=list)
    exposure_held: asyncio.Event | None = None  # a slow measure: it heartbeats until the test sets this
    exposure_fails: bool = False  # the gateway's sample store cannot be read (a retryable error), every attempt
    cause: Cause | None = None  # what bisection finds; None: it names nothing (no deployment log)
    bisect_inputs: list[BisectInput] = field(default_factory=list)
    bisect_fails: bool = False  # the gateway is away: bisection cannot run
    apply_inputs: list[ApplyInput] = field(default_factory=list)  # every step's input, as applied
    shadow_passes: list[bool] = field(default_factory=lambda: [True])  # each shadow round in turn (restore.shadow)


def stand_ins(script: Script) -> list:
    @activity.defn(name="confirm_incident")
    async def confirm_incident(input: ConfirmInput) -> ConfirmResult:
        fired = script.detectors if script.confirm == "confirmed" else []
        cases = [ReproCase(prompt=c.prompt, detectors=fired) for c in input.repro] if fired else []
        finding = Finding(check="scripted probe", outcome=script.confirm, detail=f"scripted {script.confirm}", detectors=fired)
        return ConfirmResult(outcome=script.confirm, findings=[finding], detectors_fired=fired, reproduced=cases)

    @activity.defn(name="measure_exposure")
    async def measure_exposure(input: ExposureInput) -> Exposure:
        script.exposure_inputs.append(input)
        if script.exposure_fails:
            raise ApplicationError("the gateway's sample store is unreachable", type="TargetUnavailable")
        while script.exposure_held is not None and not script.exposure_held.is_set():
            activity.heartbeat()
            await asyncio.sleep(0.05)
        exposure = Exposure(since=input.since, until=input.until, detectors=input.detectors, detail="scripted: no content sampled")
        if script.affected_users is None:
            return exposure
        users = script.affected_users
        return exposure.model_copy(
            update={"measured": True, "requests_affected": len(users), "users_affected": len(users), "affected_user_ids": users}
            | {"tenants_affected": 1, "affected_tenant_ids": ["acme"], "requests_exposed": 2 * len(users), "versions": ["2"]}
        )

    @activity.defn(name="bisect_changes")
    async def bisect_changes(input: BisectInput) -> Cause:
        script.bisect_inputs.append(input)
        if script.bisect_fails:
            raise ApplicationError("bisection could not run: the gateway is unreachable", type="TargetUnavailable", non_retryable=True)
        return script.cause or Cause(ran=True, note="scripted: no deployment log")

    @activity.defn(name="verify_on_shadow")
    async def verify_on_shadow(input: ShadowInput) -> ShadowResult:
        shadow_id = f"sh-{input.idempotency_key.split('/')[-1]}"
        passed = script.shadow_passes.pop(0) if len(script.shadow_passes) > 1 else script.shadow_passes[0]
        needed = input.clean_requests
        if passed:
            return ShadowResult(passed=True, shadow_id=shadow_id, clean=needed, needed=needed, mirrored=needed)
        failing = [FailingSample(id=f"{shadow_id}-1", detectors=input.detectors[:1])]
        return ShadowResult(passed=False, shadow_id=shadow_id, clean=0, needed=needed, mirrored=1, failing=failing)

    @activity.defn(name="snapshot_evidence")
    async def snapshot_evidence(input: EvidenceInput) -> EvidenceResult:
        script.evidence_before_first_change = not script.applied
        return EvidenceResult(sha256="ab" * 32, location=f"/evidence/{input.incident_id}.json")

    @activity.defn(name="grade_severity")
    async def grade_severity(input: GradeInput) -> GradeResult:
        severity, reasons = grade(input.runbook, input.signals, input.detectors_fired, input.signal_count, input.affected_users)
        in_force = input.current if input.current and input.current.rank > severity.rank else severity
        serious, days, why = seriousness(
            input.runbook, input.signals, in_force, input.detectors_fired, input.signal_count, input.affected_users
        )
        return GradeResult(severity=severity, reasons=reasons, serious=serious, report_days=days, serious_reason=why)

    async def apply(input: ApplyInput) -> AppliedAction:
        kind = input.action.kind
        if kind in script.failing_kinds:
            raise ApplicationError(f"{kind} refused by the target", type="InvalidAction", non_retryable=True)
        if script.failures_left.get(kind, 0) > 0:
            script.failures_left[kind] -= 1
            raise ApplicationError(f"{kind} failed once", type="InvalidAction", non_retryable=True)
        key = idempotency_key(input.occurrence or input.incident_id, input.stage, input.index, input.target)
        script.applied.append(key)
        script.apply_inputs.append(input)
        return AppliedAction(
            kind=kind,
            stage=input.stage,
            index=input.index,
            target=input.target,
            idempotency_key=key,
            params=input.action.params,
            inverse={"undo": kind},
            applied_at=datetime.now(UTC),
        )

    @activity.defn(name="apply_containment")
    async def apply_containment(input: ApplyInput) -> AppliedAction:
        return await apply(input)

    @activity.defn(name="apply_rollback")
    async def apply_rollback(input: ApplyInput) -> AppliedAction:
        return await apply(input)

    @activity.defn(name="apply_hotfix")
    async def apply_hotfix(input: ApplyInput) -> AppliedAction:
        if input.action.kind in script.long_running_kinds:  # a fine-tune that takes its time
            try:
                while True:
                    activity.heartbeat()
                    await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                script.cancelled.append(input.action.kind)
                raise
        return await apply(input)

    @activity.defn(name="verify_fix")
    async def verify_fix(input: VerifyInput) -> VerifyResult:
        script.verified_versions.append(input.version)
        passed = script.verify_passes.pop(0) if len(script.verify_passes) > 1 else script.verify_passes[0]
        case = CaseResult(prompt="repro", origin="incident", passed=passed, status_code=200, model_version="3")
        return VerifyResult(passed=passed, version="3", cases=[case])

    @activity.defn(name="lift_action")
    async def lift_action(input: UndoInput) -> AppliedAction:
        if f"undo:{input.applied.kind}" in script.failing_kinds:
            raise ApplicationError(f"undo of {input.applied.kind} refused", type="InvalidAction", non_retryable=True)
        script.undone.append(input.applied.idempotency_key)
        return input.applied.model_copy(update={"undone_at": datetime.now(UTC), "undo_key": input.applied.idempotency_key + "/undo"})

    @activity.defn(name="open_review")
    async def open_review(input: ReviewInput) -> ReviewResult:
        if script.review_fails:
            raise ApplicationError("the review folder is not writable", type="ReviewUnwritable", non_retryable=True)
        script.reviews.append(input)
        return ReviewResult(
            tasks=[{"kind": t} for t in input.runbook.review.tasks], postmortem="/reviews/pm.md", regression_cases_added=len(input.repro)
        )

    @activity.defn(name="notify")
    async def notify(notification: Notification) -> NotifyResult:
        script.notifications.append(notification)
        return NotifyResult(delivered=notification.recipients)

    return [
        confirm_incident,
        measure_exposure,
        bisect_changes,
        snapshot_evidence,
        grade_severity,
        apply_containment,
        apply_rollback,
        apply_hotfix,
        verify_fix,
        verify_on_shadow,
        lift_action,
        open_review,
        notify,
        verify_approval,  # the real one: it only checks a signature with the keys the test trusts
    ]


__all__ = ["Script", "stand_ins", "Severity"]
