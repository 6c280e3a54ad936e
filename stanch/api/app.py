"""The intake and responder HTTP API: the FastAPI app factory, its lifespan, /healthz and /readyz.

Stateless by design: everything it knows lives in Temporal, so any number of replicas can
run behind a load balancer. Temporal being away is a 503 with `Retry-After`, never a 500:
monitoring senders retry, and signals are deduplicated by id when they do. What Temporal
refuses for good is not a 503 (see `answers.temporal_error`), and a field too large for
Temporal never gets that far: it is a 413 at intake (`stanch.intake.sources.limits`).

/healthz is liveness (the process serves; it never waits on Temporal); /readyz is readiness
(Temporal answers now).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from temporalio.service import RPCError

from stanch.api import alerts, gate, incidents, metrics, reports
from stanch.api.answers import (
    BodySizeLimit,
    RequestId,
    add_unknown_source_route,
    internal_error,
    served_alert_sources,
    temporal_error,
)
from stanch.api.auth import INTAKE_AUTH_RESPONSES, authenticate_sender, intake_source
from stanch.api.deps import (
    RETRY_AFTER_S,
    ResponderDep,
    SettingsDep,
    TemporalConnection,
    TemporalUnavailable,
)
from stanch.api.events import events_router
from stanch.board import board_router
from stanch.config.settings import Settings
from stanch.intake.auth import (
    INTAKE_SOURCES,
    IntakeAuthError,
    IntakeAuthPolicy,
    load_intake_auth,
)
from stanch.intake.routing import UnsafeSignal
from stanch.intake.sources.limits import TooLarge
from stanch.runbooks.loader import RunbookCatalog, RunbookError, load_catalog
from stanch.telemetry.logs import configure_logging, uvicorn_log_config
from stanch.telemetry.tracing import start_tracing, stop_tracing
from stanch.telemetry.web import FASTAPI_OWN_TELEMETRY_OFF, TracingMiddleware
from stanch.temporal.client import configured_namespace
from stanch.temporal.setup import AttributesNotListed, SearchAttributesMissing, require_attributes
from stanch.trust import assertions, decision_keys
from stanch.trust.responders import Principal, ResponderAuth, load_responder_auth

log = logging.getLogger(__name__)

# On SIGTERM requests in flight get this long to finish (Kubernetes' default grace period is 30 s).
API_SHUTDOWN_SECONDS = 25

DESCRIPTION = """\
Incident response and rollback for AI systems in production.

