"""Hotfix: guardrails, system prompt or a fine-tuned version — the fix users will get back."""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.exceptions import ApplicationError

from stanch.models.actions import ActionSpec, AppliedAction, idempotency_key
from stanch.models.activity_io import ApplyInput
from stanch.targets.base import TargetError
from stanch.targets.steps import apply_step, rendered_action, step_target
from stanch.temporal.activity_deps import ActivityDeps, as_application_error

JOB_POLL_SECONDS = 0.5


class HotfixActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="apply_hotfix")
    async def apply_hotfix(self, input: ApplyInput) -> AppliedAction:
        try:
            if input.action.kind != "deploy_finetune" or input.dry_run:  # a dry run plans the job, never starts it
                return await apply_step(self.deps.targets, input)
            version = await self.fine_tune(input)
            applied = await apply_step(self.deps.targets, input, ActionSpec(kind="deploy_version", params={"version": version}))
        except TargetError as error:
            raise as_application_error(error) from error
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
