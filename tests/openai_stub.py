"""A minimal OpenAI-compatible upstream for gateway tests: each model answers a fixed text (or
tool call), streamed in small chunks when asked, and every request it received is kept.

Test scaffolding, not a model: the demo models live in `stanch demo-upstream`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


@dataclass
class Stub:
    answers: dict[str, str] = field(default_factory=dict)  # upstream model -> its answer
    tool_calls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # upstream model -> tool calls it makes
    message_extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # upstream model -> more message fields
    choice_extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # upstream model -> more choice fields (logprobs)
    stream_errors: dict[str, dict[str, Any]] = field(default_factory=dict)  # upstream model -> an error event sent mid-stream
    received: list[dict[str, Any]] = field(default_factory=list)
    chunk_chars: int = 8

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            self.received.append({"path": "chat", "body": body, "headers": dict(request.headers)})
            return self._answer(body, "chat")

        @app.post("/v1/completions")
        async def completions(request: Request) -> Any:
            body = await request.json()
            self.received.append({"path": "completions", "body": body, "headers": dict(request.headers)})
            return self._answer(body, "completions")

        @app.post("/v1/embeddings")
        async def embeddings(request: Request) -> Any:
            body = await request.json()
            self.received.append({"path": "embeddings", "body": body, "headers": dict(request.headers)})
            return {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}], "model": body["model"]}

        return app

    def _answer(self, body: dict[str, Any], route: str) -> Any:
        model = body["model"]
        if model not in self.answers:
            error = {"error": {"message": f"no model {model}", "type": "invalid_request_error", "code": "model_not_found"}}
            return JSONResponse(error, status_code=404)
        text, calls = self.answers[model], self.tool_calls.get(model, [])
        if body.get("stream"):
            return StreamingResponse(self._chunks(model, text, calls, route), media_type="text/event-stream")
        if route == "completions":
            return {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
            }
        message: dict[str, Any] = {"role": "assistant", "content": text or None, **self.message_extra.get(model, {})}
        if calls:
            message["tool_calls"] = calls
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop", **self.choice_extra.get(model, {})}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def _chunks(self, model: str, text: str, calls: list[dict[str, Any]], route: str) -> Iterator[str]:
        def event(choice: dict[str, Any]) -> str:
            obj = "chat.completion.chunk" if route == "chat" else "text_completion"
            return f"data: {json.dumps({'id': 'chunk-1', 'object': obj, 'created': 0, 'model': model, 'choices': [choice]})}\n\n"

        for start in range(0, len(text), self.chunk_chars):
            if start and model in self.stream_errors:
                yield f"data: {json.dumps({'error': self.stream_errors[model]})}\n\n"
                return
            piece = text[start : start + self.chunk_chars]
            yield event(
                {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                if route == "chat"
                else {"index": 0, "text": piece, "finish_reason": None}
            )
        for position, call in enumerate(calls):
            yield event({"index": 0, "delta": {"tool_calls": [{"index": position, **call}]}, "finish_reason": None})
        yield event(
            {"index": 0, "delta": {}, "finish_reason": "tool_calls" if calls else "stop"}
            if route == "chat"
            else {"index": 0, "text": "", "finish_reason": "stop"}
        )
        yield "data: [DONE]\n\n"


def main() -> None:
    """Serve a stub as its own process: `python -m tests.openai_stub --port P --answers '{"m": "text"}'`."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--answers", required=True, help="JSON object: upstream model -> its answer")
    args = parser.parse_args()
    uvicorn.run(Stub(answers=json.loads(args.answers)).app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
