"""A trainer speaking the OpenAI fine-tuning API: where a hotfix's fine-tune is trained.

OpenAI itself, Azure OpenAI, `stanch demo-upstream`, or any service with the same routes:
`POST /files` (the training JSONL), `POST /fine_tuning/jobs`, `GET /fine_tuning/jobs/{id}`,
`POST /fine_tuning/jobs/{id}/cancel`. The trainer serves no prompts and changes no control
plane: the fine-tuned model it names is registered on the gateway as a new version by the
hotfix activity, which is what users are then served.

One idempotency key trains once, even when a worker dies between the upload and the job:
every job is created with `metadata: {"stanch_key": key}` and an `Idempotency-Key` header, and
before uploading anything the trainer's jobs are searched for that key.

Once, unless that job failed or was cancelled: then a retry (a responder's, after the trainer
gave up) trains again under the key's next generation, `<key>#2`, `<key>#3`, ... A start looks
for the first generation whose job has not failed and follows it, running or done, or creates
it; two attempts at once pick the same generation, and the key's dedup keeps it one job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stanch.config.network import tls_verification
from stanch.models.actions import ActionSpec, AppliedAction
from stanch.targets.base import ApplyResult, JobStatus, NoStateToSnapshot, PlannedCall, ServesNoModel, TargetError

JOB_KIND = "finetune"
KEY_METADATA = "stanch_key"  # the job metadata that names the idempotency key it was created for
# How far back the search for a key's job pages through the trainer's jobs (newest first).
LIST_PAGES = 10
LIST_PAGE_SIZE = 100
# How many times one step's fine-tune may fail and be trained again before Stanch stops asking.
MAX_GENERATIONS = 20
# 408 and 429 are the client-side statuses where asking again later can succeed.
_RETRYABLE_CLIENT_STATUSES = {408, 429}
# The trainer's job statuses, in Stanch's words (JobStatus.status).
_STATUSES = {
    "validating_files": "queued",
    "queued": "queued",
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "failed",
}


@runtime_checkable
class Trainer(Protocol):
    """What the hotfix activity needs of a trainer: start (or find again, or train again where
    the key's job failed), follow, cancel."""

    name: str

    async def start_job(self, model: str, kind: str, params: dict[str, Any], idempotency_key: str) -> JobStatus: ...

    async def job_status(self, job_id: str) -> JobStatus: ...

    async def cancel_job(self, job_id: str) -> JobStatus: ...


class TrainingRequest(BaseModel):
    """What `start_job` trains: the upstream model to start from and the chat examples to learn."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(min_length=1, description="the upstream model name the trainer knows, e.g. gpt-4o-mini-2024-07-18")
    training_file: str = Field(min_length=1, description="the training examples, JSONL: one {messages: [...]} per line")
    suffix: str | None = Field(None, min_length=1, max_length=64, description="overrides the trainer's suffix for this job")


def _server_message(response: httpx.Response) -> str:
    """The trainer's own words: an OpenAI `error.message`, FastAPI's `detail`, or the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(body.get("detail"), str):
            return str(body["detail"])
    return str(body)[:300]


def job_status_of(job: dict[str, Any]) -> JobStatus:
    """A fine-tuning job object as Stanch follows it; `result.fine_tuned_model` once it succeeded."""
    status = str(job.get("status", ""))
    if status not in _STATUSES:
        raise TargetError(f"the trainer reported job {job.get('id')!r} in an unknown status {status!r}", retryable=True)
    error = None
    if status == "cancelled":
        error = "cancelled"
    elif status == "failed":
        reported = job.get("error") or {}
        if isinstance(reported, dict):
            error = str(reported.get("message") or reported.get("code") or "the trainer gave no reason")
        else:
            error = str(reported)
    result = {key: job[key] for key in ("fine_tuned_model", "model", "training_file", "trained_tokens") if job.get(key) is not None}
    return JobStatus(
        job_id=str(job["id"]),
        status=_STATUSES[status],
        progress=1.0 if status == "succeeded" else 0.0,
        result={**result, "trainer_status": status},
        error=error,
    )


class OpenAITrainer(ServesNoModel):
    """Fine-tunes through the OpenAI fine-tuning API; see the module docstring."""

    kind: ClassVar[str] = "trainer"
    label: ClassVar[str] = "OpenAI fine-tuning API"

    class Config(BaseModel):
        """The keys under `trainer:` in targets.yaml."""

        model_config = ConfigDict(extra="forbid")

        base_url: str = Field(min_length=1, description="the API root, /v1 included: https://api.openai.com/v1, http://127.0.0.1:8400/v1")
        api_key_env: str | None = Field(None, description="the environment variable holding its API key (sent as a Bearer token)")
        timeout_seconds: float = Field(30.0, gt=0)
        suffix: str = Field("stanch-fix", min_length=1, max_length=64, description="added to the fine-tuned model's name")
        hyperparameters: dict[str, Any] | None = Field(None, description="passed to the trainer as they are (n_epochs, ...)")

    def __init__(
        self,
        config: Config,
        *,
        name: str = "trainer",
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.base_url = config.base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._transport = transport  # tests may pass an in-process ASGI transport

    @classmethod
    def from_config(cls, config: Config, *, name: str, base: Path, env: Mapping[str, str]) -> Self:
        api_key = env.get(config.api_key_env) if config.api_key_env else None
        if config.api_key_env and not api_key:
            raise ValueError(f"api_key_env: the environment variable {config.api_key_env} is not set")
        return cls(config, name=name, api_key=api_key)

    # --- jobs -------------------------------------------------------------------------

    async def start_job(self, model: str, kind: str, params: dict[str, Any], idempotency_key: str) -> JobStatus:
        """Train `params.training_file` on top of `params.base_model`, once per idempotency key
        (again, under the key's next generation, where the key's job failed or was cancelled)."""
        if kind != JOB_KIND:
            raise TargetError(f"trainer {self.name} runs {JOB_KIND!r} jobs only, not {kind!r}", retryable=False)
        try:
            request = TrainingRequest.model_validate(params)
        except ValidationError as error:
            raise TargetError(f"bad fine-tune request for trainer {self.name}: {error}", retryable=False) from error
        for generation in range(1, MAX_GENERATIONS + 1):
            key = generation_key(idempotency_key, generation)
            existing = await self.find_job(key)
            # Found: a worker died after creating it, or an attempt timed out: follow that one, never train twice.
            job = job_status_of(existing) if existing is not None else await self._create(model, request, key)
            if job.status != "failed":  # (a job created may still be a failed one the Idempotency-Key replayed)
                return job
        raise TargetError(
            f"trainer {self.name}: the fine-tune under key {idempotency_key} failed or was cancelled {MAX_GENERATIONS} times; "
            "look at the trainer's jobs and their errors before training this step again",
            retryable=False,
        )

    async def _create(self, model: str, request: TrainingRequest, key: str) -> JobStatus:
        training_file = await self._upload(request.training_file, key)
        body: dict[str, Any] = {
            "model": request.base_model,
            "training_file": training_file,
            "suffix": request.suffix or self.config.suffix,
            "metadata": {KEY_METADATA: key, "stanch_model": model},
        }
        if self.config.hyperparameters:
            body["hyperparameters"] = self.config.hyperparameters
        return job_status_of(await self._request("POST", "/fine_tuning/jobs", json=body, headers={"Idempotency-Key": key}))

    async def find_job(self, idempotency_key: str) -> dict[str, Any] | None:
        """The job created for this key, newest first; None if the trainer lists none with it.

        The metadata filter is asked for, and checked here again: a trainer that ignores the
        filter lists every job, and one that keeps no metadata never matches (the
        `Idempotency-Key` header on create is then what keeps a retry from training twice)."""
        query: dict[str, str] = {f"metadata[{KEY_METADATA}]": idempotency_key, "limit": str(LIST_PAGE_SIZE)}
        for _ in range(LIST_PAGES):
            page = await self._request("GET", "/fine_tuning/jobs", params=query)
            jobs = [job for job in page.get("data") or [] if isinstance(job, dict)]
            for job in jobs:
                if (job.get("metadata") or {}).get(KEY_METADATA) == idempotency_key:
                    return job
            if not page.get("has_more") or not jobs:
                return None
            query["after"] = str(jobs[-1]["id"])
        return None

    async def job_status(self, job_id: str) -> JobStatus:
        return job_status_of(await self._request("GET", f"/fine_tuning/jobs/{_path_segment(job_id)}"))

    async def cancel_job(self, job_id: str) -> JobStatus:
        """Stop the job; one that already finished stays as it is (its status is returned)."""
        try:
            return job_status_of(await self._request("POST", f"/fine_tuning/jobs/{_path_segment(job_id)}/cancel"))
        except TargetError as error:
            if error.retryable:
                raise
            return await self.job_status(job_id)  # the trainer refuses to cancel a finished job

    async def _upload(self, training_file: str, idempotency_key: str) -> str:
        filename = "stanch-" + re.sub(r"[^A-Za-z0-9._-]+", "-", idempotency_key).strip("-")[:80] + ".jsonl"
        uploaded = await self._request(
            "POST",
            "/files",
            files={"file": (filename, training_file.encode(), "application/jsonl")},
            data={"purpose": "fine-tune"},
        )
        if not uploaded.get("id"):
            raise TargetError(f"trainer {self.name} stored the training file but named no id: {uploaded}", retryable=True)
        return str(uploaded["id"])

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        files: dict[str, Any] | None = None,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        what = f"{method} {self.base_url}{path}"
        try:
            # A client per call: activities may run on different event loops.
            async with httpx.AsyncClient(
                timeout=self.config.timeout_seconds, headers=self.headers, transport=self._transport, verify=tls_verification()
            ) as client:
                response = await client.request(
                    method, f"{self.base_url}{path}", json=json, params=params, files=files, data=data, headers=headers
                )
        except httpx.HTTPError as exc:
            raise TargetError(f"trainer {self.name} unreachable ({what}): {type(exc).__name__}: {exc}", retryable=True) from exc
        if response.status_code >= 400:
            retryable = response.status_code >= 500 or response.status_code in _RETRYABLE_CLIENT_STATUSES
            raise TargetError(
                f"trainer {self.name} refused {what} with HTTP {response.status_code}: {_server_message(response)}", retryable=retryable
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise TargetError(f"trainer {self.name} answered {what} with non-JSON: {response.text[:200]!r}", retryable=True) from exc
        if not isinstance(body, dict):
            raise TargetError(f"trainer {self.name} answered {what} with {type(body).__name__}, not a JSON object", retryable=True)
        return body

    # --- the Target protocol: a trainer changes no control plane -------------------------

    async def state(self, model: str) -> dict[str, Any]:
        raise NoStateToSnapshot(f"trainer {self.name} keeps no control state; the gateway's state shows the versions it trained")

    async def apply(self, model: str, action: ActionSpec, idempotency_key: str, incident_id: str, holder: str | None = None) -> ApplyResult:
        raise TargetError(self._no_actions(action.kind), retryable=False)

    async def undo(self, applied: AppliedAction, undo_key: str) -> ApplyResult:
        raise TargetError(self._no_actions(applied.kind), retryable=False)

    def plan(self, model: str, action: ActionSpec, idempotency_key: str) -> list[PlannedCall]:
        raise TargetError(self._no_actions(action.kind), retryable=False)

    def _no_actions(self, kind: str) -> str:
        return (
            f"trainer {self.name} ({self.label}) takes no {kind!r} action: it only trains. Name it in a deploy_finetune "
            f"step's `params.trainer` and keep the gateway as the step's target"
        )


def generation_key(idempotency_key: str, generation: int) -> str:
    """The key a generation's job is created under: the first is the key itself (jobs created
    before generations existed are found as they were), the next ones `<key>#2`, `<key>#3`, ..."""
    return idempotency_key if generation == 1 else f"{idempotency_key}#{generation}"


def _path_segment(job_id: str) -> str:
    """A job id as the trainer named it, refused if it could climb out of the jobs path."""
    if not re.fullmatch(r"[A-Za-z0-9._:-]+", job_id) or job_id in (".", ".."):
        raise TargetError(f"the trainer named a job id Stanch will not put in a URL: {job_id!r}", retryable=False)
    return job_id
