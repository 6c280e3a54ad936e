"""Routes of the reference gateway: the OpenAI-compatible endpoint users call and the admin API
Stanch's target adapter drives (state, apply, undo, ledger, probe, jobs)."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from stanch.gateway.actions import ActionConflict, ActionRejected
from stanch.gateway.enforcement import (
    Completion,
    EndpointRateLimiter,
    Refusal,
    complete,
    complete_unprotected,
    features_requested,
)
from stanch.gateway.finetune import FinetuneRunner
from stanch.gateway.ledger import UnknownKey, apply_action, undo_action
from stanch.gateway.schemas import (
    ApplyRequest,
    ApplyResponse,
    ChatRequest,
    DeployRequest,
    DeployResponse,
    JobRequest,
    JobStatusResponse,
    LedgerResponse,
    ModelsResponse,
    ProbeRequest,
    ProbeResponse,
    UndoRequest,
)
from stanch.gateway.store import DEMO_MODEL, GatewayStore, job_entry


@contextmanager
def _as_http_errors() -> Iterator[None]:
    """Turn the gateway's domain errors into HTTP answers a caller can act on."""
    try:
        yield
    except ActionRejected as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    except ActionConflict as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    except UnknownKey as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc


def _chat_completion_body(model: str, completion: Completion, prompt_text: str) -> dict[str, Any]:
    # Deterministic id and rough whitespace token counts: enough for OpenAI clients to parse.
    digest = hashlib.sha256(f"{model}|{completion.version}|{prompt_text}".encode()).hexdigest()[:24]
    prompt_tokens, completion_tokens = len(prompt_text.split()), len(completion.output.split())
    return {
        "id": f"chatcmpl-{digest}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": f"{model}@{completion.version}",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.output}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


ADMIN_TOKEN_VARIABLE = "STANCH_GATEWAY_ADMIN_TOKEN"


