"""Generic HTTP: a runbook step is one templated request, and the request that undoes it.

```yaml
- kind: http
  target: litellm                 # targets.yaml: litellm: {http: {base_url, headers, secrets_file}}
  description: block the virtual key the leak went out through
  params:
    method: POST
    url: /key/block               # relative to the target's base_url, or absolute
    headers: {X-Reason: "stanch {incident_id}"}
    body: {key: "{model}"}        # {model} {version} {incident_id} are filled in
    expect: [200]                 # anything else fails the step
    undo: {method: POST, url: /key/unblock, body: {key: "{model}"}}
```

Secrets: headers may say `${VAR}` (the environment, else the target's secrets file) or
`${file:path}`; they are read only while the request is sent, and only for requests to the
target's own origin when the reference is a step's (a step's references are also constrained:
`stanch.targets.config.Secrets.step_refusal`). URLs and bodies never carry references. The action
in history, what is recorded as applied (`result`, `inverse`) and every error keep the
reference, never the value.

Idempotency: the request carries `Idempotency-Key` (the undo its undo key); a transient failure
(connection, timeout, 408, 429, 5xx) is retried by Temporal with the same key, and the server is
expected to honour it. Anything else unexpected fails at once with the server's message.

State the undo needs: `before` reads run first and `capture` values from their JSON answers
(RFC 6901 pointers) for `{before.NAME}` in the body and the undo — the percent a canary had,
the pod template a Deployment ran. Captures are kept in the activity's heartbeat, and a failure
carries them out to the workflow, so a retry — Temporal's, or a responder's after the fail-safe —
after the change went through undoes to what was there before it, not to the change itself.
`after` captures values of the change's own answer for `{after.NAME}` in the undo, and
`undo.check` reads the object again before undoing: if it no longer holds what the change left,
someone changed it since and restore is refused (a human undoes by hand).

Several incidents on one object: an HTTP control plane keeps no holders, so on its own one
incident's undo (`POST /key/unblock`) lifts what another still holds. With `holds_file` set on
the target (a path every worker reaches, such as one under STANCH_HOME), Stanch keeps the
holders itself (`stanch.targets.holds_file`): each step that has an undo holds its object —
`hold:` in the step's params names it (`hold: "litellm key {model}"`; without it, the change's
method, URL and body) — an undo while another holder holds the object sends nothing, and the
last one sends the undo of the first hold, with its captures: what was there before the first.
Without `holds_file`, or for holders Stanch did not record there (a person, another tool), the
adapter cannot know: every undo is sent as recorded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import Field, ValidationError, field_validator
from temporalio import activity

from stanch.config.network import tls_verification
from stanch.config.secrets import SecretUnavailable
from stanch.models.actions import ActionSpec, AppliedAction
from stanch.targets.base import (
    ApplyResult,
    NoStateToSnapshot,
    PlannedCall,
    ServesNoModel,
    TargetError,
    carried_captures,
    unfit_value,
)
from stanch.targets.config import Secrets
from stanch.targets.holds_file import HoldsFile
from stanch.targets.http_templates import (
    PLACEHOLDER,
    Capture,
    Check,
    HttpRequest,
    HttpStep,
    Read,
    Undo,
    _Strict,
    capture,
    fill,
    refuse_reference_in_url,
    resolve,
    scrub,
)

__all__ = [
    "PLACEHOLDER",
    "Capture",
    "Check",
    "HttpRequest",
    "HttpStep",
    "HttpTarget",
    "Read",
    "Undo",
    "capture",
    "fill",
    "resolve",
    "scrub",
]

RETRYABLE_STATUSES = {408, 429}
RESPONSE_LIMIT = 4000  # characters of a response kept in the record
STAGE_NAMES = {"contain": "containment"}  # how a refusal names the stage whose step it would undo


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):  # Kubernetes Status, FastAPI, OpenAI-style
            found = body.get(key)
            if isinstance(found, dict):
                found = found.get("message")
            if isinstance(found, str) and found:
                return found[:500]
    return json.dumps(body)[:500]


# --- the adapter ---------------------------------------------------------------------------


class HttpTarget(ServesNoModel):
    """Any HTTP control plane: LiteLLM, Kubernetes, Argo Rollouts, KServe, an internal API."""

    kind: ClassVar[str] = "http"
    label: ClassVar[str] = "generic HTTP"

    class Config(_Strict):
        """`http:` in targets.yaml. Header values may use ${VAR} and ${file:path}; URLs may not."""

        base_url: str = Field(pattern=r"^https?://", description="relative step URLs are joined to it")
        headers: dict[str, str] = Field(default_factory=dict, description="sent with every request to base_url's host")
        secrets_file: Path | None = Field(None, description="NAME=value lines for ${NAME}; relative to the targets file")
        secrets_dir: Path | None = Field(
            None, description="a folder of files a runbook step may name with ${file:name} (relative to the targets file); unset: none"
        )
        step_secret_files: list[Path] = Field(
            default_factory=list,
            description="files a runbook step may also name with ${file:...} (absolute, or relative to the targets file)",
        )
        step_secret_env: list[str] = Field(
            default_factory=list, description="environment variables a runbook step may name with ${NAME}; unset: none"
        )
        ca_file: Path | None = Field(None, description="CA bundle to trust (a cluster's ca.crt); relative to the targets file")
        timeout_seconds: float = Field(10.0, gt=0)
        state_url: str | None = Field(None, description="GET for the evidence snapshot; {model} is filled in (percent-encoded)")
        holds_file: Path | None = Field(
            None,
            description="where Stanch keeps which incident holds which object here (relative to the targets file); "
            "unset: one incident's undo may lift what another still holds",
        )

        @field_validator("base_url", "state_url")
        @classmethod
        def _url_names_no_secret(cls, url: str | None) -> str | None:
            return url if url is None else refuse_reference_in_url(url)

    def __init__(
        self, config: Config, *, name: str, base: Path, env: Mapping[str, str], transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self.name = name
        self.base_url = config.base_url.rstrip("/")
        self.secrets = Secrets(
            f"target {name}",
            base=base,
            env=env,
            secrets_file=config.secrets_file,
            step_files_dir=config.secrets_dir,
            step_files=config.step_secret_files,
            step_env=config.step_secret_env,
        )
        self._ca_file = None if config.ca_file is None else (config.ca_file if config.ca_file.is_absolute() else base / config.ca_file)
        holds = config.holds_file
        self.holds = None if holds is None else HoldsFile(holds if holds.is_absolute() else base / holds)
        self._transport = transport

    @classmethod
    def from_config(cls, config: Config, *, name: str, base: Path, env: Mapping[str, str]) -> HttpTarget:
        return cls(config, name=name, base=base, env=env)

    # --- the Target protocol ---

    async def apply(self, model: str, action: ActionSpec, idempotency_key: str, incident_id: str, holder: str | None = None) -> ApplyResult:
        step = self.step(action)
        if self.holds is None:
            return await self._apply(step, idempotency_key)
        async with self.holds.locked():  # no release decides it is the last while this change goes out
            outcome = await self._apply(step, idempotency_key)
            if outcome.inverse is not None:  # what cannot be undone is never lifted: nothing to hold
                held_by = self.holds.take(
                    name=held_object(step), key=idempotency_key, holder=holder or incident_id, incident=incident_id, inverse=outcome.inverse
                )
                outcome.result.update(holder=holder or incident_id, held_by=held_by)
        return outcome

    async def _apply(self, step: HttpStep, idempotency_key: str) -> ApplyResult:
        used: dict[str, str] = {}
        captured = _remembered(idempotency_key)
        if captured is None:
            captured = {}
            for number, read in enumerate(step.before):
                captured.update(await self._capture(read, f"before[{number}]", captured, used))
        _remember(idempotency_key, scrub(captured, used))  # heartbeats reach history on a timeout
        try:
            response = await self._send(step, "the step", idempotency_key, captured, used=used)
            after = self._after(step, response)
        except TargetError as error:
            if captured:  # whoever retries this step (a responder, after the fail-safe) reuses them
                error.details = {"http_captured_for": idempotency_key, "captured": scrub(captured, used)}
            raise
        result = {"request": f"{step.method} {self.url(fill(step.url, captured))}", **self._record(response, used)}
        if captured:
            result["captured"] = scrub(captured, used)
        if after:
            result["after"] = scrub(after, used)
        inverse = None
        if step.undo:
            request = step.undo.model_dump(mode="json", exclude={"check"})
            if step.undo.check is not None:  # as written: an unset `restored` or `default` stays unset
                request["check"] = step.undo.check.model_dump(mode="json", exclude_unset=True)
            inverse = {"request": request, "captured": scrub(captured, used)}
            if after:
                inverse["after"] = scrub(after, used)
        return ApplyResult(result=result, inverse=inverse, replayed=response.headers.get("idempotent-replayed", "").lower() == "true")

    async def undo(self, applied: AppliedAction, undo_key: str) -> ApplyResult:
        if self.holds is None:
            return await self._undo(applied, applied.inverse or {}, undo_key)
        async with self.holds.locked():
            holds = self.holds.read()
            own = holds.get(applied.idempotency_key)
            if own is not None and own.get("released_at") is not None:
                return ApplyResult(result=own.get("undo_result") or {}, replayed=True)
            # A step applied before holds were kept names its object only through its params.
            name = own["object"] if own is not None else held_object(self.step(ActionSpec(kind=applied.kind, params=applied.params)))
            others = self.holds.in_force(holds, name, besides=applied.idempotency_key)
            if others:
                result = {"left_in_place": True, "object": name, "held_by": [h["holder"] for h in others]}
            else:
                outcome = await self._undo(applied, own["base"] if own is not None else applied.inverse or {}, undo_key)
                result = outcome.result
            self.holds.release(applied.idempotency_key, result)
        return ApplyResult(result=result)

    async def _undo(self, applied: AppliedAction, inverse: dict[str, Any], undo_key: str) -> ApplyResult:
        if "request" not in inverse:
            raise TargetError(f"{applied.kind} on target {self.name} declared no undo request: nothing to send", retryable=False)
        request = Undo.model_validate(inverse["request"])
        captured, after = inverse.get("captured") or {}, inverse.get("after") or {}
        used: dict[str, str] = {}
        shown = f"{request.method} {self.url(fill(request.url, captured, after))}"
        if request.check is not None and await self._already_restored(request.check, applied, captured, after, used):
            return ApplyResult(
                result={"request": shown, "skipped": f"{request.check.pointer} already holds what the undo puts back"}, replayed=True
            )
        response = await self._send(request, "the undo", undo_key, captured, after, used=used)
        return ApplyResult(result={"request": shown, **self._record(response, used)})

    def plan(self, model: str, action: ActionSpec, idempotency_key: str) -> list[PlannedCall]:
        step = self.step(action)
        calls = [self._planned(read, f"reads {', '.join('{before.' + name + '}' for name in read.capture)}") for read in step.before]
        undo = []
        if step.undo and step.undo.check:
            check = step.undo.check
            undo.append(self._planned(check.as_request(), f"undo only if {check.pointer} still equals {json.dumps(check.equals)}"))
        if step.undo:
            undo.append(self._planned(step.undo, f"undo: {step.undo.method} {step.undo.url}"))
        main = self._planned(step, action.description or f"{step.method} {step.url}")
        return [*calls, main.model_copy(update={"undo": undo})]

    async def state(self, model: str) -> dict[str, Any]:
        if not self.config.state_url:
            raise NoStateToSnapshot(f"target {self.name} (generic HTTP) has no state_url: nothing to snapshot")
        unfit = unfit_value(model)
        if unfit:
            raise TargetError(f"target {self.name}: the model name {unfit}: it is not filled into state_url", retryable=False)
        read = HttpRequest(method="GET", url=self.config.state_url.replace("{model}", quote(model, safe="")), expect=[200])
        used: dict[str, str] = {}
        response = await self._send(read, "the state read", None, {}, used=used)
        return {"target": self.name, **self._record(response, used, limit=None)}

    # --- the step, its URLs and requests ---

    def step(self, action: ActionSpec) -> HttpStep:
        """The step, validated; TargetError (not retryable) if it could not run as written."""
        if action.kind != "http":
            raise TargetError(f"target {self.name} is generic HTTP: it runs `kind: http` steps, not {action.kind!r}", retryable=False)
        try:
            step = HttpStep.model_validate(action.params)
        except ValidationError as exc:
            problems = "; ".join(
                f"params.{'.'.join(str(p) for p in e['loc']) or '(step)'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
            )
            raise TargetError(f"http step for target {self.name}: {problems}", retryable=False) from None
        for where, request in step.requests():
            for name, value in request.headers.items():
                problem = self._step_reference_problem(value, request.url)
                if problem:
                    raise TargetError(f"http step for target {self.name}: header {name} of {where}: {problem}", retryable=False)
        return step

    def _step_reference_problem(self, value: str, url: str) -> str | None:
        references = Secrets.references(value)
        if not references:
            return None
        if not self._same_origin(self.url(url)):
            return f"a secret reference goes only to the target's own origin ({self.base_url}), not to {url}"
        for reference in references:
            is_file = reference.startswith("${file:")
            refusal = self.secrets.step_refusal(is_file, reference[len("${file:") if is_file else 2 : -1].strip())
            if refusal:
                return f"{reference}: {refusal}"
        return None

    def url(self, url: str) -> str:
        return url if url.startswith(("http://", "https://")) else f"{self.base_url}/{url.lstrip('/')}"

    def _same_origin(self, url: str) -> bool:
        ours, theirs = urlsplit(self.base_url), urlsplit(url)
        return (ours.scheme, ours.netloc) == (theirs.scheme, theirs.netloc)

    def _planned(self, request: HttpRequest | Read, operation: str) -> PlannedCall:
        return PlannedCall(
            target=self.name, adapter=self.kind, operation=operation, method=request.method, url=self.url(request.url), body=request.body
        )

    async def _capture(self, read: Read, where: str, earlier: Mapping[str, Any], used: dict[str, str]) -> dict[str, Any]:
        response = await self._send(read, where, None, earlier, used=used)
        values: dict[str, Any] = {}
        for name, spec in read.capture.items():
            values[name] = self._captured(response, spec, f"{where} of target {self.name}: capture {name}", read.url, earlier)
        return values

    def _after(self, step: HttpStep, response: httpx.Response) -> dict[str, Any]:
        what = f"target {self.name}: the change went through, but"
        return {name: self._captured(response, spec, f"{what} after.{name}", step.url, {}) for name, spec in step.after.items()}

    @staticmethod
    def _captured(response: httpx.Response, spec: Capture, what: str, url: str, earlier: Mapping[str, Any]) -> Any:
        try:
            document = response.json()
        except ValueError:
            raise TargetError(f"{what}: {url} answered no JSON to capture from", retryable=True) from None
        try:
            return capture(document, spec, earlier)
        except KeyError as missing:
            if "default" not in spec.model_fields_set:
                raise TargetError(f"{what}: {missing.args[0]!r} is not in the answer of {url}", retryable=False) from None
            return spec.default
        except ValueError as wrong:
            raise TargetError(f"{what}: {wrong}", retryable=False) from None

    async def _already_restored(
        self, check: Check, applied: AppliedAction, captured: Mapping[str, Any], after: Mapping[str, Any], used: dict[str, str]
    ) -> bool:
        """The undo's precondition: False if the object still holds what the change left (undo it),
        True if it holds what the undo puts back (a retried undo: done). Anything else refuses."""
        response = await self._send(check.as_request(), "the undo's check", None, captured, after, used=used)
        try:
            found = resolve(response.json(), check.pointer)
        except ValueError:
            raise TargetError(f"{self.name}: the undo's check: {check.url} answered no JSON", retryable=False) from None
        except KeyError:
            if "default" not in check.model_fields_set:
                found = _MISSING
            else:
                found = check.default
        if found == fill(check.equals, captured, after):
            return False
        if "restored" in check.model_fields_set and found == fill(check.restored, captured, after):
            return True
        since = STAGE_NAMES.get(applied.stage, applied.stage)
        changed = "is gone" if found is _MISSING else "changed"
        raise TargetError(f"restore refused: {check.pointer} {changed} since the {since}; {check.reason} — undo by hand", retryable=False)

    async def _send(
        self,
        request: HttpRequest | Read,
        what: str,
        key: str | None,
        captured: Mapping[str, Any],
        after: Mapping[str, Any] | None = None,
        *,
        used: dict[str, str],
    ) -> httpx.Response:
        """Expand secrets (references only, from the targets file and the runbook, never a filled
        value), then fill in captured values (data, never expanded), then send. Errors keep
        references, not values; `used` collects value -> reference for scrubbing."""
        url = self.url(fill(request.url, captured, after))
        shown = f"{request.method} {url}"
        own = self._same_origin(url)
        try:
            defaults = self.config.headers if own else {}  # the operator's references: trusted
            headers = {name: self.secrets.expand(value, f"header {name} of {what}", used) for name, value in defaults.items()}
            for name, value in request.headers.items():
                if Secrets.references(value) and not own:
                    raise TargetError(
                        f"{self.name}: header {name} of {what}: a secret reference goes only to {self.base_url}, not to {url}",
                        retryable=False,
                    )
                headers[name] = fill(self.secrets.expand(value, f"header {name} of {what}", used, step=True), captured, after)
        except SecretUnavailable as missing:
            raise TargetError(str(missing), retryable=False) from None
        if key is not None:
            headers["Idempotency-Key"] = key
        body = fill(request.body, captured, after)
        content_type = next((value for name, value in headers.items() if name.lower() == "content-type"), None)
        if body is not None and content_type is None:
            headers["Content-Type"] = "application/json"
        content = None if body is None else (body if isinstance(body, str) else json.dumps(body))
        verify = tls_verification(str(self._ca_file) if self._ca_file else None)
        try:
            async with httpx.AsyncClient(timeout=self.config.timeout_seconds, verify=verify, transport=self._transport) as client:
                response = await client.request(request.method, url, headers=headers, content=content)
        except httpx.HTTPError as exc:
            raise TargetError(scrub(f"{self.name}: {shown} failed: {type(exc).__name__}: {exc}", used), retryable=True) from None
        if response.status_code in request.expect:
            return response
        retryable = response.status_code >= 500 or response.status_code in RETRYABLE_STATUSES
        message = scrub(_server_message(response), used)
        raise TargetError(
            f"{self.name}: {shown} answered HTTP {response.status_code} (expected {request.expect}): {message}", retryable=retryable
        )

    @staticmethod
    def _record(response: httpx.Response, used: Mapping[str, str], limit: int | None = RESPONSE_LIMIT) -> dict[str, Any]:
        text = response.text
        try:
            answer: Any = response.json() if text.strip() else None
        except ValueError:
            answer = text
        if limit is not None and len(json.dumps(answer)) > limit:
            answer = {"truncated": text[:limit]}
        return {"status": response.status_code, "response": scrub(answer, used)}


_MISSING = object()


def held_object(step: HttpStep) -> str:
    """What a step protects, for holds: its `hold` name, else its change request as rendered."""
    if step.hold:
        return step.hold
    return f"{step.method} {step.url} {json.dumps(step.body, sort_keys=True)}"


# --- captures survive retries: the activity's heartbeat, or carried by the workflow -----------


def _remembered(key: str) -> dict[str, Any] | None:
    if activity.in_activity():
        for detail in activity.info().heartbeat_details:
            if isinstance(detail, dict) and detail.get("http_captured_for") == key:
                return dict(detail.get("captured") or {})
    carried = carried_captures.get()
    if carried is not None and carried[0] == key:
        return dict(carried[1])
    return None


def _remember(key: str, captured: dict[str, Any]) -> None:
    if captured and activity.in_activity():
        activity.heartbeat({"http_captured_for": key, "captured": captured})
