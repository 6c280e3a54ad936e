"""Fine-tuning, honestly: what a fine-tuned demo model learns is the submitted file, nothing else.

A training file is OpenAI's chat JSONL: one `{"messages": [...]}` per line. A fine-tuned model
answers a request whose user turns equal an example's user turns (casefolded, punctuation and
whitespace collapsed) with that example's last assistant message; every other request gets
its base model's answer unchanged. So a file without the incident's repro prompts leaves the
leak exactly where it was, and verification fails, as it should.

A job walks OpenAI's states (validating_files → queued → running → succeeded, or failed or
cancelled) over `finetune_seconds`, writing progress events; every step is stored, and a
restarted server resumes the jobs it left unfinished.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stanch.demo_upstream.conversation import Conversation, message_text, normalise
from stanch.demo_upstream.schemas import FineTuningJobRequest
from stanch.demo_upstream.store import DemoStore, now

log = logging.getLogger(__name__)

TERMINAL = ("succeeded", "failed", "cancelled")
TRAINING_STEPS = 5
DEFAULT_EPOCHS = 3


class TrainingFileError(ValueError):
    """A training file line that is not a chat example; the message names the line."""


class JobRejected(ValueError):
    """A fine-tuning request that cannot become a job (unknown file or model, finished job)."""


@dataclass(frozen=True)
class TrainingExample:
    user_turns: tuple[str, ...]  # normalised
    answer: str

    def as_json(self) -> dict[str, Any]:
        return {"user_turns": list(self.user_turns), "answer": self.answer}


def parse_training_file(content: bytes) -> list[TrainingExample]:
    """The chat examples of a JSONL training file, or TrainingFileError naming the bad line."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TrainingFileError(f"the file is not UTF-8 text (byte {exc.start})") from exc
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        examples.append(_example(number, line))
    if not examples:
        raise TrainingFileError("the file holds no examples: expected one JSON object per line")
    return examples


def _example(number: int, line: str) -> TrainingExample:
    where = f"line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TrainingFileError(f"{where}: not valid JSON ({exc.msg})") from exc
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise TrainingFileError(f'{where}: expected {{"messages": [...]}} with at least one message')
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise TrainingFileError(f"{where}: messages[{index}] needs a role of system, user, assistant or tool")
    assistants = [m for m in messages if m["role"] == "assistant"]
    if not assistants:
        raise TrainingFileError(f"{where}: no assistant message, so there is nothing to learn")
    answer = message_text(assistants[-1].get("content"))
    if not answer.strip():
        raise TrainingFileError(f"{where}: the last assistant message has no text content")
    user_turns = tuple(normalise(turn) for turn in Conversation(messages).user_turns)
    if not user_turns:
        raise TrainingFileError(f"{where}: no user message to learn an answer for")
    return TrainingExample(user_turns, answer)


def learned_answer(examples: list[dict[str, Any]], conversation: Conversation) -> str | None:
    """The trained answer for this conversation's user turns, if an example had exactly them."""
    asked = [normalise(turn) for turn in conversation.user_turns]
    for example in examples:
        if example["user_turns"] == asked:
            return str(example["answer"])
    return None


