"""`POST /v1/gate`: the regression gate over HTTP, for CI jobs and Argo Rollouts' web metric.

The answer is 200 with the verdict for pass, fail and inconclusive alike, so an analysis reads
`$.verdict` (`successCondition: result == "pass"`); 503 with Retry-After when the records
database or the gateway is out of reach (nothing was checked: ask again), 422 for a request
that cannot be run as asked (an unknown target).

Who may call it: a CI service account holding the role `gate`, or any responder (oncall,
safety, incident-commander). Retiring a case (`POST /v1/gate/retire`) takes a responder: a
pipeline may check its candidate against the suite, never shrink the suite.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from stanch.api.deps import GATE_ROLE, RETRY_AFTER_S, ResponderDep, current_responder
from stanch.config.errors import ConfigFileError
from stanch.config.settings import Settings
from stanch.gate.models import GateRequest, GateVerdict, RetireRequest
from stanch.gate.run import GateCannotRun, detector_specs, run_gate
from stanch.runbooks.loader import RunbookCatalog
from stanch.stores.records import Records, RecordsError
from stanch.stores.regression import CaseNotFound, RegressionSuite
from stanch.targets.registry import TargetRegistry
from stanch.trust.permissions import RESPONDERS
from stanch.trust.responders import Principal

MAY_RUN_GATE = frozenset({GATE_ROLE, *RESPONDERS})

router = APIRouter(prefix="/v1/gate", tags=["gate"], dependencies=[Depends(current_responder)])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no usable credential"},
    403: {"description": "the caller holds none of the roles that may do this"},
    422: {"description": "the request cannot be run as asked (the reason says which field or setting)"},
    503: {"description": "the records database or the gateway is out of reach: nothing was checked, retry later"},
}


class Retired(BaseModel):
    """A case retired: it no longer guards changes."""

    case_key: str
    model: str
    reason: str
    retired_by: str
    retired_at: str = Field(description="ISO 8601, UTC")


def allowed(roles: frozenset[str], what: str) -> Any:
    """A dependency: the authenticated caller when one of their roles is in `roles`; 403 naming
    the roles otherwise. Under --insecure-dev nobody is authenticated: the caller is None."""

    async def caller_who_may(responder: ResponderDep) -> Principal | None:
        if responder is not None and not set(responder.roles) & roles:
            held = ", ".join(sorted(responder.roles)) or "no role"
            raise HTTPException(403, detail=f"{responder.user} holds {held}; {what} needs one of the roles {', '.join(sorted(roles))}")
        return responder

    return Depends(caller_who_may)


def _suite(request: Request) -> RegressionSuite:
    """The records database the settings name, opened once per API process."""
    state = request.app.state
    settings: Settings = state.settings
    if getattr(state, "records", None) is None:
        state.records = Records.from_settings(settings)
    return RegressionSuite(state.records, settings.regression_dir)


def _targets(request: Request) -> TargetRegistry:
    state = request.app.state
    if getattr(state, "targets", None) is None:
        state.targets = TargetRegistry(state.settings)
    return state.targets


def _retry_later(message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


@router.post("", response_model=GateVerdict, responses=_RESPONSES)
async def gate(
    body: GateRequest, request: Request, caller: Annotated[Principal | None, allowed(MAY_RUN_GATE, "running the regression gate")]
) -> GateVerdict | JSONResponse:
    """Replay every active regression case of `model` against `candidate`: 200 with the verdict
    (`pass`, `fail`, `inconclusive`), naming each case that regressed and its incident."""
    try:
        suite, targets = _suite(request), _targets(request)
    except RecordsError as error:
        return _retry_later(str(error))
    except ConfigFileError as broken:
        raise HTTPException(422, detail=str(broken)) from None
    catalog: RunbookCatalog = request.app.state.catalog
    try:
        return await run_gate(body, suite=suite, targets=targets, detector_specs=detector_specs(catalog))
    except GateCannotRun as failure:
        if failure.retryable:
            return _retry_later(f"the gate could not run: {failure}")
        raise HTTPException(422, detail=f"the gate cannot run as asked: {failure}") from None


class RetireBody(RetireRequest):
    retired_by: str | None = Field(None, description="--insecure-dev only: who retires it (else the authenticated responder)")


@router.post("/retire", response_model=Retired, responses={**_RESPONSES, 404: {"description": "no such case"}})
async def retire(
    body: RetireBody, request: Request, responder: Annotated[Principal | None, allowed(RESPONDERS, "retiring a regression case")]
) -> Retired | JSONResponse:
    """Retire a case: it stops guarding changes; the reason and the responder are recorded."""
    by = responder.user if responder is not None else (body.retired_by or "")
    if not by.strip():
        raise HTTPException(422, detail="say who retires the case (retired_by), or authenticate")
    try:
        suite = _suite(request)
        model, retirement = await asyncio.to_thread(suite.retire, body.case_key, reason=body.reason, by=by, model=body.model)
    except RecordsError as error:
        return _retry_later(str(error))
    except CaseNotFound as missing:
        raise HTTPException(404, detail=str(missing)) from None
    return Retired(
        case_key=body.case_key,
        model=model,
        reason=retirement.reason,
        retired_by=retirement.retired_by,
        retired_at=retirement.retired_at.isoformat(),
    )
