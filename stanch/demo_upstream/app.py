"""Routes of the DEMO upstream: the OpenAI API a model server offers, answered by the demo
models (no real model is involved), plus `/demo/*` for tests to see what the server received.

The gateway forwards here like to any OpenAI-compatible upstream; confirm and verify probe
it; the fine-tune step trains on it (routes in `finetune_routes.py`).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from stanch.demo_upstream.conversation import Conversation, Reply
from stanch.demo_upstream.finetune import FineTuningJobs
from stanch.demo_upstream.finetune_routes import finetune_router
from stanch.demo_upstream.responses import (
    chat_completion_body,
    chat_completion_stream,
    completion_body,
    completion_stream,
    count_tokens,
    openai_error,
)
from stanch.demo_upstream.safety import moderation_result
from stanch.demo_upstream.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ModerationRequest
from stanch.demo_upstream.serving import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    MODERATION_MODELS,
    ModelCatalogue,
    RequestLog,
    ServedModel,
    UpstreamFailure,
    embedding,
    encode_base64,
)
from stanch.demo_upstream.store import DemoStore

log = logging.getLogger(__name__)

MODEL_HEADER = "x-demo-model"
DB_FILE = "demo-upstream.db"


def _tagged(response: Response, model: str) -> Response:
    response.headers[MODEL_HEADER] = model
    return response


def _unknown_model(model: str) -> Response:
    message = f"The model `{model}` does not exist on this demo server; GET /v1/models lists the ones it serves."
    return _tagged(openai_error(404, message, code="model_not_found", param="model"), model)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    problems, first_field = [], None
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            return openai_error(400, f"Invalid request: the body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})")
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        field = ".".join(location) or "body"
        first_field = first_field or field
        problems.append(f"{field}: {error.get('msg', 'invalid')}")
    return openai_error(400, "Invalid request: " + "; ".join(problems), param=first_field)


def create_app(state_dir: Path, *, finetune_seconds: float = 3.0, api_key: str | None = None) -> FastAPI:
    """The demo upstream's ASGI app. Files, jobs and fine-tuned models live under `state_dir`;
    with `api_key`, every /v1 route wants `Authorization: Bearer <api_key>`."""
    store = DemoStore(state_dir / DB_FILE)
    catalogue = ModelCatalogue(store)
    jobs = FineTuningJobs(store, duration_s=finetune_seconds, is_base_model=catalogue.can_fine_tune)
    requests_log = RequestLog()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        resumed = jobs.resume_unfinished()
        if resumed:
            log.info("resumed fine-tuning jobs %s", ", ".join(resumed))
        yield
        await jobs.shutdown()
        store.close()

    app = FastAPI(
        title="Stanch demo upstream",
        description="A DEMO OpenAI-compatible model server: deterministic templates, not a real model.",
        lifespan=lifespan,
    )
    app.state.store, app.state.jobs, app.state.catalogue, app.state.requests_log = store, jobs, catalogue, requests_log

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return openai_error(exc.status_code, message, code="not_found" if exc.status_code == 404 else None)

    @app.middleware("http")
    async def require_api_key(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if api_key is not None and request.url.path.startswith("/v1"):
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
                return openai_error(401, "Incorrect or missing API key: send `Authorization: Bearer <key>`.", code="invalid_api_key")
        return await call_next(request)

    def record(request: Request, model: str | None, body: Any) -> None:
        requests_log.record(request.method, request.url.path, model, body)

    def sample(model: ServedModel, conversation: Conversation, body: ChatCompletionRequest | CompletionRequest) -> list[Reply]:
        sampling = catalogue.sampling(body.temperature, body.seed)
        return [model.answer(conversation, sampling) for _ in range(body.n)]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": "stanch demo upstream (not a real model)"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        record(request, None, None)
        return {"object": "list", "data": catalogue.listing()}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        found = [entry for entry in catalogue.listing() if entry["id"] == model_id]
        return _tagged(JSONResponse(found[0]), model_id) if found else _unknown_model(model_id)

    def admit(request: Request, body: ChatCompletionRequest | CompletionRequest) -> tuple[Any, Response | None]:
        """Log the request, find its model and count it (every third request of the bad update fails):
        the model, or the error answer to give instead."""
        record(request, body.model, body.model_dump(mode="json", exclude_unset=True))
        model = catalogue.resolve(body.model)
        if model is None:
            return None, _unknown_model(body.model)
        try:
            catalogue.count_request(model)
        except UpstreamFailure as exc:
            return None, _tagged(openai_error(500, str(exc), code="upstream_failure", kind="server_error"), body.model)
        return model, None

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        model, refused = admit(request, body)
        if refused is not None:
            return refused
        messages = [message.model_dump(mode="json") for message in body.messages]
        conversation = Conversation(messages, body.tools or [])
        replies = sample(model, conversation, body)
        prompt_tokens = sum(count_tokens(str(message.get("content") or "")) for message in messages)
        if body.stream:
            stream = chat_completion_stream(body.model, replies, prompt_tokens, body.include_usage)
            return _tagged(StreamingResponse(stream, media_type="text/event-stream"), body.model)
        return _tagged(JSONResponse(chat_completion_body(body.model, replies, prompt_tokens)), body.model)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        model, refused = admit(request, body)
        if refused is not None:
            return refused
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        texts = []
        for prompt in prompts:  # OpenAI's order: all choices of the first prompt, then the next
            replies = sample(model, Conversation([{"role": "user", "content": prompt}]), body)
            texts += [reply.content or "" for reply in replies]
        prompt_tokens = sum(count_tokens(prompt) for prompt in prompts)
        if body.stream:
            return _tagged(
                StreamingResponse(completion_stream(body.model, texts, prompt_tokens, body.include_usage), media_type="text/event-stream"),
                body.model,
            )
        return _tagged(JSONResponse(completion_body(body.model, texts, prompt_tokens)), body.model)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        record(request, body.model, body.model_dump(mode="json", exclude_unset=True))
        if not catalogue.embeds(body.model):
            return _unknown_model(body.model)
        raw = body.input
        inputs: list[Any] = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else list(raw)
        texts = [text if isinstance(text, str) else " ".join(map(str, text)) for text in inputs]
        if not texts:
            return _tagged(openai_error(400, "Invalid request: input: must hold at least one text", param="input"), body.model)
        dimensions = body.dimensions or DEFAULT_EMBEDDING_DIMENSIONS
        data = []
        for index, text in enumerate(texts):
            vector = embedding(text, body.model, dimensions)
            data.append(
                {"object": "embedding", "index": index, "embedding": encode_base64(vector) if body.encoding_format == "base64" else vector}
            )
        tokens = sum(count_tokens(text) for text in texts)
        payload = {"object": "list", "data": data, "model": body.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return _tagged(JSONResponse(payload), body.model)

    @app.post("/v1/moderations")
    async def moderations(body: ModerationRequest, request: Request) -> Response:
        model = body.model or MODERATION_MODELS[0]
        record(request, model, body.model_dump(mode="json", exclude_unset=True))
        if model not in MODERATION_MODELS:
            return _unknown_model(model)
        raw = body.input
        if isinstance(raw, str):
            texts = [raw]
        elif all(isinstance(item, str) for item in raw):
            texts = [str(item) for item in raw]
        else:
            # One multi-modal input (typed parts) gets one result; its images are not looked at.
            texts = [" ".join(str(part.get("text", "")) for part in raw if isinstance(part, dict) and part.get("type") == "text")]
        if not texts:
            return _tagged(openai_error(400, "Invalid request: input: must hold at least one text", param="input"), model)
        results = [moderation_result(text) for text in texts]
        return _tagged(JSONResponse({"id": f"modr-{secrets.token_hex(12)}", "model": model, "results": results}), model)

    @app.get("/demo/requests")
    async def demo_requests(model: str | None = None, limit: int = Query(default=50, ge=0, le=200)) -> dict[str, Any]:
        """The last requests received (newest last): what an upstream really saw."""
        return {"object": "list", "data": requests_log.recent(model, limit)}

    @app.post("/demo/reset")
    async def demo_reset() -> dict[str, bool]:
        """Forget the request log and restart the bad update's failure counter."""
        requests_log.clear()
        catalogue.reset_counters()
        return {"reset": True}

    app.include_router(finetune_router(store, jobs, record))
    return app


def serve(host: str, port: int, state_dir: Path, *, finetune_seconds: float = 3.0, api_key: str | None = None) -> None:
    """Run the demo upstream until interrupted."""
    import uvicorn

    state_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(state_dir, finetune_seconds=finetune_seconds, api_key=api_key)
    uvicorn.run(app, host=host, port=port, log_level="warning")
