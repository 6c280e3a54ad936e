"""The intake and responder HTTP API: the FastAPI app factory, its lifespan and /healthz.

Stateless by design: everything it knows lives in Temporal, so any number of replicas can
run behind a load balancer. Temporal being away is a 503 with `Retry-After`, never a 500:
monitoring senders retry, and signals are deduplicated by id when they do.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from temporalio.service import RPCError

from stanch.api import alerts, incidents
from stanch.api.deps import RETRY_AFTER_S, SettingsDep, TemporalConnection, TemporalUnavailable
from stanch.config import Settings
from stanch.runbooks.loader import RunbookCatalog, RunbookError, load_catalog

log = logging.getLogger(__name__)

DESCRIPTION = """\
Incident response and rollback for AI systems in production.

Monitoring posts alerts to `/v1/alerts/...`; each opens or joins a durable incident workflow.
Responders read incidents and acknowledge, approve, reject, re-grade and resolve them under
`/v1/incidents/...`. Every decision is a Temporal update: a refused one answers 409 with the
reason, and nothing about it reaches the incident's history.
"""


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    temporal: str
    temporal_connected: bool
    namespace: str
    task_queue: str
    gateway_url: str
    api_url: str
    ui_url: str
    runbooks: int
    detail: str | None = None


def _retry_later(message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def create_app(settings: Settings | None = None, *, catalog: RunbookCatalog | None = None) -> FastAPI:
    """The API for one installation. `catalog` is loaded from `settings.runbooks_dir` at
    start-up unless given (a broken runbook stops start-up, naming file and field)."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if getattr(app.state, "catalog", None) is None:
            app.state.catalog = load_catalog(settings.runbooks_dir)
        log.info("stanch api: %d runbooks from %s, Temporal at %s", len(app.state.catalog), settings.runbooks_dir, app.state.temporal.address)
        yield

    app = FastAPI(title="Stanch", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.catalog = catalog
    app.state.temporal = TemporalConnection(settings)
    app.include_router(alerts.router)
    app.include_router(incidents.router)

    @app.exception_handler(TemporalUnavailable)
    async def temporal_unavailable(request: Request, exc: TemporalUnavailable) -> JSONResponse:
        return _retry_later(str(exc))

    @app.exception_handler(RPCError)
    async def temporal_rpc_error(request: Request, exc: RPCError) -> JSONResponse:
        log.warning("Temporal RPC failed on %s %s: %s %s", request.method, request.url.path, exc.status.name, exc.message)
        return _retry_later(f"Temporal answered {exc.status.name}: {exc.message}; nothing was changed reliably, retry")

    @app.get("/healthz", response_model=Health, tags=["operations"], responses={503: {"model": Health}})
    async def healthz(request: Request, settings: SettingsDep) -> JSONResponse:
        """Whether the API reaches Temporal, and where the other parts of Stanch live."""
        connection: TemporalConnection = request.app.state.temporal
        detail = None
        try:
            await connection.client()
        except TemporalUnavailable as exc:
            detail = str(exc)
        catalog = request.app.state.catalog
        health = Health(
            status="ok" if detail is None else "degraded",
            temporal=connection.address,
            temporal_connected=connection.connected,
            namespace=settings.temporal_namespace,
            task_queue=settings.task_queue,
            gateway_url=settings.gateway_url,
            api_url=settings.api_url,
            ui_url=settings.ui_url,
            runbooks=len(catalog) if catalog is not None else 0,
            detail=detail,
        )
        return JSONResponse(health.model_dump(mode="json"), status_code=200 if detail is None else 503)

    return app


def serve(host: str, port: int, settings: Settings | None = None) -> None:
    """Run the API with uvicorn until SIGINT/SIGTERM. Runbooks are loaded first so a broken
    one stops start-up with its file and field named, not a traceback."""
    import uvicorn

    settings = settings or Settings.from_env()
    try:
        catalog = load_catalog(settings.runbooks_dir)
    except RunbookError as exc:
        raise SystemExit(f"stanch api: cannot load runbooks from {settings.runbooks_dir}:\n{exc}") from exc
    uvicorn.run(create_app(settings, catalog=catalog), host=host, port=port, log_level="info")
