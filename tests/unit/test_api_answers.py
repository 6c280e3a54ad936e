"""The answers that are not 202: 413 over 1 MiB (with and without Content-Length), 404 for an
unknown source naming the known ones, 422 naming the field, and a 500 without a traceback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stanch.api.answers import MAX_BODY_BYTES, BodySizeLimit
from stanch.api.app import create_app
from stanch.api.deps import get_intake
from stanch.config.settings import Settings
from stanch.intake.start import IntakeResult
from stanch.models.signals import Signal


class NoCatalog:
    def __len__(self) -> int:
        return 0


class Intake:
    def __init__(self, error: Exception | None = None) -> None:
        self.recorded: list[Signal] = []
        self.error = error

    async def __call__(self, signal: Signal) -> IntakeResult:
        if self.error:
            raise self.error
        self.recorded.append(signal)
        return IntakeResult(incident_id="inc-1", runbook="harmful-output", dedup_key="k")


def client(tmp_path: Path, intake: Intake) -> TestClient:
    app = create_app(Settings(home=tmp_path, runbooks_dir=tmp_path), catalog=NoCatalog(), insecure_dev=True)  # type: ignore[arg-type]
    app.dependency_overrides[get_intake] = lambda: intake
    return TestClient(app, raise_server_exceptions=False)


def test_a_body_over_1_mib_is_413_whether_or_not_content_length_says_so(tmp_path: Path) -> None:
    intake = Intake()
    http = client(tmp_path, intake)
    oversized = b'{"signal_id": "s-1", "description": "' + b"x" * MAX_BODY_BYTES + b'"}'

    declared = http.post("/v1/alerts/generic", content=oversized, headers={"content-type": "application/json"})

    def chunks() -> Iterator[bytes]:
        yield oversized[: len(oversized) // 2]
        yield oversized[len(oversized) // 2 :]

    streamed = http.post("/v1/alerts/generic", content=chunks(), headers={"content-type": "application/json"})

    for answer in (declared, streamed):
        assert answer.status_code == 413
        assert answer.json()["detail"].startswith("request body is over the 1 MiB limit (1048576 bytes)")
        assert answer.headers["x-request-id"]
    assert "content-length" not in streamed.request.headers
    assert intake.recorded == []

    # At the limit exactly, the body goes through and is then judged on its content: here a
    # description over its own limit (stanch.intake.sources.limits), not a body over 1 MiB.
    fits = b'{"signal_id": "s-1", "description": "' + b"x" * (MAX_BODY_BYTES - 40) + b'"}'
    assert len(fits) <= MAX_BODY_BYTES
    judged = http.post("/v1/alerts/generic", content=fits, headers={"content-type": "application/json"})
    assert judged.status_code == 413
    assert judged.json()["detail"].startswith(f"generic: `description` is {MAX_BODY_BYTES - 40} bytes")
    assert intake.recorded == []


def test_the_limit_counts_bytes_across_many_chunks_and_never_calls_the_app() -> None:
    reached: list[bytes] = []

    async def app(scope, receive, send) -> None:
        reached.append((await receive())["body"])

    sent: list[dict] = []

    async def run(chunk_count: int) -> None:
        messages = [{"type": "http.request", "body": b"x" * 100, "more_body": i < chunk_count - 1} for i in range(chunk_count)]

        async def receive() -> dict:
            return messages.pop(0)

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/alerts/generic", "headers": []}
        await BodySizeLimit(app, limit=1000)(scope, receive, send)

    asyncio.run(run(11))  # 1,100 bytes in 11 chunks, no Content-Length
    assert reached == [] and sent[0]["status"] == 413
    asyncio.run(run(10))  # exactly 1,000: replayed to the app in one piece
    assert reached == [b"x" * 1000]


def test_an_unknown_source_is_404_naming_the_known_ones(tmp_path: Path) -> None:
    answer = client(tmp_path, Intake()).post("/v1/alerts/nagios", json={"host": "db1"})
    assert answer.status_code == 404
    detail = answer.json()["detail"]
    assert detail.startswith("no alert source 'nagios'; POST to /v1/alerts/<source> with one of: ")
    assert "alertmanager" in detail and "generic" in detail


def test_validation_errors_stay_422_naming_the_field(tmp_path: Path) -> None:
    http = client(tmp_path, Intake())
    bad_field = http.post("/v1/alerts/generic", json={"signal_id": "s-1", "severity_hint": "apocalyptic"})
    assert bad_field.status_code == 422
    assert bad_field.json()["detail"][0]["loc"] == ["body", "severity_hint"]
    not_json = http.post("/v1/alerts/generic", content=b"{not json", headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["detail"][0]["type"] == "json_invalid"


def test_a_bug_is_a_500_with_a_request_id_and_no_traceback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    http = client(tmp_path, Intake(error=KeyError("internal detail the sender must not see")))
    answer = http.post("/v1/alerts/generic", json={"signal_id": "s-1"}, headers={"X-Request-ID": "req-42"})
    assert answer.status_code == 500
    assert answer.json() == {"detail": "internal error; see the API log", "request_id": "req-42"}
    assert "Traceback" not in answer.text and "internal detail" not in answer.text
    assert any("req-42" in record.getMessage() for record in caplog.records)


def test_every_answer_carries_a_request_id_and_a_strange_one_is_replaced(tmp_path: Path) -> None:
    http = client(tmp_path, Intake())
    assert http.get("/healthz", headers={"X-Request-ID": "abc-1"}).headers["x-request-id"] == "abc-1"
    replaced = http.get("/healthz", headers={"X-Request-ID": "evil value; with spaces"}).headers["x-request-id"]
    assert len(replaced) == 32 and replaced.isalnum()
