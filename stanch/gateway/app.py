"""Routes of the gateway: the OpenAI-compatible endpoints users call, which it forwards to the
upstreams in its upstreams file through every protection in place, and the admin API Stanch's
target adapter drives (state, apply, undo, ledger)."""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import Headers

from stanch.gateway import deployments
from stanch.gateway.actions import ActionConflict, ActionRejected, PatternParams
from stanch.gateway.deploys import reset_to_file, take_over
from stanch.gateway.drills import drill_router, is_drill_route, production_models
from stanch.gateway.enforcement import (
    EndpointRateLimiter,
    OutputGuard,
    Refusal,
    candidate_guardrails,
    check_endpoint,
    check_features,
    check_prompt,
    features_requested,
    prompt_text,
    untokenised_prompt,
    user_text,
    with_system_prompt,
)
from stanch.gateway.exposure_routes import exposure_routes
from stanch.gateway.ledger import UnknownKey, apply_action, undo_action
from stanch.gateway.metrics import GatewayMetrics
from stanch.gateway.proxy import Outcome, Report, forward, forward_stream, ignore, refusal_response
from stanch.gateway.routing import ADMIN_TOKEN_HEADER, BARE_HEADER, PROBE_HEADER, VERSION_HEADER, Client, client_of, route
from stanch.gateway.samples import SampleStore
from stanch.gateway.schemas import (
    ApplyRequest,
    ApplyResponse,
    DeployRequest,
    DeployResponse,
    LedgerResponse,
    ModelsResponse,
    UndoRequest,
)
from stanch.gateway.shadows import Shadows, shadow_router
from stanch.gateway.store import GatewayStore
from stanch.gateway.upstreams import UpstreamsFile
from stanch.telemetry.logs import configure_logging, log_format_from_env, uvicorn_log_config
from stanch.telemetry.tracing import start_tracing, stop_tracing
from stanch.telemetry.web import FASTAPI_OWN_TELEMETRY_OFF, TracingMiddleware, adopt_caller_incident


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


ADMIN_TOKEN_VARIABLE = "STANCH_GATEWAY_ADMIN_TOKEN"
MAX_BODY_BYTES = 4 * 1024 * 1024


def _bad_request(message: str, status_code: int = 400, code: str = "invalid_request") -> JSONResponse:
    return JSONResponse(Refusal(status_code, code, message).body(), status_code=status_code)


