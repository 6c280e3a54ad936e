"""One OpenAI chat completions request, and what the model (or what stands in front of it) answered.

`POST {base_url}/chat/completions` with the conversation, `n` samples, a temperature and
optionally `max_tokens`, `seed` and the tools offered with the conversation (`tools`, with
`tool_choice: "auto"`: the model decides whether to call one, as it would for a user).

Many OpenAI-compatible servers ignore `n` (Ollama, some llama.cpp builds) and answer one
choice: the missing samples are asked for again, one request at a time; a server that
refuses `n` outright (HTTP 400/422) is asked one sample at a time.

What comes back is one `ChatAnswer` per sample:
- HTTP 200: the choice's text — its `content` (a string, or content parts), its `refusal`, and
  its tool calls written out as `tool call name(arguments)`: when a model answers with a tool
  call its content is null, and the arguments are what a detector must see.
- a deliberate refusal: an OpenAI error body (`{"error": {"code", "message"}}`) whose code says
  content was blocked or a feature is off, or which names the incident that refused it
  (`error.incident`, the Stanch gateway's containment). Every sample the request asked for is
  refused alike.
Anything else is a `ProbeFailed`: retryable when asking again later can help (a timeout, a lost
connection, HTTP 5xx, 408, 429, a body that is not JSON), not retryable otherwise (401, 404 for
an unknown model, 400 for a malformed request: retrying sends the same thing).
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel

from stanch.config.network import tls_verification
from stanch.probe.endpoint import ChatEndpoint

# Error codes that mean "refused on purpose": the gateway's containment, OpenAI's and Azure's
# content filters. An error naming an incident is a refusal whatever its code.
REFUSAL_CODES = frozenset({"content_blocked", "feature_disabled", "endpoint_restricted", "content_filter", "content_policy_violation"})
# 408 and 429 are the client-side statuses where asking again later can succeed.
RETRYABLE_CLIENT_STATUSES = frozenset({408, 429})
# Statuses where a server may be refusing `n` itself rather than the conversation.
N_REFUSED_STATUSES = frozenset({400, 422})
VERSION_HEADER = "x-model-version"


class ProbeFailed(Exception):
    """The endpoint could not be asked, or answered with something that is not an answer.

    `retryable` says whether asking again later can help; confirm and verify let Temporal retry
    those, and record the rest as what kept the probe from deciding."""

    def __init__(self, message: str, *, retryable: bool, status_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code  # the HTTP status, when the endpoint answered at all
        self.code = code  # the OpenAI-style error code it gave, if any (`model_not_found`)


class ChatAnswer(BaseModel):
    """One sample: what the model said, or that the request was refused."""

    status_code: int
    output: str = ""
    model_version: str | None = None  # the `x-model-version` header, else the body's `model`
    refusal_code: str | None = None
    refusal_incident: str | None = None
    refusal_message: str | None = None

    @property
    def refused(self) -> bool:
        return self.status_code != 200


class ChatRequest(BaseModel):
    """What is asked: the conversation and how to sample it."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = []  # OpenAI tool definitions; none: the body has no `tools`
    samples: int = 1
    temperature: float = 0.0
    max_tokens: int | None = None
    seed: int | None = None

    def body(self, model: str, n: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": self.messages, "temperature": self.temperature}
        if self.tools:
            body["tools"] = self.tools
            body["tool_choice"] = "auto"
        if n > 1:
            body["n"] = n
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.seed is not None:
            body["seed"] = self.seed
        return body


def message_text(message: dict[str, Any]) -> str:
    """Everything a detector must read in an assistant message: content, refusal, tool calls."""
    parts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
        parts += [part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)]
    if isinstance(message.get("refusal"), str):
        parts.append(message["refusal"])
    calls = [call.get("function") for call in message.get("tool_calls") or [] if isinstance(call, dict)]
    if isinstance(message.get("function_call"), dict):  # the deprecated single function call
        calls.append(message["function_call"])
    for function in calls:
        if isinstance(function, dict):
            parts.append(f"tool call {function.get('name')}({function.get('arguments') or ''})")
    return "\n".join(part for part in parts if part)