def create_app(db_path: Path, *, action_delay_s: float = 0.0, finetune_seconds: float = 3.0, admin_token: str | None = None) -> FastAPI:
    """The gateway app over the SQLite file at `db_path` (created and seeded if new).

    `action_delay_s` makes apply/undo wait after committing and before answering, so a crash
    test can kill a caller mid-action; `finetune_seconds` is how long a fine-tune job takes.
    With `admin_token`, every `/admin/*` call needs `Authorization: Bearer <admin_token>`:
    whoever reaches the admin API can lift a block or pin a model. None is the local demo's
    dev mode (`stanch gateway --dev`, as `stanch up` runs it).
    """
    store = GatewayStore(db_path)
    limiter = EndpointRateLimiter()
    runner = FinetuneRunner(store, duration_s=finetune_seconds)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runner.resume_unfinished()
        yield
        await runner.shutdown()
        store.close()

    app = FastAPI(title="Stanch reference gateway", version="0.1.0", lifespan=lifespan)
    app.state.store = store

    @app.middleware("http")
    async def admin_needs_the_token(request: Request, call_next: Any) -> Response:
        if admin_token is not None and request.url.path.startswith("/admin/"):
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {admin_token}".encode()):
                detail = f"the gateway's admin API needs `Authorization: Bearer <token>`, the token in {ADMIN_TOKEN_VARIABLE}"
                return JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        response: Response = await call_next(request)
        return response

    def require_model(model: str) -> None:
        if store.model_row(model) is None:
            raise HTTPException(422, f"unknown model {model!r}; known models: {', '.join(store.model_names())}")

    def pause_after_commit() -> None:
        if action_delay_s > 0:
            time.sleep(action_delay_s)  # sync route: runs in the threadpool, not the event loop

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    def chat_completions(
        request: ChatRequest,
        x_client_id: str | None = Header(default=None),
        x_feature: str | None = Header(default=None),
    ) -> JSONResponse:
        messages = [m.model_dump() for m in request.messages]
        outcome = complete(
            store,
            limiter,
            request.model,
            messages,
            client_id=x_client_id,
            features=features_requested(request.tools, x_feature),
        )
        if isinstance(outcome, Refusal):
            return JSONResponse(outcome.body(), status_code=outcome.status_code)
        prompt_text = " ".join(str(m.get("content") or "") for m in messages)
        return JSONResponse(
            _chat_completion_body(request.model, outcome, prompt_text),
            headers={"x-model-version": outcome.version},
        )

    @app.get("/admin/models", response_model=ModelsResponse)
    def list_models() -> ModelsResponse:
        return ModelsResponse(models=store.model_names())

    @app.get("/admin/state")
    def model_state(model: str = Query(default="support-bot")) -> dict[str, Any]:
        state = store.state(model)
        if state is None:
            raise HTTPException(404, f"unknown model {model!r}; known models: {', '.join(store.model_names())}")
        return state

    @app.post("/admin/apply", response_model=ApplyResponse)
    def apply(request: ApplyRequest) -> ApplyResponse:
        with _as_http_errors():
            outcome = apply_action(
                store,
                idempotency_key=request.idempotency_key,
                incident_id=request.incident_id,
                model=request.model,
                kind=request.action.kind,
                params=request.action.params,
                holder=request.holder,
            )
        pause_after_commit()
        return ApplyResponse(result=outcome.result, inverse=outcome.inverse, replayed=outcome.replayed)

    @app.post("/admin/undo", response_model=ApplyResponse)
    def undo(request: UndoRequest) -> ApplyResponse:
        with _as_http_errors():
            outcome = undo_action(store, idempotency_key=request.idempotency_key, undo_key=request.undo_key, holder=request.holder)
        pause_after_commit()
        return ApplyResponse(result=outcome.result, inverse=None, replayed=outcome.replayed)

    @app.get("/admin/ledger", response_model=LedgerResponse)
    def ledger() -> LedgerResponse:
        return LedgerResponse(entries=store.ledger_entries())

    @app.post("/admin/probe", response_model=ProbeResponse)
    def probe(request: ProbeRequest) -> ProbeResponse:
        require_model(request.model)
        messages = [{"role": "user", "content": request.prompt}]
        if request.version is None:
            # A probe sees what users see but must not eat into their rate-limit budget.
            outcome = complete(
                store,
                limiter,
                request.model,
                messages,
                client_id=request.client_id,
                features=features_requested(None, ",".join(request.features)),
                count_towards_rate_limit=False,
            )
        else:
            outcome = complete_unprotected(store, request.model, request.version, messages)
            if isinstance(outcome, Refusal):  # unknown version: a caller mistake, not a user-visible answer
                raise HTTPException(422, outcome.message)
        if isinstance(outcome, Refusal):
            return ProbeResponse(
                status_code=outcome.status_code,
                refusal_code=outcome.code,
                refusal_incident=outcome.incident_id,
                refusal_message=outcome.message,
            )
        return ProbeResponse(status_code=200, output=outcome.output, model_version=outcome.version)

    @app.post("/admin/jobs", response_model=JobStatusResponse)
    async def start_job(request: JobRequest) -> JobStatusResponse:
        # async: the job runs as a task on this event loop.
        with _as_http_errors():
            job = runner.start(request.model, request.kind, request.params, request.idempotency_key)
        return JobStatusResponse.model_validate(job)

    @app.get("/admin/jobs/{job_id}", response_model=JobStatusResponse)
    def job_status(job_id: str) -> JobStatusResponse:
        row = store.job_row(job_id)
        if row is None:
            raise HTTPException(404, f"no job with id {job_id!r}; start one with POST /admin/jobs")
        return JobStatusResponse.model_validate(job_entry(row))

    @app.post("/admin/deploy", response_model=DeployResponse)
    def deploy(request: DeployRequest) -> DeployResponse:
        """A plain platform-team deploy: moves the release, touches nothing else, no ledger row."""
        require_model(request.model)
        with store.transaction() as db:
            if db.execute("SELECT 1 FROM versions WHERE model = ? AND version = ?", (request.model, request.version)).fetchone() is None:
                known = ", ".join(v["version"] for v in store.versions(request.model))
                raise HTTPException(422, f"model {request.model!r} has no version {request.version!r}; known versions: {known}")
            previous = db.execute("SELECT release_version FROM models WHERE name = ?", (request.model,)).fetchone()[0]
            db.execute("UPDATE models SET release_version = ? WHERE name = ?", (request.version, request.model))
        return DeployResponse(
            model=request.model,
            release_version=request.version,
            previous_release=previous,
            served_version=store.served_version(request.model),
        )

    @app.post("/admin/demo/reset")
    def reset_demo() -> dict[str, Any]:
        """For `stanch demo` and drills: the demo model as first deployed (v2 leaking, no protections)."""
        store.reset_demo_model()
        return store.state(DEMO_MODEL) or {}

    return app


def serve(
    host: str, port: int, db_path: Path, action_delay_s: float = 0.0, finetune_seconds: float = 3.0, admin_token: str | None = None
) -> None:
    """Run the gateway with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(
        create_app(db_path, action_delay_s=action_delay_s, finetune_seconds=finetune_seconds, admin_token=admin_token),
        host=host,
        port=port,
        log_level="info",
    )
