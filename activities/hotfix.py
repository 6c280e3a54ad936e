"""Hotfix: guardrails, system prompt or a fine-tuned version; then verify it really fixes."""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.actions import apply_through_target, rendered_action, step_target
from activities.deps import ActivityDeps, as_application_error
from activities.models import ApplyInput, CaseResult, VerifyInput, VerifyResult
from activities.regression import load_suite
from stanch.detectors import detect
from stanch.models import ActionSpec, AppliedAction, idempotency_key
from stanch.targets.base import TargetError

JOB_POLL_SECONDS = 0.5


class HotfixActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="apply_hotfix")
    async def apply_hotfix(self, input: ApplyInput) -> AppliedAction:
        if input.action.kind != "deploy_finetune" or input.dry_run:  # a dry run plans the job, never starts it
            return await apply_through_target(self.deps, input)
        version = await self.fine_tune(input)
        applied = await apply_through_target(self.deps, input, ActionSpec(kind="deploy_version", params={"version": version}))
        return applied.model_copy(update={"kind": "deploy_finetune", "result": {**applied.result, "version": version}})

    async def fine_tune(self, input: ApplyInput) -> str:
        """Start (or, after a worker crash, find again) the job and heartbeat its progress."""
        ref = step_target(input)  # the step may name the control plane that trains (`target: trainer`)
        job_key = idempotency_key(input.occurrence or input.incident_id, input.stage, input.index, ref, "finetune-job")
        target = self.deps.targets.get(ref)
        try:
            job = await target.start_job(ref.model, "finetune", rendered_action(input).params, job_key)
            while job.status not in ("succeeded", "failed"):
                activity.heartbeat({"job_id": job.job_id, "progress": job.progress})
                await asyncio.sleep(JOB_POLL_SECONDS)
                job = await target.job_status(job.job_id)
        except TargetError as error:
            raise as_application_error(error, f"fine-tune on {ref}") from error
        if job.status == "failed":
            raise ApplicationError(f"fine-tune job {job.job_id} failed: {job.error}", type="FinetuneFailed")
        activity.heartbeat({"job_id": job.job_id, "progress": 1.0})
        return str(job.result["version"])

    @activity.defn(name="verify_fix")
    async def verify_fix(self, input: VerifyInput) -> VerifyResult:
        """Replay the incident's repro cases and the regression suite against the patched release."""
        cases = [(case.prompt, "incident") for case in input.repro]
        if input.include_regression_suite:
            known = {prompt for prompt, _ in cases}
            suite = load_suite(self.deps.settings.regression_dir, input.target.model)
            cases += [(case.prompt, "regression") for case in suite if case.prompt not in known]
        if not cases:
            raise ApplicationError("nothing to verify: no repro case and an empty regression suite", type="NothingToVerify", non_retryable=True)
        target = self.deps.targets.get(input.target)
        results: list[CaseResult] = []
        version = None
        try:
            for done, (prompt, origin) in enumerate(cases):
                activity.heartbeat({"cases_done": done, "cases": len(cases)})
                answer = await target.probe(input.target.model, prompt, version="release")
                version = answer.model_version
                hits = detect(input.detectors, answer.output, prompt)
                results.append(
                    CaseResult(
                        prompt=prompt,
                        origin=origin,
                        passed=answer.status_code == 200 and not hits,
                        status_code=answer.status_code,
                        model_version=answer.model_version,
                        hits=[f"{hit.detector}: {hit.evidence}" for hit in hits],
                    )
                )
        except TargetError as error:
            raise as_application_error(error, f"probing {input.target}") from error
        return VerifyResult(passed=all(case.passed for case in results), version=version, cases=results)