def _error_fields(body: Any) -> tuple[str | None, str, str | None]:
    """(code, message, incident) of an OpenAI error body; FastAPI's `detail` and plain bodies too."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = error.get("code") or error.get("type")
            incident = error.get("incident")
            return (
                str(code) if code is not None else None,
                str(error.get("message") or ""),
                str(incident) if incident else None,
            )
        if isinstance(error, str):
            return None, error, None
        if isinstance(body.get("detail"), str):
            return None, body["detail"], None
    return None, str(body)[:300], None


async def _send(client: httpx.AsyncClient, endpoint: ChatEndpoint, body: dict[str, Any], headers: dict[str, str]) -> list[ChatAnswer]:
    """One request; the answers it holds (one per choice, or one refusal)."""
    where = endpoint.describe()
    try:
        response = await client.post(endpoint.url, json=body, headers={**endpoint.headers, **headers})
    except httpx.TimeoutException as exc:
        raise ProbeFailed(f"{where} did not answer within {endpoint.timeout_seconds:g}s", retryable=True) from exc
    except httpx.HTTPError as exc:
        raise ProbeFailed(f"{where} unreachable: {type(exc).__name__}: {exc}", retryable=True) from exc
    try:
        payload = response.json()
    except ValueError:
        payload = None
    status = response.status_code
    if status >= 400:
        code, message, incident = _error_fields(payload if payload is not None else response.text.strip())
        if incident or code in REFUSAL_CODES:
            refusal = ChatAnswer(
                status_code=status,
                model_version=response.headers.get(VERSION_HEADER),
                refusal_code=code,
                refusal_incident=incident,
                refusal_message=message,
            )
            return [refusal]
        retryable = status >= 500 or status in RETRYABLE_CLIENT_STATUSES
        detail = message or response.reason_phrase
        raise ProbeFailed(
            f"{where} answered HTTP {status}{f' {code}' if code else ''}: {detail}", retryable=retryable, status_code=status, code=code
        )
    if not isinstance(payload, dict):
        # Never the body itself in the message: it may be a model's answer, and this message is
        # recorded (history, the gate's verdict).
        raise ProbeFailed(f"{where} answered HTTP {status} with what is not a JSON object", retryable=True, status_code=status)
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ProbeFailed(
            f"{where} answered HTTP {status} without choices: not an OpenAI chat completion", retryable=False, status_code=status
        )
    version = response.headers.get(VERSION_HEADER) or (str(payload["model"]) if payload.get("model") else None)
    answers: list[ChatAnswer] = []
    for choice in choices:
        said = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(said, dict):
            raise ProbeFailed(
                f"{where} answered a choice without a message: not an OpenAI chat completion", retryable=False, status_code=status
            )
        answers.append(ChatAnswer(status_code=status, output=message_text(said), model_version=version))
    return answers


async def ask(endpoint: ChatEndpoint, request: ChatRequest, headers: dict[str, str] | None = None) -> list[ChatAnswer]:
    """`request.samples` answers to the conversation; raises ProbeFailed (see the module docstring)."""
    extra = headers or {}
    answers: list[ChatAnswer] = []
    use_n = request.samples > 1
    # A client per probe: activities may run on different event loops.
    async with httpx.AsyncClient(timeout=endpoint.timeout_seconds, verify=tls_verification()) as client:
        while len(answers) < request.samples:
            wanted = request.samples - len(answers)
            asked = wanted if use_n else 1
            try:
                got = await _send(client, endpoint, request.body(endpoint.model, asked), extra)
            except ProbeFailed as failure:
                if not (use_n and wanted > 1 and failure.status_code in N_REFUSED_STATUSES):
                    raise
                use_n = False  # the server will not sample n at once: ask one at a time
                continue
            if got[0].refused:
                got = got * asked  # the request was refused, and with it every sample it asked for
            answers += got[:asked]
    return answers