Monitoring posts alerts to `/v1/alerts/...`; each opens or joins a durable incident workflow.
Each intake source accepts only the credentials configured for it (signatures, bearer token
or basic auth); a missing, forged or stale one is a 401 saying which.
Responders read incidents and acknowledge, approve, reject, re-grade and resolve them under
`/v1/incidents/...`. Every decision is a Temporal update: a refused one answers 409 with the
reason, and nothing about it reaches the incident's history.
"""


class AuthMode(BaseModel):
    mode: Literal["token", "insecure-dev"]


class Health(BaseModel):
    """Liveness, and where the other parts of Stanch live."""

    status: Literal["ok"] = "ok"
    temporal: str = Field(description="Temporal's address")
    temporal_connected: bool = Field(
        description="whether the API holds a Temporal client yet: it connects on first use (GET /readyz asks Temporal now)"
    )
    namespace: str
    task_queue: str
    gateway_url: str
    api_url: str
    ui_url: str
    runbooks: int
    intake_auth: Literal["enforced", "insecure-dev"]
    intake_open_sources: list[str]


class Readiness(BaseModel):
    """Whether the API can serve now: Temporal answers."""

    status: Literal["ready", "not ready"]
    temporal: str = Field(description="Temporal's address")
    namespace: str
    detail: str | None = Field(None, description="what is wrong, when not ready")


def _retry_later(message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def create_app(
    settings: Settings | None = None,
    *,
    catalog: RunbookCatalog | None = None,
    intake_auth: IntakeAuthPolicy | None = None,
    responders: ResponderAuth | None = None,
    insecure_dev: bool = False,
) -> FastAPI:
    """The API for one installation. `catalog` is loaded from `settings.runbooks_dir` at
    start-up unless given (a broken runbook stops start-up, naming file and field).

    `intake_auth` is who may send signals, `responders` who may respond. Authentication is
    enforced by default: what is not given is loaded from the settings' intake auth and
    responders files, and a missing file stops the app (IntakeAuthError, ValueError) naming
    it. Only `insecure_dev=True` (the local demo, tests) leaves what is not given open, as
    /healthz then says. Raises IntakeAuthError if an enabled source has no credential and
    the policy is not --insecure-dev.
    """
    settings = settings or Settings.from_env()
    if intake_auth is None:
        intake_auth = (
            IntakeAuthPolicy.insecure_open()
            if insecure_dev
            else load_intake_auth(settings.intake_auth_path, explicit=settings.intake_auth is not None, insecure_dev=False)
        )
    if responders is None:
        responders = ResponderAuth.insecure() if insecure_dev else load_responder_auth(settings.responders_path, insecure_dev=False)
    # The key the API signs decisions with (workers verify with its public half); keys that do
    # not fit together stop start-up naming the variable to set (DecisionKeyError, a ValueError).
    assertions.trust_keys(decision_keys.for_api(settings.home, insecure_dev=insecure_dev))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if getattr(app.state, "catalog", None) is None:
            app.state.catalog = load_catalog(settings.runbooks_dir)
        log.info(
            "stanch api: %d runbooks from %s, Temporal at %s", len(app.state.catalog), settings.runbooks_dir, app.state.temporal.address
        )
        open_sources = intake_auth.open_sources(intake_sources(app))
        if open_sources:
            log.warning("INSECURE: intake sources %s accept requests without credentials (--insecure-dev)", ", ".join(open_sources))
        # Said at start, in the background: the API serves /healthz whatever Temporal does.
        checking = asyncio.create_task(_say_if_unprepared(app.state.temporal, settings))
        yield
        checking.cancel()

    app = FastAPI(title="Stanch", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, telemetry=FASTAPI_OWN_TELEMETRY_OFF)
    app.state.settings = settings
    app.state.catalog = catalog
    app.state.temporal = TemporalConnection(settings)
    app.state.intake_auth = intake_auth
    app.state.responders = responders
    app.state.metrics = metrics.IntakeMetrics()

    # Intake routers get the sender's credential checked before the route runs.
    app.include_router(alerts.router, dependencies=[Depends(authenticate_sender)], responses=INTAKE_AUTH_RESPONSES)
    app.include_router(reports.router, dependencies=[Depends(authenticate_sender)], responses=INTAKE_AUTH_RESPONSES)
    app.include_router(incidents.router)
    app.include_router(gate.router)  # the regression gate, for CI and Argo Rollouts' web metric
    app.include_router(events_router)  # live updates for the board (server-sent events)
    app.include_router(board_router)  # the incident board, served at /board
    app.include_router(metrics.router)
    add_unknown_source_route(app)  # after every /v1/alerts route: it matches whatever is left
    intake_auth.require_credentials(intake_sources(app))

    # Added last runs first: request ids wrap everything, metrics see every answer,
    # including the 413s the body limit gives.
    app.add_middleware(BodySizeLimit)
    app.add_middleware(metrics.IntakeMetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestId)
    app.add_middleware(TracingMiddleware)  # outermost: one span per request (a no-op unless tracing is on)
    app.add_exception_handler(Exception, internal_error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the field and the problem, but never echo the input: bodies carry credentials
        # (a PagerDuty routing_key) that must not bounce back into a sender's logs.
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(UnsafeSignal)
    async def unsafe_signal(request: Request, exc: UnsafeSignal) -> JSONResponse:
        return JSONResponse({"detail": [{"loc": ["signal", "model"], "msg": str(exc), "type": "unsafe_model"}]}, status_code=422)

    @app.exception_handler(TemporalUnavailable)
    async def temporal_unavailable(request: Request, exc: TemporalUnavailable) -> JSONResponse:
        return _retry_later(str(exc))

    @app.exception_handler(SearchAttributesMissing)
    async def namespace_unprepared(request: Request, exc: SearchAttributesMissing) -> JSONResponse:
        # For the operator, not the sender: retrying works once `stanch temporal setup` has run.
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return _retry_later(str(exc))

    @app.exception_handler(RPCError)
    async def temporal_rpc_error(request: Request, exc: RPCError) -> JSONResponse:
        answer = temporal_error(exc, RETRY_AFTER_S)
        log.warning(
            "Temporal RPC failed on %s %s: %s %s (answered %d)",
            request.method,
            request.url.path,
            exc.status.name,
            exc.message,
            answer.status,
        )
        return answer.response()

    @app.exception_handler(TooLarge)
    async def field_too_large(request: Request, exc: TooLarge) -> JSONResponse:
        source = intake_source(request.url.path) or "intake"
        log.warning("%s %s refused: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": f"{source}: {exc}"}, status_code=413)

    @app.get("/v1/auth", response_model=AuthMode, tags=["responders"])
    async def auth_mode(request: Request) -> AuthMode:
        """How responders sign in: a token, or (local demo only) a claimed name and roles."""
        return AuthMode(mode=request.app.state.responders.mode)

    @app.get("/v1/me", response_model=Principal, tags=["responders"], responses={401: {"description": "no valid token"}})
    async def me(responder: ResponderDep) -> Principal:
        """Who the API takes you for, with your roles."""
        if responder is None:
            raise HTTPException(401, detail="--insecure-dev: say who you are with X-Stanch-User and X-Stanch-Roles headers")
        return responder

    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz(request: Request, settings: SettingsDep) -> Health:
        """Liveness: 200 while the process serves, whatever Temporal does (it is never asked
        here), with where the other parts of Stanch live. GET /readyz for readiness."""
        connection: TemporalConnection = request.app.state.temporal
        catalog = request.app.state.catalog
        return Health(
            temporal=connection.address,
            temporal_connected=connection.connected,
            namespace=configured_namespace(settings.temporal_namespace),
            task_queue=settings.task_queue,
            gateway_url=settings.gateway_url,
            api_url=settings.api_url,
            ui_url=settings.ui_url,
            runbooks=len(catalog) if catalog is not None else 0,
            intake_auth=request.app.state.intake_auth.mode,
            intake_open_sources=request.app.state.intake_auth.open_sources(intake_sources(request.app)),
        )

    @app.get("/readyz", response_model=Readiness, tags=["operations"], responses={503: {"model": Readiness}})
    async def readyz(request: Request, settings: SettingsDep) -> JSONResponse:
        """Readiness: 200 when Temporal answers now and its namespace has Stanch's search
        attributes; else 503 naming Temporal, its address and what is wrong (for missing
        attributes: run `stanch temporal setup`). Wait on this, not /healthz, before sending."""
        connection: TemporalConnection = request.app.state.temporal
        problem = await connection.unready() or await _unprepared(connection, settings)
        readiness = Readiness(
            status="ready" if problem is None else "not ready",
            temporal=connection.address,
            namespace=configured_namespace(settings.temporal_namespace),
            detail=problem,
        )
        return JSONResponse(readiness.model_dump(mode="json"), status_code=200 if problem is None else 503)

    return app


async def _unprepared(connection: TemporalConnection, settings: Settings) -> str | None:
    """None when the namespace has Stanch's search attributes (or none are used); else why not."""
    if not settings.upsert_search_attributes:
        return None
    try:
        # An identity that may not list attributes passes (warned once in the log): the
        # intake still says "run setup" when a start is refused for a missing one.
        await require_attributes(await connection.client())
    except SearchAttributesMissing as err:
        return str(err)
    except TemporalUnavailable as err:
        return str(err)
    except AttributesNotListed as err:
        refusal = f"{err.error.status.name}: {err.error.message}"
        return f"Temporal at {connection.address} did not list the namespace's search attributes ({refusal})"
    return None