def create_app(
    db_path: Path,
    upstreams: UpstreamsFile,
    *,
    action_delay_s: float = 0.0,
    admin_token: str | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The gateway over the SQLite file at `db_path`, forwarding to `upstreams`.

    `action_delay_s` makes apply/undo wait after committing and before answering, so a crash
    test can kill a caller mid-action. With `admin_token`, every `/admin/*` call needs
    `Authorization: Bearer <admin_token>`, and so does asking for a version directly
    (`x-stanch-version`, with `x-stanch-admin-token`; `x-stanch-bare` besides: without the
    model's hotfixes either): whoever reaches those can lift a block or bypass one. None is the
    local demo's dev mode (`stanch gateway --dev`, as `stanch up` runs it).
    `upstream_transport` lets tests answer for the upstreams in process.
    """
    store = GatewayStore(db_path)
    take_over(store, upstreams)
    samples = SampleStore.from_env(store)  # content sampling on without a key: refuses to start, naming the variable
    limiter = EndpointRateLimiter()
    metrics = GatewayMetrics()
    http: dict[str, httpx.AsyncClient] = {}
    shadows = Shadows(store, http)  # live traffic mirrored to a fix before restore

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        http["client"] = httpx.AsyncClient(transport=upstream_transport)
        yield
        await http["client"].aclose()
        store.close()

    app = FastAPI(title="Stanch gateway", version="0.2.0", lifespan=lifespan, telemetry=FASTAPI_OWN_TELEMETRY_OFF)
    app.state.store = store
    app.include_router(exposure_routes(samples))

    def is_admin(given: str) -> bool:
        return admin_token is None or hmac.compare_digest(given.encode(), admin_token.encode())

    @app.middleware("http")
    async def admin_needs_the_token(request: Request, call_next: Any) -> Response:
        if request.url.path.startswith("/admin/"):
            given = request.headers.get("authorization", "").removeprefix("Bearer ")
            if not is_admin(given):
                detail = f"the gateway's admin API needs `Authorization: Bearer <token>`, the token in {ADMIN_TOKEN_VARIABLE}"
                return JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            # Stanch's worker, its token checked: the incident its call names goes on span and log lines.
            adopt_caller_incident(request.scope.get("headers"))
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

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "stanch-gateway"} for name in production_models(store)],
        }

    def record(model: str, version: str, route_name: str, direction: str) -> Report:
        """What a user's request came to, counted for `GET /metrics`."""

        def count(outcome: Outcome) -> None:
            metrics.requests.labels(model, version, route_name, outcome.outcome).inc()
            if outcome.refusal is not None and outcome.outcome == "refused":
                metrics.refusals.labels(model, outcome.refusal.code).inc()
                if outcome.refusal.detector:
                    metrics.detector_hits.labels(model, version, outcome.refusal.detector, direction).inc()
            if outcome.outcome == "upstream_error":
                metrics.upstream_errors.labels(model, version).inc()
            if outcome.outcome == "answered" and outcome.served_text:
                metrics.watch_answer(model, version, outcome.served_text, outcome.prompt)
            if outcome.upstream_seconds is not None:
                metrics.upstream_seconds.labels(model, version).observe(outcome.upstream_seconds)

        return count

    @app.get("/metrics")
    def prometheus_metrics(request: Request) -> Response:
        return metrics.exposition(request.headers.get("accept"))

    async def protections_before(
        model: str, route_name: str, body: dict[str, Any], headers: Headers, client: Client, probe: bool
    ) -> Refusal | None:
        """What refuses a request before any model is asked: a shut endpoint, a killed feature, a
        blocked prompt (or one given as token ids, which no block can read)."""
        refusal = check_endpoint(store, limiter, model, route_name, client, record=not probe) or check_features(
            store, model, features_requested(route_name, body, headers.get("x-feature"))
        )
        if refusal is None and untokenised_prompt(body) and (blocks := store.blocks(model, "prompt")):
            message = f"A prompt given as token ids cannot be checked while model {model!r} has blocked prompts; send it as text."
            refusal = Refusal(403, "content_blocked", message, blocks[0]["incident_id"])
        return refusal or await check_prompt(store, model, prompt_text(body))

    async def answer(request: Request, route_name: str) -> Response:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return _bad_request(
                f"the request body is {len(raw)} bytes; the gateway takes at most {MAX_BODY_BYTES}", 413, "request_too_large"
            )
        try:
            body = await request.json()
        except ValueError:
            return _bad_request("the request body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _bad_request("the request body needs a `model` (a string): the model to answer")
        if route_name == "chat" and not (isinstance(body.get("messages"), list) and body["messages"]):
            return _bad_request("`messages` must be a non-empty list of chat messages")
        model = body["model"]
        if store.model_row(model) is None:
            known = ", ".join(production_models(store))  # a drill route is nobody's to discover
            return refusal_response(Refusal(404, "model_not_found", f"The model {model!r} does not exist; known models: {known}."))
        headers = request.headers
        if is_drill_route(model) and not is_admin(headers.get(ADMIN_TOKEN_HEADER, "")):
            # A drill route serves the harmful version on purpose: only the drill (its harm and its
            # tenant) and Stanch's probes ask it, with the admin token. Nobody's live traffic either.
            request.state.not_live_traffic = True
            message = f"Model {model!r} is a drill route: asking it needs the gateway's admin token in {ADMIN_TOKEN_HEADER}."
            return refusal_response(Refusal(401, "admin_token_required", message, None, "authentication_error"))
        client = client_of(headers, body.get("user") if isinstance(body.get("user"), str) else None)
        incident = headers.get("x-stanch-incident")
        version = headers.get(VERSION_HEADER)
        # A past change replayed (bisection): its version, system prompt and guardrails, nothing since.
        replayed: deployments.Deployment | None = None
        if (asked := headers.get(deployments.DEPLOYMENT_HEADER)) is not None:
            replayed_or_refusal = replayed_change(model, asked, headers)
            if isinstance(replayed_or_refusal, Refusal):
                return refusal_response(replayed_or_refusal)
            replayed = replayed_or_refusal
            version = asked.partition("@")[2] or replayed.release_version
        if version is not None:
            # A version by name: its hotfixes, none of the incidents' protections. For verification.
            if not is_admin(headers.get(ADMIN_TOKEN_HEADER, "")):
                return refusal_response(
                    Refusal(
                        401,
                        "admin_token_required",
                        f"{VERSION_HEADER} needs the gateway's admin token in {ADMIN_TOKEN_HEADER}.",
                        None,
                        "authentication_error",
                    )
                )
            row = store.model_row(model)
            assert row is not None
            version = row["release_version"] if version == "release" else version
            if store.version_row(model, version) is None:
                known = ", ".join(v["version"] for v in store.versions(model))
                return refusal_response(
                    Refusal(404, "version_not_found", f"Model {model!r} has no version {version!r}; known versions: {known}.")
                )
        # A candidate guardrail config (the regression gate's): admin only, on a version asked for bare.
        bare_version = version is not None and replayed is None and headers.get(BARE_HEADER) is not None
        candidate = candidate_guardrails(headers, admin=is_admin(headers.get(ADMIN_TOKEN_HEADER, "")), bare=bare_version)
        if isinstance(candidate, Refusal):
            request.state.not_live_traffic = True
            return refusal_response(candidate)
        # Only Stanch's own probes (with the admin token) spend no client's budget, and only users'
        # requests are counted.
        probe = headers.get(PROBE_HEADER) is not None and is_admin(headers.get(ADMIN_TOKEN_HEADER, ""))
        users = version is None and not probe
        if version is None and (refusal := await protections_before(model, route_name, body, headers, client, probe)):
            if users:
                record(model, "", route_name, "prompt")(Outcome("refused", refusal))
            return refusal_response(refusal)
        chosen = route(store, model, client.bucket(model), version=version)
        if chosen is None:
            return refusal_response(
                Refusal(503, "model_unavailable", f"Every version of model {model!r} is disabled.", None, "service_unavailable")
            )
        # A fallback model answers under its own protections as well as the ones of the model asked for.
        models = [model] if chosen.model == model else [model, chosen.model]
        if (
            version is None
            and chosen.model != model
            and (refusal := await protections_before(chosen.model, route_name, body, headers, client, probe))
        ):
            if users:
                record(model, chosen.version, route_name, "prompt")(Outcome("refused", refusal))
            return refusal_response(refusal, chosen.version)
        # A version asked for bare (its admin token was checked with the version): no hotfix either.
        bare = version is not None and (headers.get(BARE_HEADER) is not None or replayed is not None)
        upstream_body = with_system_prompt(body, replayed.system_prompt) if replayed else body
        for name in [] if bare else reversed(models):  # the hotfix of the model asked for comes first
            model_row = store.model_row(name)
            deployed = deployments.latest(store, name)  # the platform's own prompt, beneath any hotfix
            upstream_body = with_system_prompt(upstream_body, deployed.system_prompt if deployed else None)
            upstream_body = with_system_prompt(upstream_body, model_row["system_prompt"] if model_row else None)
        report = (
            samples.watching(record(model, chosen.version, route_name, "output"), model, chosen.version, headers, body) if users else ignore
        )
        if route_name == "embeddings":
            return await forward(http["client"], chosen, route_name, upstream_body, model, None, "", incident, report)
        if version is None:
            guard = OutputGuard(store, *models)
        else:
            guard = OutputGuard.unguarded(store, model) if bare else OutputGuard.hotfixes_only(store, model)
        if replayed is not None:
            guard.guardrails = list(replayed.guardrails)
        elif candidate is not None:  # judged as users would get it under this config, and only it
            guard.guardrails = candidate
        elif not bare:  # the guardrails the platform deployed hold beside any hotfix's
            guard.guardrails += [p for name in models if (deployed := deployments.latest(store, name)) for p in deployed.guardrails]
        prompt = user_text(body)  # what the user typed: a model repeating it is no leak
        if body.get("stream"):
            return await forward_stream(http["client"], chosen, route_name, upstream_body, model, guard, prompt, incident, report)
        return await forward(http["client"], chosen, route_name, upstream_body, model, guard, prompt, incident, report)

    def replayed_change(model: str, asked: str, headers: Headers) -> deployments.Deployment | Refusal:
        """Change `asked` of the model's deployment log, if the admin token came with it and its
        version is still there to ask; else the refusal saying why."""
        if not is_admin(headers.get(ADMIN_TOKEN_HEADER, "")):
            message = f"{deployments.DEPLOYMENT_HEADER} needs the gateway's admin token in {ADMIN_TOKEN_HEADER}."
            return Refusal(401, "admin_token_required", message, None, "authentication_error")
        sequence, _, version = asked.partition("@")  # `N`: the change's release; `N@V`: one of its canaries
        change = deployments.deployment(store, model, int(sequence)) if sequence.isdigit() else None
        if change is None:
            message = f"Model {model!r} has no change {sequence!r} in its deployment log (GET /admin/models/{model}/deployments)."
            return Refusal(404, "deployment_not_found", message)
        version = version or change.release_version
        if version != change.release_version and version not in change.canary_weights:
            message = f"Change {change.sequence} of model {model!r} served no version {version!r}."
            return Refusal(404, "version_not_found", message)
        if store.version_row(model, version) is None:
            message = f"Change {change.sequence} of model {model!r} served version {version!r}, which is gone."
            return Refusal(404, "version_not_found", message)
        return change

    async def mirrored(request: Request, route_name: str, response: Response) -> Response:
        """Live traffic goes on to the open shadows; a request refused for want of the admin token is none."""
        if getattr(request.state, "not_live_traffic", False):
            return response
        return await shadows.mirror_later(request, route_name, response)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await mirrored(request, "chat", await answer(request, "chat"))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await mirrored(request, "completions", await answer(request, "completions"))

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await answer(request, "embeddings")

    app.include_router(shadow_router(shadows))

    @app.get("/admin/models", response_model=ModelsResponse)
    def admin_models() -> ModelsResponse:
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

    @app.post("/admin/deploy", response_model=DeployResponse)
    def deploy(request: DeployRequest) -> DeployResponse:
        """A plain platform-team deploy: moves the release (and, if given, the platform's system
        prompt and guardrails), touches nothing else, no ledger row; logged as a change."""
        require_model(request.model)
        if request.guardrails:
            try:
                PatternParams(patterns=request.guardrails)
            except ValidationError as error:
                raise HTTPException(422, f"guardrails: {error.errors()[0]['msg']}") from None
        with store.transaction() as db:
            if db.execute("SELECT 1 FROM versions WHERE model = ? AND version = ?", (request.model, request.version)).fetchone() is None:
                known = ", ".join(v["version"] for v in store.versions(request.model))
                raise HTTPException(422, f"model {request.model!r} has no version {request.version!r}; known versions: {known}")
            canaries = request.canary_weights or {}
            if unknown := [v for v in canaries if store.version_row(request.model, v) is None]:
                raise HTTPException(422, f"canary_weights: model {request.model!r} has no version {', '.join(map(repr, unknown))}")
            if any(not 0 <= weight <= 100 for weight in canaries.values()) or sum(canaries.values()) > 100:
                raise HTTPException(422, "canary_weights: each a percent from 0 to 100, together at most 100")
            previous = db.execute("SELECT release_version FROM models WHERE name = ?", (request.model,)).fetchone()[0]
            db.execute("UPDATE models SET release_version = ? WHERE name = ?", (request.version, request.model))
            if request.canary_weights is not None:  # the canaries this change serves beside the release
                db.execute("UPDATE versions SET weight = 0 WHERE model = ?", (request.model,))
                for canary, weight in request.canary_weights.items():
                    db.execute("UPDATE versions SET weight = ? WHERE model = ? AND version = ?", (weight, request.model, canary))
            change = deployments.append(
                db,
                request.model,
                source="admin deploy",
                system_prompt=request.system_prompt,
                guardrails=request.guardrails,
                change_id=request.change_id,
                description=request.description,
            )
        return DeployResponse(
            model=request.model,
            release_version=request.version,
            previous_release=previous,
            served_version=store.served_version(request.model),
            sequence=change.sequence,
        )

    @app.post("/admin/reset")
    def reset() -> dict[str, Any]:
        """For `stanch demo` and drills: every model as the upstreams file deploys it, no protections, no hotfix."""
        reset_to_file(store, upstreams)
        return {"models": {name: store.state(name) for name in store.model_names()}}

    app.include_router(deployments.router(store))
    app.include_router(drill_router(store))

    # Added last, so outermost: one span per request, the admin token check included (a no-op
    # unless tracing is on). Only /admin/* (Stanch's worker, by token) continues the caller's
    # trace; the incident id its baggage names is taken once the token passed (above).
    app.add_middleware(TracingMiddleware, continue_trace_under=("/admin/",))
    return app


def serve(
    host: str, port: int, db_path: Path, upstreams: UpstreamsFile, action_delay_s: float = 0.0, admin_token: str | None = None
) -> None:
    """Run the gateway with uvicorn until interrupted. STANCH_LOG_FORMAT=json logs JSON lines;
    OTEL_EXPORTER_OTLP_ENDPOINT turns traces on (service stanch-gateway unless OTEL_SERVICE_NAME).
    A bad STANCH_LOG_FORMAT raises LogFormatError, naming it."""
    import uvicorn

    log_format = log_format_from_env()
    if log_format == "json":  # text: uvicorn's lines, as always
        configure_logging("json")
    # Propagating to no host: the models upstream are third parties, and never see Stanch's trace.
    start_tracing("stanch-gateway")
    try:
        uvicorn.run(
            create_app(db_path, upstreams, action_delay_s=action_delay_s, admin_token=admin_token),
            host=host,
            port=port,
            log_level="info",
            log_config=uvicorn_log_config(log_format),
        )
    finally:
        stop_tracing()  # spans still batched, within seconds even with the collector down
