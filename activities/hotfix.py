"""Hotfix: guardrails, system prompt or a fine-tuned version — the fix users will get back.

A fine-tune (`deploy_finetune`) is trained on the incident itself:

1. the training file: each repro case's conversation followed by the answer the fix must give
   (the runbook's `params.answer`, a refusal the hotfix gate's approvers approve, or the
   answer a responder supplied for that case), plus the runbook's own `params.examples`; with
   `answer`, the model's regression-suite cases of the same harm (a detector in common with
   the repro cases) learn it too, as verify replays them;
2. the job, on the step's trainer (`params.trainer`, default `trainer`: the OpenAI
   fine-tuning API), starting from the upstream model of the version it fixes
   (`params.base_version`, default the release) as the gateway's state names it; a job of the
   step that failed or was cancelled is trained again (the trainer's next key generation);
3. followed with heartbeats carrying the job id for hours if need be, and cancelled only when
   the workflow cancels the activity (an abort): an attempt that timed out, or a worker shut
   down, leaves the job training for the retry to follow;
4. the fine-tuned model registered on the gateway as a new version (weight 0) and, when the
   step names a registry (`params.registry`: an `mlflow` target), as a new version of the
   model's registered model there (a run holding a JSON description of it; no alias moves:
   serving it from the registry is a runbook step of its own), then deployed on the gateway
   as the release, which verify then probes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.drill_guard import refuse_outside_drill_route
from activities.metrics import counted_step
from stanch.models.actions import ActionSpec, AppliedAction, TargetRef, idempotency_key
from stanch.models.activity_io import ApplyInput
from stanch.models.decisions import AnswerCorrection
from stanch.models.signals import ReproCase
from stanch.targets.base import JobStatus, TargetError
from stanch.targets.mlflow import MlflowTarget
from stanch.targets.mlflow_versions import FineTunedModel
from stanch.targets.registry import DEFAULT_TRAINER
from stanch.targets.steps import apply_step, rendered_action, step_holder, step_target
from stanch.targets.trainer import Trainer
from stanch.temporal.activity_deps import ActivityDeps, as_application_error

JOB_POLL_SECONDS = 0.5  # the first wait between two looks at the job
JOB_POLL_MAX_SECONDS = 5.0  # the longest: well inside the step's heartbeat timeout (10 s)


T = TypeVar("T")


class TrainingExample(BaseModel):
    """One chat example written in the runbook: the conversation, ending with the answer to learn."""

    model_config = ConfigDict(extra="forbid")

    messages: list[dict[str, Any]] = Field(min_length=2)

    @field_validator("messages")
    @classmethod
    def _ends_with_the_answer(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for number, message in enumerate(messages, 1):
            if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
                raise ValueError(f"message {number} needs a `role` and a text `content`")
        if messages[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant's answer the fine-tune learns")
        return messages


class FinetuneParams(BaseModel):
    """A `deploy_finetune` step's params in the runbook."""

    model_config = ConfigDict(extra="forbid")  # a typo in a runbook must fail loudly

    answer: str | None = Field(None, min_length=1, description="what the fix answers every repro case (a refusal the approvers approve)")
    examples: list[TrainingExample] = Field(default_factory=list, description="more examples to train on, written in the runbook")
    trainer: str = Field(DEFAULT_TRAINER, min_length=1, description="the configured target that trains")
    base_version: str | None = Field(None, min_length=1, description="the gateway version to fine-tune; default: the release")
    suffix: str | None = Field(None, min_length=1, max_length=64, description="added to the fine-tuned model's name")
    registry: str | None = Field(
        None, min_length=1, description="an `mlflow` target of targets.yaml: the fine-tuned model becomes a new version there too"
    )
    include_regression_suite: bool = Field(
        True,
        description="train on the model's regression-suite cases of the same harm too (with `answer`; a detector in common "
        "with the repro cases): verify replays them, a fix must not leak there",
    )


class HotfixActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="apply_hotfix")
    async def apply_hotfix(self, input: ApplyInput) -> AppliedAction:
        refuse_outside_drill_route(self.deps.targets, step_target(input), input.action.kind)
        try:
            with counted_step(self.deps.targets, input):
                if input.action.kind != "deploy_finetune" or input.dry_run:  # a dry run plans the job, never starts it
                    return await apply_step(self.deps.targets, input)
                trained = await self.fine_tune(input)
                deploy = ActionSpec(kind="deploy_version", params={"version": trained["version"]})
                applied = await apply_step(self.deps.targets, input, deploy)
        except TargetError as error:
            raise as_application_error(error) from error
        return applied.model_copy(update={"kind": "deploy_finetune", "result": {**applied.result, **trained}})

    async def fine_tune(self, input: ApplyInput) -> dict[str, Any]:
        """Train on the incident and register the result on the gateway; what was trained and registered."""
        params = finetune_params(input)
        harm = input.verify_detectors or [detector for case in input.repro for detector in case.detectors]
        # The suite may be a database on another host: its round trips stay off the event loop.
        suite = (
            await asyncio.to_thread(regression_cases, self.deps, input.target.model, input.repro, harm)
            if params.include_regression_suite and params.answer
            else []
        )
        training_file = build_training_file(input.repro, input.corrections, params, suite)
        ref = step_target(input)
        gateway = self.deps.targets.get(ref)
        trainer = self.trainer(ref.model_copy(update={"adapter": params.trainer}))
        registry = self.registry(ref.model_copy(update={"adapter": params.registry})) if params.registry else None
        state = await gateway.state(ref.model)
        base_version = params.base_version or str(state.get("release_version") or "")
        base = version_entry(state, base_version, ref.model)

        occurrence = input.occurrence or input.incident_id
        job_key = idempotency_key(occurrence, input.stage, input.index, ref, "finetune-job")
        request: dict[str, Any] = {"base_model": base["upstream_model"], "training_file": training_file}
        if params.suffix:
            request["suffix"] = params.suffix
        job = await self.train(trainer, ref.model, request, job_key)
        fine_tuned_model = str(job.result.get("fine_tuned_model") or "")
        if not fine_tuned_model:
            raise ApplicationError(f"fine-tune job {job.job_id} succeeded but named no fine_tuned_model", type="FinetuneFailed")

        # Named from the versions there are now: training takes long, and others may have come meanwhile.
        registration = ActionSpec(
            kind="register_version",
            params={
                "version": next_version_name(await gateway.state(ref.model), base_version),
                "upstream_model": fine_tuned_model,
                "base_url": base.get("base_url"),
                "from_version": base_version,
                "source": f"fine-tune job {job.job_id}",
            },
        )
        # A key of its own (the deploy that follows uses the step's): a retry registers it once,
        # and the gateway's replay names the version the first attempt registered.
        register_key = idempotency_key(occurrence, input.stage, input.index, ref, "register-version")
        registered = await gateway.apply(ref.model, registration, register_key, input.incident_id, holder=step_holder(input))
        version = str(registered.result.get("version") or registration.params["version"])
        trained = {"version": version, "fine_tuned_model": fine_tuned_model, "job_id": job.job_id, "base_version": base_version}
        if registry is None:
            return trained
        fine_tuned = FineTunedModel(
            incident_id=input.incident_id,
            fine_tuned_model=fine_tuned_model,
            base_url=base.get("base_url"),
            job_id=job.job_id,
            trainer=trainer.name,
            base_version=base_version,
            base_model=base["upstream_model"],
            gateway_version=version,
        )
        registry_key = idempotency_key(occurrence, input.stage, input.index, ref, "registry-version")
        return {**trained, **await registry.register_fine_tune(ref.model, fine_tuned, registry_key)}

    def trainer(self, ref: TargetRef) -> Trainer:
        how = (
            f"a deploy_finetune step trains on an OpenAI fine-tuning API: set STANCH_TRAINER_URL for the default "
            f"`{DEFAULT_TRAINER}`, or add a `trainer:` entry to targets.yaml and name it in the step's `params.trainer`"
        )
        return self.configured(ref, Trainer, "trainer", "a trainer", how)  # type: ignore[type-abstract]  # a runtime-checkable Protocol

    def registry(self, ref: TargetRef) -> MlflowTarget:
        """The MLflow target the step names, checked before any training: a typo must not cost a fine-tune."""
        how = "a deploy_finetune step's `params.registry` names an `mlflow:` entry of targets.yaml"
        return self.configured(ref, MlflowTarget, "registry", "an MLflow registry", how)

    def configured(self, ref: TargetRef, kind: type[T], role: str, kind_name: str, how: str) -> T:
        """The target `ref` names, which must be configured and be a `kind` (`kind_name`, with its
        article); else why not, for good."""
        if ref.adapter not in self.deps.targets:
            raise TargetError(f"no {role} named {ref.adapter!r} is configured: {how}", retryable=False)
        target = self.deps.targets.get(ref)
        if not isinstance(target, kind):
            raise TargetError(f"target {ref.adapter} is not {kind_name}: {how}", retryable=False)
        return target

    async def train(self, trainer: Trainer, model: str, request: dict[str, Any], job_key: str) -> JobStatus:
        """Start the job (or, after a worker crash, find it again) and follow it to its end.

        The workflow cancelling the activity (the incident was aborted) cancels the job on the
        trainer; any other end of this attempt (a timeout, a worker shutting down) leaves the job
        training, and the retry follows it by the id in the last heartbeat."""
        job: JobStatus | None = None
        try:
            resumed = heartbeat_job_id()
            starting = {"status": "starting", "trainer": trainer.name}
            if resumed:
                job = await heartbeating(trainer.job_status(resumed), {**starting, "job_id": resumed})
            else:
                job = await heartbeating(trainer.start_job(model, "finetune", request, job_key), starting)
            wait = JOB_POLL_SECONDS
            while job.status not in ("succeeded", "failed"):
                following = {"job_id": job.job_id, "status": job.status, "trainer": trainer.name}
                activity.heartbeat(following)
                await asyncio.sleep(wait)
                wait = min(wait * 1.5, JOB_POLL_MAX_SECONDS)
                job = await heartbeating(trainer.job_status(job.job_id), following)
        except TargetError as error:
            raise as_application_error(error, f"fine-tune on trainer {trainer.name}") from error
        except asyncio.CancelledError:
            if job is not None:
                if the_workflow_cancelled():
                    await cancel_quietly(trainer, job.job_id)
                else:
                    activity.logger.info("fine-tune job %s on trainer %s left training for the retry to follow", job.job_id, trainer.name)
            raise
        activity.heartbeat({"job_id": job.job_id, "status": job.status, "trainer": trainer.name})
        if job.status == "failed":
            # Retrying at once would only find the same failed job: a human decides, and their
            # retry (a new activity, no heartbeat to follow) trains again under the next key generation.
            raise ApplicationError(
                f"fine-tune job {job.job_id} on trainer {trainer.name} failed: {job.error}; "
                "retry the step to train again, or skip or abort it",
                type="FinetuneFailed",
                non_retryable=True,
            )
        return job


