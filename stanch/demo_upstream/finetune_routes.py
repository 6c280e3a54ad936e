"""The OpenAI fine-tuning API of the demo upstream: `/v1/files` and `/v1/fine_tuning/jobs`.

Uploads are validated as chat JSONL at once (a 400 names the bad line), so a job fails only
when its file cannot be read any more."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from stanch.demo_upstream.finetune import FineTuningJobs, JobRejected, TrainingFileError, parse_training_file
from stanch.demo_upstream.multipart import BadForm, parse_form
from stanch.demo_upstream.responses import openai_error
from stanch.demo_upstream.schemas import FineTuningJobRequest
from stanch.demo_upstream.store import DemoStore

MAX_FILE_BYTES = 16 * 1024 * 1024
Recorder = Callable[[Request, "str | None", Any], None]


def _not_found(what: str, ident: str, param: str | None = None) -> JSONResponse:
    return openai_error(404, f"No {what} with id {ident!r}.", code=f"{what.replace(' ', '_')}_not_found", param=param)


def finetune_router(store: DemoStore, jobs: FineTuningJobs, record: Recorder) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post("/files")
    async def upload_file(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_FILE_BYTES:
            return openai_error(400, f"file: larger than the demo's limit of {MAX_FILE_BYTES} bytes", param="file")
        try:
            form = parse_form(request.headers.get("content-type", ""), body)
        except BadForm as exc:
            return openai_error(400, str(exc), param="file")
        upload, purpose = form.get("file"), form.get("purpose")
        record(request, None, {"filename": upload.filename if upload else None, "purpose": purpose.value.decode() if purpose else None})
        if upload is None:
            return openai_error(400, "file: missing; send the training file as the form field `file`", param="file")
        purpose_text = purpose.value.decode("utf-8", "replace") if purpose else ""
        if purpose_text != "fine-tune":
            return openai_error(
                400, f"purpose: {purpose_text or 'missing'!r} is not supported here; the demo takes 'fine-tune' files", param="purpose"
            )
        try:
            parse_training_file(upload.value)
        except TrainingFileError as exc:
            return openai_error(400, f"Invalid training file: {exc}", param="file", code="invalid_training_file")
        return JSONResponse(store.add_file(f"file-{secrets.token_hex(12)}", upload.filename or "upload.jsonl", purpose_text, upload.value))

    @router.get("/files/{file_id}")
    async def get_file(file_id: str) -> Response:
        found = store.file(file_id)
        return JSONResponse(found) if found else _not_found("file", file_id)

    @router.get("/files/{file_id}/content")
    async def get_file_content(file_id: str) -> Response:
        content = store.file_content(file_id)
        return Response(content, media_type="application/jsonl") if content is not None else _not_found("file", file_id)

    @router.post("/fine_tuning/jobs")
    async def create_job(
        body: FineTuningJobRequest, request: Request, idempotency_key: str | None = Header(default=None, alias="Idempotency-Key")
    ) -> Response:
        record(request, body.model, body.model_dump(mode="json", exclude_unset=True))
        try:
            job = jobs.create(body, idempotency_key)
        except JobRejected as exc:
            param = "training_file" if "training_file" in str(exc) else "hyperparameters" if "hyperparameters" in str(exc) else "model"
            code = "model_not_found" if param == "model" else None
            return openai_error(404 if code else 400, str(exc), param=param, code=code)
        return JSONResponse(job)

    @router.get("/fine_tuning/jobs")
    async def list_jobs(limit: int = Query(default=20, ge=1, le=100), after: str | None = None) -> dict[str, Any]:
        page = store.jobs(limit + 1, after)
        return {"object": "list", "data": page[:limit], "has_more": len(page) > limit}

    @router.get("/fine_tuning/jobs/{job_id}")
    async def get_job(job_id: str) -> Response:
        job = store.job(job_id)
        return JSONResponse(job) if job else _not_found("fine-tuning job", job_id)

    @router.post("/fine_tuning/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str) -> Response:
        try:
            job = jobs.cancel(job_id)
        except JobRejected as exc:
            return openai_error(400, str(exc), param="fine_tuning_job_id")
        return JSONResponse(job) if job else _not_found("fine-tuning job", job_id)

    @router.get("/fine_tuning/jobs/{job_id}/events")
    async def job_events(job_id: str, limit: int = Query(default=20, ge=1, le=100)) -> Response:
        if store.job(job_id) is None:
            return _not_found("fine-tuning job", job_id)
        events = store.job_events(job_id, limit + 1)
        return JSONResponse({"object": "list", "data": events[:limit], "has_more": len(events) > limit})

    return router
