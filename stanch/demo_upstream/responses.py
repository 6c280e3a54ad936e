"""OpenAI response shapes: completions, streamed chunks (server-sent events) and errors."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse

from stanch.demo_upstream.conversation import Reply

WORDS_PER_CHUNK = 3
CHUNK_PAUSE_S = 0.01  # long enough that a proxy really receives the answer piece by piece
_WORD = re.compile(r"\S+\s*")


def openai_error(status: int, message: str, *, code: str | None = None, param: str | None = None, kind: str | None = None) -> JSONResponse:
    kinds = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error", 500: "server_error"}
    error = {"message": message, "type": kind or kinds.get(status, "invalid_request_error"), "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status)


def count_tokens(text: str) -> int:
    # Whitespace words: a rough count, but the same for the prompt and the answer.
    return len(text.split())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def _tool_calls(reply: Reply) -> list[dict[str, Any]]:
    return [
        {"id": f"call_{secrets.token_hex(8)}", "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        for call in reply.tool_calls
    ]


def _reply_tokens(reply: Reply) -> int:
    return count_tokens(reply.content or "") + sum(count_tokens(call.arguments) + 1 for call in reply.tool_calls)


def chat_completion_body(model: str, replies: list[Reply], prompt_tokens: int) -> dict[str, Any]:
    choices = []
    for index, reply in enumerate(replies):
        message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
        if reply.tool_calls:
            message["tool_calls"] = _tool_calls(reply)
        choices.append({"index": index, "message": message, "logprobs": None, "finish_reason": reply.finish_reason})
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_stanch_demo",
        "choices": choices,
        "usage": usage(prompt_tokens, sum(_reply_tokens(reply) for reply in replies)),
    }


def text_pieces(text: str) -> list[str]:
    """The answer in pieces of a few words, whitespace kept, so the pieces join back exactly."""
    words = _WORD.findall(text)
    leading = text[: len(text) - len(text.lstrip())]
    pieces = ["".join(words[i : i + WORDS_PER_CHUNK]) for i in range(0, len(words), WORDS_PER_CHUNK)]
    if pieces:
        pieces[0] = leading + pieces[0]
    return pieces or ([text] if text else [])


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


async def chat_completion_stream(model: str, replies: list[Reply], prompt_tokens: int, include_usage: bool) -> AsyncIterator[bytes]:
    """`chat.completion.chunk` events: the role, the answer a few words at a time, the finish
    reason, the usage if asked (its own chunk with empty choices), then `[DONE]`."""
    head = {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_stanch_demo",
    }
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return _sse({**head, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra})

    for index, reply in enumerate(replies):
        yield chunk(index, {"role": "assistant", "content": "" if reply.content is not None else None, "refusal": None})
        for piece in text_pieces(reply.content or ""):
            await asyncio.sleep(CHUNK_PAUSE_S)
            yield chunk(index, {"content": piece})
        for position, call in enumerate(_tool_calls(reply)):
            yield chunk(index, {"tool_calls": [{"index": position, **call}]})
        yield chunk(index, {}, reply.finish_reason)
    if include_usage:
        yield _sse({**head, "choices": [], "usage": usage(prompt_tokens, sum(_reply_tokens(reply) for reply in replies))})
    yield _sse("[DONE]")


def completion_body(model: str, texts: list[str], prompt_tokens: int) -> dict[str, Any]:
    return {
        "id": f"cmpl-{secrets.token_hex(12)}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_stanch_demo",
        "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": "stop"} for index, text in enumerate(texts)],
        "usage": usage(prompt_tokens, sum(count_tokens(text) for text in texts)),
    }


async def completion_stream(model: str, texts: list[str], prompt_tokens: int, include_usage: bool) -> AsyncIterator[bytes]:
    head = {
        "id": f"cmpl-{secrets.token_hex(12)}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_stanch_demo",
    }
    extra = {"usage": None} if include_usage else {}
    for index, text in enumerate(texts):
        for piece in text_pieces(text):
            await asyncio.sleep(CHUNK_PAUSE_S)
            yield _sse({**head, "choices": [{"index": index, "text": piece, "logprobs": None, "finish_reason": None}], **extra})
        yield _sse({**head, "choices": [{"index": index, "text": "", "logprobs": None, "finish_reason": "stop"}], **extra})
    if include_usage:
        yield _sse({**head, "choices": [], "usage": usage(prompt_tokens, sum(count_tokens(text) for text in texts))})
    yield _sse("[DONE]")