async def heartbeating(call: Awaitable[JobStatus], details: dict[str, Any]) -> JobStatus:
    """The trainer's answer, heartbeating while it takes its time: a slow trainer is not a dead worker."""
    answer = asyncio.ensure_future(call)
    try:
        while True:
            done, _ = await asyncio.wait({answer}, timeout=JOB_POLL_MAX_SECONDS)
            if done:
                return answer.result()
            activity.heartbeat(details)
    except asyncio.CancelledError:
        answer.cancel()
        raise


def heartbeat_job_id() -> str | None:
    """The job an earlier attempt of this activity was following, from its last heartbeat."""
    details = activity.info().heartbeat_details
    if details and isinstance(details[0], dict) and isinstance(details[0].get("job_id"), str):
        return str(details[0]["job_id"])
    return None


def the_workflow_cancelled() -> bool:
    """Whether this activity was cancelled because the workflow asked (an abort), not because
    the attempt timed out, its worker is shutting down, or the server no longer knows it."""
    details = activity.cancellation_details()
    return details is not None and details.cancel_requested


async def cancel_quietly(trainer: Trainer, job_id: str) -> None:
    """Cancel on the way out of a cancelled activity: a failure is logged, the cancellation goes on."""
    try:
        cancelled = await trainer.cancel_job(job_id)
        activity.logger.info("fine-tune job %s on trainer %s cancelled (now %s)", job_id, trainer.name, cancelled.status)
    except TargetError as error:
        activity.logger.warning("could not cancel fine-tune job %s on trainer %s: %s", job_id, trainer.name, error)


def finetune_params(input: ApplyInput) -> FinetuneParams:
    try:
        return FinetuneParams.model_validate(rendered_action(input).params)
    except ValidationError as error:
        raise ApplicationError(f"the deploy_finetune step's params are wrong: {error}", type="InvalidAction", non_retryable=True) from error


