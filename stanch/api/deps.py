"""What the API's routes depend on: settings, the runbook catalog, a Temporal client, intake.

Each is a FastAPI dependency read from `app.state`, which the lifespan fills, so tests swap
any of them with `app.dependency_overrides` and never need a Temporal server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client
from temporalio.service import RPCError

from stanch.config.settings import Settings
from stanch.intake.start import IntakeResult, open_or_join
from stanch.models.signals import Signal
from stanch.runbooks.loader import RunbookCatalog
from stanch.temporal.client import configured_address, configured_namespace, connect
from stanch.trust.responders import NotAuthenticated, Principal, ResponderAuth

CONNECT_TIMEOUT_S = 10.0
READY_CHECK_TIMEOUT_S = 5.0
RETRY_AFTER_S = 5


class TemporalUnavailable(Exception):
    """Temporal cannot be reached right now; the caller should retry later (HTTP 503)."""


class TemporalConnection:
    """One shared client, connected on first use.

    Lazy so the API starts, and answers /healthz, while Temporal is still coming up or is
    briefly away; a failed attempt is retried on the next request rather than remembered.
    `unready()` is what /readyz asks.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    @property
    def address(self) -> str:
        if self._client is not None:
            return self._client.service_client.config.target_host
        return configured_address(self._settings.temporal_address)

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def client(self) -> Client:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await asyncio.wait_for(
                        connect(self._settings.temporal_address, self._settings.temporal_namespace, self._settings),
                        CONNECT_TIMEOUT_S,
                    )
                except (TimeoutError, RuntimeError, OSError) as err:
                    raise TemporalUnavailable(
                        f"cannot reach Temporal at {self.address} (namespace {configured_namespace(self._settings.temporal_namespace)}): "
                        f"{err or 'timed out'}; is the dev server (`stanch dev-server`) or your cluster up?"
                    ) from err
        return self._client

    async def unready(self) -> str | None:
        """None when Temporal answers now; else why not, naming Temporal and its
        address. Asked every time: a client connected earlier says nothing about Temporal now."""
        try:
            client = await self.client()
        except TemporalUnavailable as err:
            return str(err)
        try:
            # The call every client makes on connecting: any server and any credentials that
            # let the API connect at all allow it, without touching a namespace.
            await client.workflow_service.get_system_info(GetSystemInfoRequest(), timeout=timedelta(seconds=READY_CHECK_TIMEOUT_S))
        except RPCError as err:
            return f"Temporal at {self.address} did not answer ({err.status.name}: {err.message})"
        except (TimeoutError, RuntimeError, OSError) as err:
            return f"Temporal at {self.address} did not answer: {err or 'timed out'}"
        return None


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_catalog(request: Request) -> RunbookCatalog:
    return request.app.state.catalog


async def get_client(request: Request) -> Client:
    connection: TemporalConnection = request.app.state.temporal
    return await connection.client()


Intake = Callable[[Signal], Awaitable[IntakeResult]]


def get_intake(request: Request) -> Intake:
    """Opens or joins the incident for one signal; returns once Temporal recorded it."""
    settings: Settings = request.app.state.settings
    connection: TemporalConnection = request.app.state.temporal
    catalog: RunbookCatalog = request.app.state.catalog

    async def intake(signal: Signal) -> IntakeResult:
        client = await connection.client()
        return await open_or_join(
            client,
            catalog,
            signal,
            task_queue=settings.task_queue,
            upsert_search_attributes=settings.upsert_search_attributes,
            incident_prefix=settings.incident_prefix,
        )

    return intake


# A CI pipeline's role: it runs the regression gate (POST /v1/gate) and reads nothing else. Its
# token lives in CI secrets; incidents hold prompts and leaked answers.
GATE_ROLE = "gate"


def current_responder(
    request: Request,
    authorization: Annotated[str | None, Header(description="`Bearer <token>`: a Stanch API token or a JWT")] = None,
    x_stanch_user: Annotated[str | None, Header(description="--insecure-dev only: who you say you are")] = None,
    x_stanch_roles: Annotated[str | None, Header(description="--insecure-dev only: your roles, comma-separated")] = None,
) -> Principal | None:
    """The responder behind this request. None only under --insecure-dev when nobody is
    claimed: then the names in the request body stand (the local demo, old clients)."""
    auth: ResponderAuth = request.app.state.responders
    try:
        principal = auth.vouch(authorization)
    except NotAuthenticated as err:
        # 401 for a credential refused; 503 when the identity provider's keys could not be fetched.
        raise HTTPException(err.status_code, detail=str(err), headers=err.http_headers) from err
    if principal is None and x_stanch_user:
        roles = [role.strip() for role in (x_stanch_roles or "").split(",") if role.strip()]
        principal = Principal(user=x_stanch_user.strip(), roles=roles, via="insecure-dev")
    if principal is not None and set(principal.roles) == {GATE_ROLE} and not request.url.path.startswith("/v1/gate"):
        raise HTTPException(
            403,
            detail=f"{principal.user} holds only the role {GATE_ROLE}: it runs the regression gate (POST /v1/gate) and reads nothing else",
        )
    return principal


SettingsDep = Annotated[Settings, Depends(get_settings)]
ResponderDep = Annotated[Principal | None, Depends(current_responder)]
ClientDep = Annotated[Client, Depends(get_client)]
IntakeDep = Annotated[Intake, Depends(get_intake)]
