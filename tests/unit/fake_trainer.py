"""A small OpenAI fine-tuning API, served for real on a loopback port: the trainer tests talk to it
over HTTP as they would to OpenAI. It keeps what it was sent (files, jobs, headers) for the tests
to look at, and can behave like trainers that keep no metadata or ignore the list filter.
`demo_upstream` serves the real `stanch demo-upstream` the same way."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class FakeTrainer:
    api_key: str | None = None
    keeps_metadata: bool = True  # False: like a trainer that drops job metadata
    filters_by_metadata: bool = True  # False: lists every job whatever the filter
    honours_idempotency_key: bool = True
    polls_to_finish: int = 2  # status reads before a running job succeeds; 0: never finishes
    fails_with: str | None = None  # a job fails with this message instead of succeeding
    answers_after: float = 0.0  # seconds a job's status takes to answer: a slow trainer
    files: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    job_requests: list[dict[str, Any]] = field(default_factory=list)  # (body, Idempotency-Key) of every create
    cancelled: list[str] = field(default_factory=list)
    url: str = ""

    def trained_files(self) -> list[str]:
        """The training files of every job created, in order."""
        return [self.files[job["training_file"]] for job in self.jobs.values()]

    def app(self) -> FastAPI:
        app = FastAPI()
        polls: dict[str, int] = {}

        def refused(status: int, message: str) -> JSONResponse:
            return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)

        @app.middleware("http")
        async def authorise(request: Request, call_next: Any) -> Any:
            if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return refused(401, "Incorrect API key provided")
            return await call_next(request)

        @app.post("/v1/files")
        async def upload(request: Request) -> Any:
            head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
            message = BytesParser(policy=default_policy).parsebytes(head + await request.body())
            parts = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}  # type: ignore[attr-defined]
            if parts["purpose"].get_content().strip() != "fine-tune":
                return refused(400, "purpose must be fine-tune")
            file_id = f"file-{len(self.files) + 1}"
            content = parts["file"].get_content()
            self.files[file_id] = content.decode() if isinstance(content, bytes) else str(content)
            return {"id": file_id, "object": "file", "bytes": len(self.files[file_id]), "purpose": "fine-tune"}

        @app.post("/v1/fine_tuning/jobs")
        async def create(request: Request) -> Any:
            body = await request.json()
            key = request.headers.get("idempotency-key")
            self.job_requests.append({"body": body, "idempotency_key": key})
            if self.honours_idempotency_key and key:
                for job in self.jobs.values():
                    if job["_key"] == key:
                        return public(job)
            if body["training_file"] not in self.files:
                return refused(400, f"invalid training_file: {body['training_file']}")
            job_id = f"ftjob-{len(self.jobs) + 1}"
            self.jobs[job_id] = {
                "id": job_id,
                "object": "fine_tuning.job",
                "model": body["model"],
                "training_file": body["training_file"],
                "status": "validating_files",
                "fine_tuned_model": None,
                "error": None,
                "metadata": body.get("metadata") if self.keeps_metadata else None,
                "_suffix": body.get("suffix"),
                "_key": key,
            }
            return public(self.jobs[job_id])

        @app.get("/v1/fine_tuning/jobs")
        async def listed(request: Request) -> Any:
            wanted = request.query_params.get("metadata[stanch_key]")
            jobs = list(reversed(self.jobs.values()))  # newest first, as OpenAI lists them
            if self.filters_by_metadata and wanted is not None:
                jobs = [job for job in jobs if (job["metadata"] or {}).get("stanch_key") == wanted]
            return {"object": "list", "data": [public(job) for job in jobs], "has_more": False}

        @app.get("/v1/fine_tuning/jobs/{job_id}")
        async def status(job_id: str) -> Any:
            job = self.jobs.get(job_id)
            if job is None:
                return refused(404, f"no job {job_id}")
            await asyncio.sleep(self.answers_after)
            if job["status"] in ("validating_files", "queued", "running"):
                polls[job_id] = polls.get(job_id, 0) + 1
                job["status"] = "running"
                if self.polls_to_finish and polls[job_id] >= self.polls_to_finish:
                    if self.fails_with:
                        job.update(status="failed", error={"code": "invalid_training_file", "message": self.fails_with})
                    else:
                        job.update(status="succeeded", fine_tuned_model=f"ft:{job['model']}:fake:{job['_suffix']}:{job_id}")
            return public(job)

        @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
        async def cancel(job_id: str) -> Any:
            job = self.jobs[job_id]
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return refused(400, f"job {job_id} has already completed")
            job["status"] = "cancelled"
            self.cancelled.append(job_id)
            return public(job)

        return app


def public(job: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in job.items() if not key.startswith("_")}


@asynccontextmanager
async def served(app: Any, *, lifespan: Literal["auto", "on", "off"] = "auto") -> AsyncIterator[str]:
    """An ASGI app listening on a free loopback port, in this event loop; its root URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@asynccontextmanager
async def serving(trainer: FakeTrainer) -> AsyncIterator[FakeTrainer]:
    """The fake, listening on a free loopback port, its API root in `trainer.url`."""
    async with served(trainer.app(), lifespan="off") as root:
        trainer.url = f"{root}/v1"
        yield trainer


@asynccontextmanager
async def demo_upstream(state_dir: Path, *, finetune_seconds: float = 0.2) -> AsyncIterator[str]:
    """`stanch demo-upstream`'s app (its models and its fine-tuning API) on a free loopback port; its API root."""
    from stanch.demo_upstream.app import create_app

    async with served(create_app(state_dir, finetune_seconds=finetune_seconds)) as root:
        yield f"{root}/v1"