async def _say_if_unprepared(connection: TemporalConnection, settings: Settings) -> None:
    """At start, log an unprepared namespace loudly: the operator reads it before any alert bounces."""
    try:
        problem = await _unprepared(connection, settings)
    except Exception:  # a log line at start must never take the API down; /readyz asks again
        log.debug("checking the namespace at start failed", exc_info=True)
        return
    if problem is not None and "stanch temporal setup" in problem:
        log.error("not ready: %s", problem)


def intake_sources(app: FastAPI) -> list[str]:
    """Every intake source: the known ones plus any alert route added since."""
    return list(dict.fromkeys([*INTAKE_SOURCES, *served_alert_sources(app)]))


def serve(host: str, port: int, settings: Settings | None = None, *, insecure_dev: bool = False) -> None:
    """Run the API with uvicorn until SIGINT/SIGTERM. Runbooks and the intake auth file are
    loaded first so a broken one stops start-up with its file and field named, not a
    traceback; so does an intake source left without credentials (unless `insecure_dev`)."""
    import uvicorn

    settings = settings or Settings.from_env()
    # Before the app and its Temporal client exist: both pick tracing up (OTEL_EXPORTER_OTLP_ENDPOINT).
    if settings.log_format == "json":  # text: uvicorn's lines, as always
        configure_logging("json")
    start_tracing("stanch-api", propagate_to=settings.trace_propagation_hosts)
    try:
        catalog = load_catalog(settings.runbooks_dir)
    except RunbookError as exc:
        raise SystemExit(f"stanch api: cannot load runbooks from {settings.runbooks_dir}:\n{exc}") from exc
    try:
        policy = load_intake_auth(settings.intake_auth_path, explicit=settings.intake_auth is not None, insecure_dev=insecure_dev)
        responders_problem: ValueError | None = None
        try:
            # Once a responders file exists it is enforced, --insecure-dev or not: claimed
            # identities are only for a machine where nobody has been given a token yet.
            responders = load_responder_auth(settings.responders_path, insecure_dev=insecure_dev and not settings.responders_path.exists())
        except ValueError as exc:  # reported after the intake's own problems, which come first
            responders, responders_problem = ResponderAuth.insecure(), exc
        # insecure_dev here only lets decision keys that do not fit fall back to the home folder's, loudly.
        app = create_app(settings, catalog=catalog, intake_auth=policy, responders=responders, insecure_dev=insecure_dev)
        if responders_problem:
            raise responders_problem
    except (IntakeAuthError, ValueError) as exc:
        raise SystemExit(f"stanch api: refusing to start:\n{exc}") from exc
    open_sources = policy.open_sources(intake_sources(app))
    if open_sources:
        print(
            f"\n!!! INSECURE (--insecure-dev): intake sources {', '.join(open_sources)} accept requests from anyone, "
            f"without credentials{'' if policy.file else ' (no intake auth file)'}. For a local demo only.\n",
            file=sys.stderr,
            flush=True,
        )
    from stanch.api.events import stop_streams

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            stop_streams(app)  # open board streams end within one poll: shutdown need not wait for them
            super().handle_exit(sig, frame)
            # uvicorn re-raises a caught signal once it has shut down, so the process would die of
            # SIGTERM after draining cleanly: a drained stop is a clean exit, 0.
            if sig == signal.SIGTERM:
                self._captured_signals.remove(sig)

    # SIGTERM (a rollout): stop accepting, let requests in flight (a webhook being recorded in
    # Temporal) finish, up to Kubernetes' default grace period, then exit 0.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        log_config=uvicorn_log_config(settings.log_format),
        timeout_graceful_shutdown=API_SHUTDOWN_SECONDS,
    )
    try:
        Server(config).run()
    finally:
        stop_tracing()  # spans still batched, within seconds even with the collector down
