"""The codec server refuses an oversized body before reading it: a Content-Length over the limit
is a 413 at once, and a body without one is cut off at the limit."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from fastapi.testclient import TestClient
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads
from temporalio.contrib.pydantic import pydantic_data_converter

from stanch.temporal import codec_server
from stanch.temporal.codec import EncryptionCodec, parse_encryption_keys
from stanch.temporal.codec_server import create_codec_app
from stanch.trust.responders import ResponderAuth

KEY = "k1:" + base64.b64encode(b"1" * 32).decode()
LIMIT = 10_000
CHUNK = 1_000


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(codec_server, "MAX_BODY_BYTES", LIMIT)
    return create_codec_app(EncryptionCodec(parse_encryption_keys(KEY)), ResponderAuth.insecure())


def call(app, chunks: int, content_length: int | None) -> tuple[list[dict[str, Any]], int]:
    """POST /decode straight through ASGI; returns what was sent back and how many body bytes
    the app asked for."""
    pending = [{"type": "http.request", "body": b"x" * CHUNK, "more_body": n < chunks - 1} for n in range(chunks)]
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        if not pending:
            await asyncio.sleep(3600)  # a client that keeps the connection open
        message = pending.pop(0)
        read += len(message["body"])
        return message

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/decode",
        "raw_path": b"/decode",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8400),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    return sent, read


def detail(sent: list[dict[str, Any]]) -> str:
    import json

    return json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))["detail"]


def test_a_content_length_over_the_limit_is_413_without_reading_the_body(app) -> None:
    sent, read = call(app, chunks=100, content_length=100 * CHUNK)
    assert sent[0]["status"] == 413
    assert read == 0
    assert detail(sent) == f"the body is {100 * CHUNK} bytes; the codec server's limit is {LIMIT} bytes: ask for fewer payloads at once"


def test_a_body_without_content_length_is_cut_off_at_the_limit(app) -> None:
    sent, read = call(app, chunks=100, content_length=None)
    assert sent[0]["status"] == 413
    assert read <= LIMIT + CHUNK
    assert detail(sent) == f"the body is over the codec server's limit of {LIMIT} bytes: ask for fewer payloads at once"


def test_a_body_within_the_limit_is_decoded(app) -> None:
    payloads = pydantic_data_converter.payload_converter.to_payloads(["hello"])
    body = json_format.MessageToJson(Payloads(payloads=payloads))
    assert len(body) < LIMIT
    answer = TestClient(app).post("/decode", content=body)
    assert answer.status_code == 200
