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

Secrets: headers and URLs may say `${VAR}` (the environment, else the target's secrets file)
or `${file:path}`; they are read only while the request is sent. The action in history, what
is recorded as applied (`result`, `inverse`) and every error keep the reference, never the value.

Idempotency: the request carries `Idempotency-Key` (the undo its undo key); a transient failure
(connection, timeout, 408, 429, 5xx) is retried by Temporal with the same key, and the server is
expected to honour it. Anything else unexpected fails at once with the server's message.

State the undo needs: `before` reads run first and `capture` values from their JSON answers
(RFC 6901 pointers) for `{before.NAME}` in the body and the undo — the percent a canary had,
the pod template a Deployment ran. Captures are kept in the activity's heartbeat, so a retry
after the change went through undoes to what was there before it, not to the change itself.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from temporalio import activity

from stanch.models import ActionSpec, AppliedAction, ProbeResult
from stanch.secret_refs import SecretUnavailable
from stanch.targets.base import ApplyResult, JobStatus, PlannedCall, TargetError
from stanch.targets.config import Secrets

RETRYABLE_STATUSES = {408, 429}
RESPONSE_LIMIT = 4000  # characters of a response kept in the record
PLACEHOLDER = re.compile(r"\{before\.([A-Za-z0-9_]+)\}")
JsonPointer = Annotated[str, Field(pattern=r"^(/.*)?$", description="RFC 6901: '' is the whole document, /a/0/b~1c a path")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpRequest(_Strict):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    expect: list[int] = Field(default_factory=lambda: [200, 201, 202, 204], min_length=1)


def _pointer_shorthand(value: Any) -> Any:
    return {"pointer": value} if isinstance(value, str) else value


class Capture(_Strict):
    """A value of a read's answer: at `pointer`; or, with `rank_by`, from the list at `pointer`
    the item ranked `index` by that number (0 = highest), then `value` inside it minus `drop`."""

    pointer: JsonPointer = ""
    rank_by: JsonPointer | None = None
    index: int = Field(0, ge=0)
    value: JsonPointer = ""
    drop: list[JsonPointer] = Field(default_factory=list)
    default: Any = Field(None, description="used when the pointer finds nothing (unset: a missing value fails the step)")


class Read(_Strict):
    method: Literal["GET", "POST"] = "GET"
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    expect: list[int] = Field(default_factory=lambda: [200], min_length=1)
    capture: dict[str, Annotated[Capture, BeforeValidator(_pointer_shorthand)]] = Field(min_length=1)


class HttpStep(HttpRequest):
    before: list[Read] = Field(default_factory=list)
    undo: HttpRequest | None = None

    @model_validator(mode="after")
    def _placeholders_are_captured(self) -> HttpStep:
        captured = [name for read in self.before for name in read.capture]
        if len(captured) != len(set(captured)):
            raise ValueError(f"before captures {captured}: each name once")
        wanted = set(PLACEHOLDER.findall(json.dumps([self.model_dump(exclude={"before"})], default=str)))
        missing = sorted(wanted - set(captured))
        if missing:
            raise ValueError(f"{', '.join('{before.' + name + '}' for name in missing)} used but no `before` read captures it")
        return self


# --- JSON pointers and placeholders ------------------------------------------------------


def resolve(document: Any, pointer: str) -> Any:
    """RFC 6901; KeyError names the first part that is not there."""
    value = document
    for part in pointer.split("/")[1:] if pointer else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(part)
    return value


def _without(value: Any, pointer: str) -> Any:
    parent_pointer, _, last = pointer.rpartition("/")
    try:
        parent = resolve(value, parent_pointer)
    except KeyError:
        return value
    last = last.replace("~1", "/").replace("~0", "~")
    if isinstance(parent, dict):
        parent.pop(last, None)
    return value


def capture(document: Any, spec: Capture) -> Any:
    found = resolve(document, spec.pointer)
    if spec.rank_by is not None:
        ranked = []
        for item in found if isinstance(found, list) else []:
            try:
                ranked.append((float(resolve(item, spec.rank_by)), item))
            except (KeyError, TypeError, ValueError):
                continue  # an item without a rank is not a candidate (kubectl skips such ReplicaSets)
        ranked.sort(key=lambda pair: pair[0], reverse=True)
        if spec.index >= len(ranked):
            raise KeyError(f"item {spec.index} by {spec.rank_by} (only {len(ranked)} ranked)")
        found = resolve(ranked[spec.index][1], spec.value)
    found = json.loads(json.dumps(found))  # a copy: drop must not edit the answer
    for pointer in spec.drop:
        found = _without(found, pointer)
    return found


def fill(value: Any, captured: Mapping[str, Any]) -> Any:
    """`{before.NAME}` alone in a string becomes the captured JSON value; inside text, its text."""
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole:
            return captured[whole.group(1)]
        return PLACEHOLDER.sub(lambda m: _text(captured[m.group(1)]), value)
    if isinstance(value, list):
        return [fill(item, captured) for item in value]
    if isinstance(value, dict):
        return {key: fill(item, captured) for key, item in value.items()}
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def scrub(value: Any, used: Mapping[str, str]) -> Any:
    """Every secret value that was sent, replaced by the reference that named it."""
    if isinstance(value, str):
        for secret, reference in used.items():
            value = value.replace(secret, reference)
        return value
    if isinstance(value, list):
        return [scrub(item, used) for item in value]
    if isinstance(value, dict):
        return {key: scrub(item, used) for key, item in value.items()}
    return value


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


class HttpTarget:
    """Any HTTP control plane: LiteLLM, Kubernetes, Argo Rollouts, KServe, an internal API."""

    kind: ClassVar[str] = "http"

    class Config(_Strict):
        """`http:` in targets.yaml. Header values and URLs may use ${VAR} and ${file:path}."""

        base_url: str = Field(pattern=r"^https?://", description="relative step URLs are joined to it")
        headers: dict[str, str] = Field(default_factory=dict, description="sent with every request to base_url's host")
        secrets_file: Path | None = Field(None, description="NAME=value lines for ${NAME}; relative to the targets file")
        ca_file: Path | None = Field(None, description="CA bundle to trust (a cluster's ca.crt); relative to the targets file")
        timeout_seconds: float = Field(10.0, gt=0)
        state_url: str | None = Field(None, description="GET for the evidence snapshot; {model} is filled in")

    def __init__(self, config: Config, *, name: str, base: Path, env: Mapping[str, str], transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.name = name
        self.base_url = config.base_url.rstrip("/")
        self.secrets = Secrets(f"target {name}", base=base, env=env, secrets_file=config.secrets_file)
        self._ca_file = None if config.ca_file is None else (config.ca_file if config.ca_file.is_absolute() else base / config.ca_file)
        self._transport = transport

    @classmethod
    def from_config(cls, config: Config, *, name: str, base: Path, env: Mapping[str, str]) -> HttpTarget:
        return cls(config, name=name, base=base, env=env)

    # --- the Target protocol ---

    async def apply(self, model: str, action: ActionSpec, idempotency_key: str, incident_id: str) -> ApplyResult:
        step = self.step(action)
        captured = _remembered(idempotency_key)
        if captured is None:
            captured = {}
            for number, read in enumerate(step.before):
                captured.update(await self._capture(read, f"before[{number}]"))
            _remember(idempotency_key, captured)
        response, used = await self._send(step, "the step", idempotency_key, captured)
        result = {"request": f"{step.method} {self.url(fill(step.url, captured))}", **self._record(response, used)}
        if captured:
            result["captured"] = scrub(captured, used)
        inverse = {"request": step.undo.model_dump(mode="json"), "captured": scrub(captured, used)} if step.undo else None
        return ApplyResult(result=result, inverse=inverse, replayed=response.headers.get("idempotent-replayed", "").lower() == "true")

    async def undo(self, applied: AppliedAction, undo_key: str) -> ApplyResult:
        inverse = applied.inverse or {}
        if "request" not in inverse:
            raise TargetError(f"{applied.kind} on target {self.name} declared no undo request: nothing to send", retryable=False)
        request = HttpRequest.model_validate(inverse["request"])
        captured = inverse.get("captured") or {}
        response, used = await self._send(request, "the undo", undo_key, captured)
        return ApplyResult(result={"request": f"{request.method} {self.url(fill(request.url, captured))}", **self._record(response, used)})

    def plan(self, model: str, action: ActionSpec, idempotency_key: str) -> list[PlannedCall]:
        step = self.step(action)
        calls = [
            self._planned(read, f"reads {', '.join('{before.' + name + '}' for name in read.capture)}")
            for read in step.before
        ]
        undo = [self._planned(step.undo, f"undo: {step.undo.method} {step.undo.url}")] if step.undo else []
        main = self._planned(step, action.description or f"{step.method} {step.url}")
        return [*calls, main.model_copy(update={"undo": undo})]

    async def state(self, model: str) -> dict[str, Any]:
        if not self.config.state_url:
            raise TargetError(f"target {self.name} (generic HTTP) has no state_url: nothing to snapshot", retryable=False)
        read = HttpRequest(method="GET", url=self.config.state_url.replace("{model}", model), expect=[200])
        response, used = await self._send(read, "the state read", None, {})
        return {"target": self.name, **self._record(response, used, limit=None)}

    async def probe(self, model: str, prompt: str, version: str | None = None) -> ProbeResult:
        raise TargetError(
            f"target {self.name} (generic HTTP) cannot answer prompts: keep a probe-capable target (the gateway) as the "
            f"runbook's target and name {self.name} on the steps that act on it",
            retryable=False,
        )

    async def start_job(self, model: str, kind: str, params: dict[str, Any], idempotency_key: str) -> JobStatus:
        raise TargetError(f"target {self.name} (generic HTTP) runs no jobs: a fine-tune needs a gateway target", retryable=False)

    async def job_status(self, job_id: str) -> JobStatus:
        raise TargetError(f"target {self.name} (generic HTTP) runs no jobs", retryable=False)

    # --- the step, its URLs and requests ---

    def step(self, action: ActionSpec) -> HttpStep:
        if action.kind != "http":
            raise TargetError(f"target {self.name} is generic HTTP: it runs `kind: http` steps, not {action.kind!r}", retryable=False)
        try:
            return HttpStep.model_validate(action.params)
        except ValidationError as exc:
            problems = "; ".join(
                f"params.{'.'.join(str(p) for p in e['loc']) or '(step)'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
            )
            raise TargetError(f"http step for target {self.name}: {problems}", retryable=False) from None

    def url(self, url: str) -> str:
        return url if url.startswith(("http://", "https://")) else f"{self.base_url}/{url.lstrip('/')}"

    def _same_origin(self, url: str) -> bool:
        ours, theirs = urlsplit(self.base_url), urlsplit(url)
        return (ours.scheme, ours.netloc) == (theirs.scheme, theirs.netloc)

    def _planned(self, request: HttpRequest | Read, operation: str) -> PlannedCall:
        return PlannedCall(target=self.name, adapter=self.kind, operation=operation, method=request.method, url=self.url(request.url), body=request.body)

    async def _capture(self, read: Read, where: str) -> dict[str, Any]:
        response, _ = await self._send(read, where, None, {})
        try:
            document = response.json()
        except ValueError:
            raise TargetError(f"{where} of target {self.name}: {read.url} answered no JSON to capture from", retryable=True) from None
        values: dict[str, Any] = {}
        for name, spec in read.capture.items():
            try:
                values[name] = capture(document, spec)
            except KeyError as missing:
                if "default" not in spec.model_fields_set:
                    raise TargetError(
                        f"{where} of target {self.name}: capture {name}: {missing.args[0]!r} is not in the answer of {read.url}",
                        retryable=False,
                    ) from None
                values[name] = spec.default
        return values

    async def _send(self, request: HttpRequest | Read, what: str, key: str | None, captured: Mapping[str, Any]) -> tuple[httpx.Response, dict[str, str]]:
        """Expand secrets (references only, from the runbook and targets file), then fill in
        captured values (data, never expanded), then send. Errors keep references, not values."""
        used: dict[str, str] = {}
        shown = f"{request.method} {self.url(fill(request.url, captured))}"
        try:
            url = self.url(fill(self.secrets.expand(request.url, f"url of {what}", used), captured))
            defaults = self.config.headers if self._same_origin(url) else {}
            headers = {
                name: fill(self.secrets.expand(value, f"header {name} of {what}", used), captured)
                for name, value in {**defaults, **request.headers}.items()
            }
        except SecretUnavailable as missing:
            raise TargetError(str(missing), retryable=False) from None
        if key is not None:
            headers["Idempotency-Key"] = key
        body = fill(request.body, captured)
        content_type = next((value for name, value in headers.items() if name.lower() == "content-type"), None)
        if body is not None and content_type is None:
            headers["Content-Type"] = "application/json"
        content = None if body is None else (body if isinstance(body, str) else json.dumps(body))
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(self._ca_file)) if self._ca_file else True
        try:
            async with httpx.AsyncClient(timeout=self.config.timeout_seconds, verify=verify, transport=self._transport) as client:
                response = await client.request(request.method, url, headers=headers, content=content)
        except httpx.HTTPError as exc:
            raise TargetError(scrub(f"{self.name}: {shown} failed: {type(exc).__name__}: {exc}", used), retryable=True) from None
        if response.status_code in request.expect:
            return response, used
        retryable = response.status_code >= 500 or response.status_code in RETRYABLE_STATUSES
        message = scrub(_server_message(response), used)
        raise TargetError(f"{self.name}: {shown} answered HTTP {response.status_code} (expected {request.expect}): {message}", retryable=retryable)

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


# --- captures survive retries in the activity's heartbeat ---------------------------------


def _remembered(key: str) -> dict[str, Any] | None:
    if not activity.in_activity():
        return None
    for detail in activity.info().heartbeat_details:
        if isinstance(detail, dict) and detail.get("http_captured_for") == key:
            return dict(detail.get("captured") or {})
    return None


def _remember(key: str, captured: dict[str, Any]) -> None:
    if captured and activity.in_activity():
        activity.heartbeat({"http_captured_for": key, "captured": captured})