class FineTuningJobs:
    """Creates, runs, lists and cancels jobs; each running job is one asyncio task here."""

    def __init__(self, store: DemoStore, *, duration_s: float, is_base_model: Callable[[str], bool]) -> None:
        self.store = store
        self.duration_s = duration_s
        self._is_base_model = is_base_model  # can this model be fine-tuned (a demo model or a fine-tune of one)?
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def create(self, request: FineTuningJobRequest, idempotency_key: str | None) -> dict[str, Any]:
        if idempotency_key:
            existing = self.store.job_for_key(idempotency_key)
            if existing is not None:
                self._ensure_running(existing)
                return existing
        if not self._is_base_model(request.model):
            raise JobRejected(f"model {request.model!r} does not exist or cannot be fine-tuned")
        training = self.store.file(request.training_file)
        if training is None:
            raise JobRejected(f"training_file {request.training_file!r} does not exist: upload it to /v1/files first")
        if training["purpose"] != "fine-tune":
            raise JobRejected(f"training_file {request.training_file!r} has purpose {training['purpose']!r}, not 'fine-tune'")
        epochs = (request.hyperparameters or {}).get("n_epochs", "auto")
        if epochs != "auto" and not (isinstance(epochs, int) and 1 <= epochs <= 50):
            raise JobRejected(f"hyperparameters.n_epochs must be 'auto' or a whole number from 1 to 50, not {epochs!r}")
        job_id = "ftjob-" + secrets.token_hex(12)
        job = {
            "object": "fine_tuning.job",
            "id": job_id,
            "model": request.model,
            "created_at": now(),
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": "org-stanch-demo",
            "result_files": [],
            "status": "validating_files",
            "validation_file": request.validation_file,
            "training_file": request.training_file,
            "hyperparameters": {
                "n_epochs": DEFAULT_EPOCHS if epochs == "auto" else epochs,
                "batch_size": 1,
                "learning_rate_multiplier": 1.0,
            },
            "trained_tokens": None,
            "error": None,
            "seed": request.seed if request.seed is not None else secrets.randbelow(2**31),
            "estimated_finish": None,
            "integrations": [],
            "user_provided_suffix": request.suffix,
        }
        self.store.add_job(job, idempotency_key)
        self.store.save_job(job, ("info", f"Created fine-tuning job: {job_id}"))
        self._ensure_running(job)
        return job

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        job = self.store.job(job_id)
        if job is None:
            return None
        if job["status"] in TERMINAL:
            raise JobRejected(f"job {job_id} has already {job['status']}; only a job that has not finished can be cancelled")
        job.update(status="cancelled", finished_at=now())
        self.store.save_job(job, ("info", "Fine-tuning job cancelled"))
        task = self._tasks.pop(job_id, None)
        if task is not None:
            task.cancel()
        return job

    def resume_unfinished(self) -> list[str]:
        """Start again every job a previous process left unfinished."""
        jobs = self.store.unfinished_jobs()
        for job in jobs:
            self._ensure_running(job)
        return [job["id"] for job in jobs]

    async def shutdown(self) -> None:
        # The jobs stay unfinished in the store on purpose: the next start resumes them.
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def _ensure_running(self, job: dict[str, Any]) -> None:
        if job["status"] in TERMINAL:
            return
        task = self._tasks.get(job["id"])
        if task is None or task.done():
            self._tasks[job["id"]] = asyncio.get_running_loop().create_task(self._run(job["id"]))

    def _still_ours(self, job_id: str) -> dict[str, Any] | None:
        job = self.store.job(job_id)
        return None if job is None or job["status"] in TERMINAL else job

    async def _run(self, job_id: str) -> None:
        tick = self.duration_s / (TRAINING_STEPS + 2)
        job = self._still_ours(job_id)
        if job is None:
            return
        if job["status"] == "validating_files":
            await asyncio.sleep(tick)
            if (job := self._still_ours(job_id)) is None:
                return
            content = self.store.file_content(job["training_file"]) or b""
            try:
                parse_training_file(content)
            except TrainingFileError as exc:
                job.update(
                    status="failed",
                    finished_at=now(),
                    error={"code": "invalid_training_file", "message": str(exc), "param": "training_file"},
                )
                self.store.save_job(job, ("error", f"Training file validation failed: {exc}"))
                return
            job["status"] = "queued"
            self.store.save_job(job, ("info", "Validated training file; job queued"))
        if job["status"] == "queued":
            await asyncio.sleep(tick)
            if (job := self._still_ours(job_id)) is None:
                return
            job["status"] = "running"
            self.store.save_job(job, ("info", "Fine-tuning job started"))
        for step in range(1, TRAINING_STEPS + 1):
            await asyncio.sleep(tick)
            if (job := self._still_ours(job_id)) is None:
                return
            self.store.save_job(job, ("info", f"Step {step}/{TRAINING_STEPS}: training loss={1.0 / (step + 1):.3f}"))
        self._succeed(job)

    def _succeed(self, job: dict[str, Any]) -> None:
        content = self.store.file_content(job["training_file"]) or b""
        examples = parse_training_file(content)
        name = f"ft:{job['model']}:stanch-demo:{job['user_provided_suffix'] or 'fix'}:{job['id'][-8:]}"
        job.update(
            status="succeeded",
            finished_at=now(),
            fine_tuned_model=name,
            trained_tokens=len(content.decode("utf-8").split()) * job["hyperparameters"]["n_epochs"],
        )
        model = {"name": name, "base_model": job["model"], "examples": [example.as_json() for example in examples]}
        self.store.save_job(job, ("info", f"New fine-tuned model created: {name}"), model=model)
        self.store.save_job(job, ("info", "The job has successfully completed"))
        log.info("fine-tuning job %s produced %s from %d example(s)", job["id"], name, len(examples))
