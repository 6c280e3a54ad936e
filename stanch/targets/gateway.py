"""Target adapter for the reference gateway's admin API (stanch/gateway)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field

from stanch.config.network import tls_verification
from stanch.models.actions import ActionSpec, AppliedAction
from stanch.probe.endpoint import ChatEndpoint
from stanch.targets.base import ApplyResult, JobStatus, PlannedCall, TargetError, unfit_value

# 408 and 429 are the client-side statuses where asking again later can succeed.
_RETRYABLE_CLIENT_STATUSES = {408, 429}
# How a probe tells the gateway what it is: a probe never counts against a rate limit; a probe of
# a version (with the admin token) is answered by that version, its hotfixes (system prompt,
# guardrails) applied, and without any incident's containment or pins, which would hide it.
PROBE_HEADER = "x-stanch-probe"
VERSION_HEADER = "x-stanch-version"
BARE_HEADER = "x-stanch-bare"  # with a version: without the model's hotfixes (the regression gate)
ADMIN_TOKEN_HEADER = "x-stanch-admin-token"
DEPLOYMENT_HEADER = "x-stanch-deployment"  # a change of the deployment log, as it served (bisection)


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
    """Drives a reference gateway over HTTP; every mutation carries an idempotency key, and every
    protection names its holder (the incident occurrence): the gateway holds each incident's
    protections apart, enforces their union, and an undo releases only the caller's own."""

    kind: ClassVar[str] = "gateway"

    class Config(BaseModel):
        """`gateway: {base_url, timeout_seconds, admin_token_env}` in targets.yaml: another reference gateway."""

        model_config = ConfigDict(extra="forbid")
        base_url: str = Field(min_length=1, description="where the gateway's admin API answers, e.g. http://127.0.0.1:8300")
        timeout_seconds: float = Field(10.0, gt=0)
        admin_token_env: str | None = Field(None, description="the environment variable holding its /admin/* token")
        probe_timeout_seconds: float = Field(60.0, gt=0, description="how long a probe waits for the model behind the gateway")

    def __init__(
        self,
        base_url: str,
        timeout: float = 10.0,
        *,
        name: str = "gateway",
        admin_token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        probe_timeout: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.probe_timeout = probe_timeout
        self.name = name
        self._admin_token = admin_token
        self.admin_headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self._transport = transport  # tests may pass an in-process ASGI transport

    @classmethod
    def from_config(cls, config: Config, *, name: str, base: Path, env: Mapping[str, str]) -> GatewayTarget:
        token = env.get(config.admin_token_env) if config.admin_token_env else None
        if config.admin_token_env and not token:
            raise ValueError(f"admin_token_env: the environment variable {config.admin_token_env} is not set")
        return cls(config.base_url, config.timeout_seconds, name=name, admin_token=token, probe_timeout=config.probe_timeout_seconds)

    async def _request(
        self, method: str, path: str, *, json: dict[str, Any] | None = None, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        # A client per call: activities may run on different event loops. The trust store
        # is loaded once per process (tls_verification): it was most of a new client's cost.
        what = f"{method} {self.base_url}{path}"
        try:
            async with httpx.AsyncClient(
                base_url=self.base_url,
                timeout=self.timeout,
                headers=self.admin_headers,
                transport=self._transport,
                verify=tls_verification(),
            ) as client:
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

    async def apply(self, model: str, action: ActionSpec, idempotency_key: str, incident_id: str, holder: str | None = None) -> ApplyResult:
        body = await self._request(
            "POST",
            "/admin/apply",
            json={
                "idempotency_key": idempotency_key,
                "incident_id": incident_id,
                "model": model,
                "action": {"kind": action.kind, "params": action.params},
                **({"holder": holder} if holder else {}),
            },
        )
        return ApplyResult.model_validate(body)

    async def undo(self, applied: AppliedAction, undo_key: str) -> ApplyResult:
        """Release this action's hold; the gateway keeps what other holders hold. An action recorded
        before holders names none, and the gateway then goes by its key alone."""
        request = {"idempotency_key": applied.idempotency_key, "undo_key": undo_key}
        if applied.holder:
            request["holder"] = applied.holder
        body = await self._request("POST", "/admin/undo", json=request)
        return ApplyResult.model_validate(body)

    def chat_endpoint(self, model: str, version: str | None = None) -> ChatEndpoint:
        """The gateway's own `/v1/chat/completions`. No version: what users get now, containment
        included. A version (or "release", the version a fix deploys): that version directly."""
        # A probe spends no client's budget, and a version by name skips containment: the gateway
        # takes both only with its admin token (none needed in --dev).
        headers = {PROBE_HEADER: "1"}
        if self._admin_token:
            headers[ADMIN_TOKEN_HEADER] = self._admin_token
        if version is not None:
            if (reason := unfit_value(version)) is not None:
                raise TargetError(f"version for {model} {reason}: not sent to gateway {self.name}", retryable=False)
            headers[VERSION_HEADER] = version
        return ChatEndpoint(
            base_url=f"{self.base_url}/v1", model=model, headers=headers, timeout_seconds=self.probe_timeout, label=f"gateway {self.name}"
        )

    async def open_shadow(
        self, model: str, version: str, incident_id: str, idempotency_key: str, *, sample_rate: float, limit: int
    ) -> dict[str, Any]:
        """Mirror a sample of live traffic to `version` (its hotfixes, no containment); once per key."""
        body = {
            "idempotency_key": idempotency_key,
            "incident_id": incident_id,
            "model": model,
            "version": version,
            "sample_rate": sample_rate,
            "limit": limit,
        }
        return await self._request("POST", "/admin/shadows", json=body)

    async def shadow_answers(self, shadow_id: str, after: int = 0) -> dict[str, Any]:
        """The shadow and its mirrored answers after sequence number `after`, a page at a time."""
        return await self._request("GET", f"/admin/shadows/{shadow_id}", params={"after": str(after), "limit": "100"})

    async def close_shadow(self, shadow_id: str, idempotency_key: str, keep: list[str]) -> dict[str, Any]:
        """Stop mirroring; the answers are deleted but the failing ones in `keep`, for a responder."""
        return await self._request("POST", f"/admin/shadows/{shadow_id}/close", json={"idempotency_key": idempotency_key, "keep": keep})

    def shadow_samples_url(self, shadow_id: str, sample_ids: list[str]) -> str:
        """Where a responder reads failing mirrored answers (with the gateway's admin token)."""
        query = "&".join(f"ids={sample}" for sample in sample_ids)
        return f"GET {self.base_url}/admin/shadows/{shadow_id}" + (f"?{query}" if query else "")

    def bare_chat_endpoint(self, model: str, version: str) -> ChatEndpoint:
        """That version as its upstream answers it: no containment, and none of the model's
        hotfixes (system prompt, guardrails) either. The regression gate judges a candidate on
        its own: a standing guardrail that redacts a leak would hide that the candidate leaks."""
        endpoint = self.chat_endpoint(model, version)
        return replace(endpoint, headers={**endpoint.headers, BARE_HEADER: "1"})

    async def deployments(self, model: str, since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        """The model's changes from the gateway's deployment log, in deployment order (ISO times:
        the change in force at `since` first, none after `until`)."""
        params = {name: value for name, value in (("since", since), ("until", until)) if value}
        body = await self._request("GET", f"/admin/models/{model}/deployments", params=params)
        return list(body["deployments"])

    def deployment_chat_endpoint(self, model: str, sequence: int) -> ChatEndpoint:
        """Change `sequence` of the deployment log as it served: its version, system prompt and
        guardrails; no containment and no incident's hotfix. For bisection."""
        endpoint = self.chat_endpoint(model)
        return replace(endpoint, headers={**endpoint.headers, DEPLOYMENT_HEADER: str(sequence)})

    async def start_job(self, model: str, kind: str, params: dict[str, Any], idempotency_key: str) -> JobStatus:
        raise TargetError(
            f"gateway {self.name} runs no jobs: a fine-tune trains on a `trainer` target (the OpenAI fine-tuning API)", retryable=False
        )

    async def job_status(self, job_id: str) -> JobStatus:
        raise TargetError(f"gateway {self.name} runs no jobs", retryable=False)

    def plan(self, model: str, action: ActionSpec, idempotency_key: str) -> list[PlannedCall]:
        """What `apply` (and, for a fine-tune, the hotfix activity) would send; restore's undo with each."""
        undo = self._call(
            f"undo {action.kind} on {model} through the inverse the gateway recorded",
            "/admin/undo",
            {"idempotency_key": idempotency_key, "undo_key": f"{idempotency_key}/undo"},
        )
        if action.kind == "deploy_finetune":
            return self._plan_finetune(model, action, idempotency_key, undo)
        return [self._apply_call(model, action, idempotency_key, undo)]

    def _plan_finetune(self, model: str, action: ActionSpec, idempotency_key: str, undo: PlannedCall) -> list[PlannedCall]:
        """The hotfix activity's fine-tune: read the version to fix, train on the trainer the step
        names (the OpenAI fine-tuning API), register the result here, deploy it."""
        params = action.params
        trainer = str(params.get("trainer") or "trainer")
        base = str(params.get("base_version") or "<the release version>")
        answers = f"each answered {params['answer']!r}" if params.get("answer") else "each with the answer a responder supplied"
        examples = len(params.get("examples") or [])
        read = PlannedCall(
            target=self.name,
            adapter=self.kind,
            operation=f"read version {base} of {model}: the upstream model and base URL it serves",
            method="GET",
            url=f"{self.base_url}/admin/state?model={model}",
        )
        upload = PlannedCall(
            target=trainer,
            adapter="trainer",
            operation="upload the training file, unless a job for this key exists",
            method="POST",
            url=f"<{trainer}>/files",
            body={"purpose": "fine-tune", "file": f"<JSONL: the incident's repro cases, {answers}; {examples} runbook examples>"},
        )
        job_key = f"{idempotency_key}/finetune-job"
        job = PlannedCall(
            target=trainer,
            adapter="trainer",
            operation="start the fine-tune job (Idempotency-Key: its key), or find it again by its key; follow it, cancel it on abort",
            method="POST",
            url=f"<{trainer}>/fine_tuning/jobs",
            body={
                "model": f"<the upstream model of version {base}>",
                "training_file": "<the uploaded file>",
                "metadata": {"stanch_key": job_key},
            },
        )
        registration = ActionSpec(
            kind="register_version",
            params={"version": "<the next free version>", "upstream_model": "<the fine-tuned model>", "from_version": base},
        )
        register = self._call(
            f"register the fine-tuned model as a new version of {model} (weight 0)",
            "/admin/apply",
            {
                "idempotency_key": f"{idempotency_key}/register-version",
                "model": model,
                "action": {"kind": registration.kind, "params": registration.params},
            },
        )
        deploy = self._apply_call(
            model, ActionSpec(kind="deploy_version", params={"version": "<the fine-tuned version>"}), idempotency_key, undo
        )
        return [
            read,
            upload,
            job,
            register,
            deploy.model_copy(update={"operation": f"deploy the fine-tuned version of {model} as its release"}),
        ]

    def _apply_call(self, model: str, action: ActionSpec, idempotency_key: str, undo: PlannedCall) -> PlannedCall:
        what = f"{action.kind} on {model}" + (f": {action.description}" if action.description else "")
        body = {"idempotency_key": idempotency_key, "model": model, "action": {"kind": action.kind, "params": action.params}}
        return self._call(what, "/admin/apply", body, undo=[undo])

    def _call(self, operation: str, path: str, body: dict[str, Any], undo: list[PlannedCall] | None = None) -> PlannedCall:
        return PlannedCall(
            target=self.name,
            adapter=self.kind,
            operation=operation,
            method="POST",
            url=f"{self.base_url}{path}",
            body=body,
            undo=undo or [],
        )
