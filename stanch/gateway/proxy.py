"""Forwarding to the upstream that serves a request, whole or streamed, through the output guard.

Any OpenAI-compatible server is an upstream: vLLM, Ollama, llama.cpp, LiteLLM, TGI, KServe,
OpenAI, Azure OpenAI. The body goes on as the client sent it but for the model name (the
upstream's own) and a system-prompt hotfix; the answer comes back under the gateway's model
name with `x-model-version`. A streamed answer is re-chunked: only text the guard has checked
leaves, and a block mid-stream ends the stream with `finish_reason: content_filter` and the
refusal, never with the harmful bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse

from stanch.gateway.enforcement import OutputGuard, Refusal
from stanch.gateway.routing import Route
from stanch.gateway.upstreams import UpstreamsError, secret_value

# Answer fields holding generated text, per route: chat messages, legacy completions.
TEXT_FIELD = {"chat": "content", "completions": "text"}


@dataclass
class Outcome:
    """What one forwarded request came to: answered, refused (by an output protection),
    upstream_rejected (a 4xx the upstream gave) or upstream_error (5xx, timeout, unreachable)."""

    outcome: str = "answered"
    refusal: Refusal | None = None
    upstream_seconds: float | None = None
    # What an answered request served the user (after guardrails), and what the user asked:
    # the metrics watch it for leaks no block is in place for yet.
    served_text: str = ""
    prompt: str = ""


Report = Callable[[Outcome], None]


def ignore(_: Outcome) -> None:
    """A report for traffic that is not counted (Stanch's own probes)."""
    pass


def _upstream_status(status: int) -> str:
    return "answered" if status < 400 else "upstream_rejected" if status < 500 else "upstream_error"


def refusal_response(refusal: Refusal, version: str | None = None) -> JSONResponse:
    headers = {"x-model-version": version} if version else None
    return JSONResponse(refusal.body(), status_code=refusal.status_code, headers=headers)


def _upstream_headers(route: Route, incident: str | None) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    key = secret_value(route.api_key)
    if key:
        headers["authorization"] = f"Bearer {key}"
    if incident:
        headers["x-stanch-incident"] = incident
    return headers


def _upstream_failure(route: Route, exc: Exception) -> Refusal:
    if isinstance(exc, UpstreamsError):
        return Refusal(502, "upstream_misconfigured", f"Version {route.version} cannot be called: {exc}", None, "api_error")
    if isinstance(exc, httpx.TimeoutException):
        return Refusal(
            504,
            "upstream_timeout",
            f"The upstream of version {route.version} did not answer within {route.timeout_seconds:g} s.",
            None,
            "api_error",
        )
    return Refusal(
        502, "upstream_unavailable", f"The upstream of version {route.version} cannot be reached ({type(exc).__name__}).", None, "api_error"
    )


# Fields of a chat message that carry generated text besides `content`: a leak there is a leak.
REASONING_FIELDS = ("reasoning_content", "reasoning")


def _choice_text(choice: dict[str, Any], route_name: str) -> str:
    """Everything a choice says: content, reasoning, tool calls and a legacy function call."""
    if route_name != "chat":
        return str(choice.get("text") or "")
    message = choice.get("message") or choice.get("delta") or {}
    parts = [str(message.get(field) or "") for field in ("content", *REASONING_FIELDS)]
    calls = [call.get("function") or {} for call in message.get("tool_calls") or []]
    if isinstance(message.get("function_call"), dict):
        calls.append(message["function_call"])
    parts += [f"{call.get('name', '')}({call.get('arguments', '')})" for call in calls]
    return "\n".join(p for p in parts if p)


def _redact_choice(choice: dict[str, Any], route_name: str, guard: OutputGuard) -> None:
    """Guardrails apply to every field that carries text; token log-probabilities, which spell the
    answer out token by token, are left out while any output protection is in place."""
    if guard.protects_output:
        choice["logprobs"] = None
    if route_name != "chat":
        if isinstance(choice.get("text"), str):
            choice["text"] = guard.redact(choice["text"])
        return
    message = choice.get("message")
    if not isinstance(message, dict):
        return
    for field in ("content", *REASONING_FIELDS):
        if isinstance(message.get(field), str):
            message[field] = guard.redact(message[field])
    calls = [call.get("function") for call in message.get("tool_calls") or [] if isinstance(call, dict)]
    for function in [*calls, message.get("function_call")]:
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            function["arguments"] = guard.redact(function["arguments"])


async def forward(
    client: httpx.AsyncClient,
    route: Route,
    route_name: str,
    body: dict[str, Any],
    public_model: str,
    guard: OutputGuard | None,
    prompt: str,
    incident: str | None = None,
    report: Report = ignore,
) -> Response:
    """A whole (non-streamed) answer, checked and redacted. `guard` None: embeddings, no text out."""
    started = time.monotonic()
    try:
        upstream = await client.post(
            f"{route.base_url.rstrip('/')}/{_path(route_name)}",
            json={**body, "model": route.upstream_model},
            headers=_upstream_headers(route, incident),
            timeout=route.timeout_seconds,
        )
    except (httpx.HTTPError, UpstreamsError) as exc:
        failure = _upstream_failure(route, exc)
        report(Outcome("upstream_error", failure))
        return refusal_response(failure, route.version)
    outcome = Outcome(_upstream_status(upstream.status_code), upstream_seconds=time.monotonic() - started)
    headers = {"x-model-version": route.version}
    try:
        answer = upstream.json()
    except ValueError:
        report(Outcome("upstream_error", upstream_seconds=outcome.upstream_seconds))
        return JSONResponse(
            Refusal(
                502,
                "upstream_bad_answer",
                f"The upstream of version {route.version} answered HTTP {upstream.status_code} with no JSON.",
                None,
                "api_error",
            ).body(),
            status_code=502,
            headers=headers,
        )
    if upstream.status_code >= 400 or not isinstance(answer, dict):
        report(outcome)
        return JSONResponse(answer, status_code=upstream.status_code, headers=headers)
    answer["model"] = public_model
    if guard is not None:
        for choice in answer.get("choices") or []:
            refusal = await guard.check(_choice_text(choice, route_name), prompt)
            if refusal:
                report(Outcome("refused", refusal, outcome.upstream_seconds))
                return refusal_response(refusal, route.version)
            _redact_choice(choice, route_name, guard)
        outcome.served_text = "\n".join(_choice_text(choice, route_name) for choice in answer.get("choices") or [])
        outcome.prompt = prompt
    report(outcome)
    return JSONResponse(answer, headers=headers)


def _path(route_name: str) -> str:
    return {"chat": "chat/completions", "completions": "completions", "embeddings": "embeddings"}[route_name]


async def forward_stream(
    client: httpx.AsyncClient,
    route: Route,
    route_name: str,
    body: dict[str, Any],
    public_model: str,
    guard: OutputGuard,
    prompt: str,
    incident: str | None = None,
    report: Report = ignore,
) -> Response:
    """A streamed answer: the upstream's status decides before the first byte; then `guarded`."""
    started = time.monotonic()
    request = client.build_request(
        "POST",
        f"{route.base_url.rstrip('/')}/{_path(route_name)}",
        json={**body, "model": route.upstream_model},
        headers=_upstream_headers(route, incident),
        timeout=route.timeout_seconds,
    )
    try:
        upstream = await client.send(request, stream=True)
    except (httpx.HTTPError, UpstreamsError) as exc:
        failure = _upstream_failure(route, exc)
        report(Outcome("upstream_error", failure))
        return refusal_response(failure, route.version)
    if upstream.status_code >= 400:
        content = await upstream.aread()
        await upstream.aclose()
        report(Outcome(_upstream_status(upstream.status_code), upstream_seconds=time.monotonic() - started))
        return Response(
            content, status_code=upstream.status_code, media_type="application/json", headers={"x-model-version": route.version}
        )
    stream = GuardedStream(
        guard,
        route_name,
        public_model,
        prompt,
        lambda outcome, refusal: report(Outcome(outcome, refusal, time.monotonic() - started, "\n".join(stream.served), prompt)),
    )
    return StreamingResponse(
        stream.relay(upstream), media_type="text/event-stream", headers={"x-model-version": route.version, "cache-control": "no-cache"}
    )


class GuardedStream:
    """Re-chunks an upstream's server-sent events so only checked text leaves, per choice."""

    def __init__(
        self, guard: OutputGuard, route_name: str, public_model: str, prompt: str, ended: Callable[[str, Refusal | None], None]
    ) -> None:
        self.guard, self.route_name, self.public_model, self.prompt = guard, route_name, public_model, prompt
        self.ended = ended  # called once, when the stream ends: its outcome, and the refusal that ended it
        self.refusal: Refusal | None = None
        self.outcome = "answered"
        self.field = TEXT_FIELD[route_name]
        self.received: dict[int, str] = {}  # per choice index: the raw text so far
        self.sent: dict[int, int] = {}  # per choice index: how much of the redacted text went out
        self.tool_calls: dict[int, list[dict[str, Any]]] = {}  # held whole until the answer is checked
        self.template: dict[str, Any] = {}
        self.stopped = False  # a block ended the stream
        self.served: list[str] = []  # per finished choice: the text and tool calls the user was sent

    async def relay(self, upstream: httpx.Response) -> AsyncIterator[bytes]:
        try:
            async for line in upstream.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk:  # the upstream gave up mid-answer: say so, as it did
                    self.outcome = "upstream_error"
                    yield self._event({"error": chunk["error"]})
                    yield b"data: [DONE]\n\n"
                    return
                self.template = {k: chunk[k] for k in ("id", "object", "created", "system_fingerprint") if k in chunk}
                for out in await self._take(chunk):
                    yield out
                if self.stopped:
                    return
            for out in await self._finish():
                yield out
        except httpx.HTTPError as exc:  # the connection broke mid-answer: what was held back stays unsent
            self.outcome = "upstream_error"
            failure = Refusal(502, "upstream_unavailable", f"The upstream broke off its answer ({type(exc).__name__}).", None, "api_error")
            yield self._event(failure.body())
            yield b"data: [DONE]\n\n"
        finally:
            await upstream.aclose()
            self.ended(self.outcome, self.refusal)

    async def _take(self, chunk: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        finished: list[tuple[int, str]] = []
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index", 0))
            delta = choice.get("delta") if self.route_name == "chat" else choice
            delta = delta if isinstance(delta, dict) else {}
            self.received[index] = self.received.get(index, "") + str(delta.get(self.field) or "")
            for call in delta.get("tool_calls") or []:
                self._merge_tool_call(index, call)
            refusal = self.guard.check_now(self.received[index], self.prompt)
            if refusal:
                return self._stop(index, refusal)
            out += self._release(index, self.guard.releasable(self.guard.redact(self.received[index]), self.sent.get(index, 0)))
            if choice.get("finish_reason"):
                finished.append((index, choice["finish_reason"]))
        for index, reason in finished:
            end = await self._end_choice(index, reason)
            if self.stopped:
                return end
            out += end
        if chunk.get("usage") and not chunk.get("choices"):
            out.append(self._event({**self.template, "model": self.public_model, "choices": [], "usage": chunk["usage"]}))
        return out

    async def _end_choice(self, index: int, reason: str) -> list[bytes]:
        text = self.received.get(index, "")
        calls = self.tool_calls.pop(index, [])
        whole = "\n".join([text] + [f"{c['function']['name']}({c['function']['arguments']})" for c in calls])
        refusal = await self.guard.check(whole, self.prompt)
        if refusal:
            return self._stop(index, refusal)
        out = self._release(index, len(self.guard.redact(text)))
        self.served.append(self.guard.redact(whole))
        if calls:
            for call in calls:
                call["function"]["arguments"] = self.guard.redact(call["function"]["arguments"])
            out.append(self._chunk(index, {"tool_calls": calls}, None))
        out.append(self._chunk(index, {}, reason))
        self.received.pop(index, None)
        return out

    async def _finish(self) -> list[bytes]:
        out: list[bytes] = []
        for index in list(self.received):  # an upstream that ended without a finish_reason
            out += await self._end_choice(index, "stop")
            if self.stopped:
                return out
        return [*out, b"data: [DONE]\n\n"]

    def _release(self, index: int, upto: int) -> list[bytes]:
        redacted = self.guard.redact(self.received.get(index, ""))
        start = self.sent.get(index, 0)
        if upto <= start:
            return []
        self.sent[index] = upto
        return [self._chunk(index, {self.field: redacted[start:upto]}, None)]

    def _stop(self, index: int, refusal: Refusal) -> list[bytes]:
        self.stopped, self.refusal, self.outcome = True, refusal, "refused"
        notice = {self.field: f"\n[{refusal.message}]"} if self.route_name == "chat" else {"text": f"\n[{refusal.message}]"}
        return [self._chunk(index, notice, "content_filter"), self._event(refusal.body()), b"data: [DONE]\n\n"]

    def _merge_tool_call(self, index: int, call: dict[str, Any]) -> None:
        calls = self.tool_calls.setdefault(index, [])
        position = int(call.get("index", 0))
        while len(calls) <= position:
            calls.append({"index": len(calls), "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        held = calls[position]
        held["id"] = call.get("id") or held["id"]
        function = call.get("function") or {}
        held["function"]["name"] += function.get("name") or ""
        held["function"]["arguments"] += function.get("arguments") or ""

    def _chunk(self, index: int, delta: dict[str, Any], finish_reason: str | None) -> bytes:
        if self.route_name == "chat":
            choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": delta.get("text", ""), "finish_reason": finish_reason}
        obj = "chat.completion.chunk" if self.route_name == "chat" else "text_completion"
        return self._event({"object": obj, **self.template, "model": self.public_model, "choices": [choice]})

    @staticmethod
    def _event(payload: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()