def conversation_of(case: ReproCase) -> list[dict[str, Any]]:
    """What was asked in this case: the fix's answer takes the place of the reported one."""
    return case.question()


def training_line(case: ReproCase, answer: str) -> dict[str, Any]:
    """One chat example: the case's conversation answered by `answer`, with the tools it offers
    (OpenAI's fine-tuning format takes them per line: the fix must not call them when offered)."""
    line: dict[str, Any] = {"messages": [*conversation_of(case), {"role": "assistant", "content": answer}]}
    if case.tools:
        line["tools"] = case.tools
    return line


def corrected_answers(repro: list[ReproCase], corrections: list[AnswerCorrection]) -> dict[int, str]:
    """Case number (1 for the first) -> the answer a responder supplied; the latest one wins."""
    answers: dict[int, str] = {}
    for correction in corrections:
        if correction.case is not None:
            answers[correction.case] = correction.answer
            continue
        for number, case in enumerate(repro, 1):
            if case.prompt == correction.prompt:
                answers[number] = correction.answer
    return answers


def regression_cases(deps: ActivityDeps, model: str, repro: list[ReproCase], harm: list[str]) -> list[ReproCase]:
    """The model's regression-suite cases (past incidents') of the harm this fix is about — those
    a detector in `harm` caught (what verification will look for, else what caught the incident's
    own cases) — that the incident's cases do not repeat.

    The suite holds every runbook's cases, benign prompts of quality or bad-update incidents
    too; trained with this step's refusal they would learn to refuse. A case that recorded no
    detectors cannot be told apart, so it is left out."""
    known = {case.key() for case in repro}
    suite = [entry.repro_case() for entry in deps.regression_suite.cases(model)]
    return [case for case in suite if set(harm).intersection(case.detectors) and case.key() not in known]


def build_training_file(
    repro: list[ReproCase], corrections: list[AnswerCorrection], params: FinetuneParams, suite: list[ReproCase] | None = None
) -> str:
    """The training JSONL: each repro case paired with the answer the fix must give, then the
    regression suite's cases with the step's answer, then the runbook's examples."""
    if not repro and not params.examples:
        raise ApplicationError(
            "nothing to fine-tune on: the incident has no repro case and the deploy_finetune step no `params.examples`; "
            "report a repro case with the incident, or write chat examples in the runbook step",
            type="NoTrainingData",
            non_retryable=True,
        )
    corrected = corrected_answers(repro, corrections)
    lines = []
    for number, case in enumerate(repro, 1):
        answer = corrected.get(number) or params.answer
        if not answer:
            raise ApplicationError(
                f"repro case {number} ({case.prompt[:80]!r}) has no answer to train on: give the deploy_finetune step "
                f"`params.answer` (the refusal its approvers approve), or supply one with "
                f"`stanch correct INCIDENT --case {number} --answer TEXT`",
                type="NoTrainingData",
                non_retryable=True,
            )
        lines.append(training_line(case, answer))
    lines += [training_line(case, params.answer) for case in suite or [] if params.answer]
    lines += [{"messages": example.messages} for example in params.examples]
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


def version_entry(state: dict[str, Any], version: str, model: str) -> dict[str, Any]:
    """The gateway's entry for the version to fine-tune, which must name its upstream model."""
    versions = [entry for entry in state.get("versions") or [] if isinstance(entry, dict)]
    entry = next((entry for entry in versions if str(entry.get("version")) == version), None)
    if entry is None:
        known = ", ".join(str(entry.get("version")) for entry in versions) or "none"
        raise TargetError(f"model {model} has no version {version!r} on the gateway to fine-tune (known: {known})", retryable=False)
    if not entry.get("upstream_model"):
        raise TargetError(
            f"version {version} of {model} names no upstream model on the gateway: a fine-tune starts from the upstream "
            "model a version serves (configure the version's upstream)",
            retryable=False,
        )
    return entry


def next_version_name(state: dict[str, Any], base_version: str) -> str:
    """The next free version name: one above the highest numeric version, else `<base>-ft<n>`."""
    names = {str(entry.get("version")) for entry in state.get("versions") or [] if isinstance(entry, dict)}
    numeric = [int(name) for name in names if name.isdigit()]
    if numeric:
        return str(max(numeric) + 1)
    suffix = 1
    while f"{base_version}-ft{suffix}" in names:
        suffix += 1
    return f"{base_version}-ft{suffix}"
