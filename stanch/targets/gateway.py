"""Target adapter for the reference gateway's admin API (stanch/gateway)."""

from __future__ import annotations

from typing import Any

import httpx

from stanch.models import ActionSpec, AppliedAction, ProbeResult
from stanch.targets.base import ApplyResult, JobStatus, TargetError

# 408 and 429 are the client-side statuses where asking again later can succeed.
_RETRYABLE_CLIENT_STATUSES = {408, 429}


def _server_message(response: httpx.Response) -> str:
    """The most useful text the gateway gave: FastAPI `detail`, an OpenAI `error`, or the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict):
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):  # FastAPI request validation errors
            return "; ".join(
                f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg')}" for item in detail if isinstance(item, dict)
            )
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(body)


class GatewayTarget:
    """Drives a reference gateway over HTTP; every mutation carries an idempotency key."""

    def __init__(self, base_url: str, timeout: float = 10.0, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._transport = transport  # tests may pass an in-process ASGI transport

    async def _request(self, method: str, path: str, *, json: dict[str, Any] | None = None, params: dict[str, str] | None = None) -> dict[str, Any]:
        # A client per call: activities may run on different event loops, and the
        # connection cost is negligible next to the incident's timescale.
        what = f"{method} {self.base_url}{path}"
        try:
            async with httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, transport=self._transport) as client:
                response = await client.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            raise TargetError(f"gateway unreachable ({what}): {type(exc).__name__}: {exc}", retryable=True) from exc
        if response.status_code >= 400:
            retryable = response.status_code >= 500 or response.status_code in _RETRYABLE_CLIENT_STATUSES
            raise TargetError(
                f"gateway refused {what} with HTTP {response.status_code}: {_server_message(response)}",
                retryable=retryable,
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise TargetError(f"gateway answered {what} with non-JSON: {response.text[:200]!r}", retryable=True) from exc
        return body

    async def state(self, model: str) -> dict[str, Any]:
        return await self._request("GET", "/admin/state", params={"model": model})

    async def apply(self, model: str, action: ActionSpec, idempotency_key: str, incident_id: str) -> ApplyResult:
        body = await self._request(
            "POST",
            "/admin/apply",
            json={
                "idempotency_key": idempotency_key,
                "incident_id": incident_id,
                "model": model,
                "action": {"kind": action.kind, "params": action.params},
            },
        )
        return ApplyResult.model_validate(body)

    async def undo(self, applied: AppliedAction, undo_key: str) -> ApplyResult:
        body = await self._request(
            "POST", "/admin/undo", json={"idempotency_key": applied.idempotency_key, "undo_key": undo_key}
        )
        return ApplyResult.model_validate(body)

    async def probe(self, model: str, prompt: str, version: str | None = None) -> ProbeResult:
        body = await self._request("POST", "/admin/probe", json={"model": model, "prompt": prompt, "version": version})
        return ProbeResult(
            prompt=prompt,
            status_code=body["status_code"],
            output=body.get("output") or "",
            model_version=body.get("model_version"),
            refusal_code=body.get("refusal_code"),
            refusal_incident=body.get("refusal_incident"),
        )

    async def start_job(self, model: str, kind: str, params: dict[str, Any], idempotency_key: str) -> JobStatus:
        body = await self._request(
            "POST", "/admin/jobs", json={"idempotency_key": idempotency_key, "model": model, "kind": kind, "params": params}
        )
        return JobStatus.model_validate(body)

    async def job_status(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(await self._request("GET", f"/admin/jobs/{job_id}"))
