"""Server-sent events for the board: framing, change detection, errors, keep-alives, and the
two routes over real HTTP (uvicorn on loopback) with a fake Temporal client."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import UTC, datetime

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException
from temporalio.service import RPCError, RPCStatusCode

from stanch.api import incidents
from stanch.api.deps import TemporalUnavailable, get_client
from stanch.api.events import (
    KEEP_ALIVE,
    events_router,
    frame,
    poll_stream,
    stop_streams,
)
from stanch.models.actions import TargetRef
from stanch.models.incident import IncidentState, IncidentStatus, fresh_stages
from stanch.models.signals import Severity
from stanch.trust.responders import ResponderAuth, RespondersFile, StaticToken, token_sha256

# --- framing -----------------------------------------------------------------------------


def test_a_frame_names_its_event_and_carries_compact_json_on_one_data_line():
    text = frame("state", {"id": "x", "stages": [1, 2]})
    assert text == 'event: state\ndata: {"id":"x","stages":[1,2]}\n\n'


def test_a_multiline_payload_gets_one_data_field_per_line():
    assert frame("error", "first\r\nsecond\nthird") == "event: error\ndata: first\ndata: second\ndata: third\n\n"


def parse(frames: list[str]) -> list[tuple[str, object]]:
    """The events a browser's parser would see; comments come out as ("comment", text)."""
    events = []
    for text in frames:
        assert text.endswith("\n\n"), text
        if text.startswith(":"):
            events.append(("comment", text[1:].strip()))
            continue
        lines = text.strip("\n").split("\n")
        name = lines[0].removeprefix("event: ")
        data = "\n".join(line.removeprefix("data: ") for line in lines[1:])
        events.append((name, json.loads(data)))
    return events


# --- change detection with fakes ------------------------------------------------------------


class Script:
    """Reads that return (or raise) the given values in turn; a fake clock that the fake
    sleep advances; disconnects after the last read."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.reads = 0
        self.now = 0.0
        self.slept: list[float] = []

    async def read(self) -> object:
        outcome = self.outcomes[self.reads]
        self.reads += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def is_disconnected(self) -> bool:
        return self.reads >= len(self.outcomes)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def run(self, interval: float = 1.0, keep_alive: float = 15.0) -> list[tuple[str, object]]:
        stream = poll_stream(
            self.read,
            self.is_disconnected,
            event="state",
            interval=interval,
            keep_alive=keep_alive,
            clock=lambda: self.now,
            sleep=self.sleep,
        )
        return parse([text async for text in stream])


async def test_only_changes_are_sent_and_the_stream_ends_when_the_client_leaves():
    script = Script({"v": 1}, {"v": 1}, {"v": 2}, {"v": 2}, {"v": 1})
    assert await script.run() == [("state", {"v": 1}), ("state", {"v": 2}), ("state", {"v": 1})]
    assert script.reads == 5 and script.slept == [1.0] * 5


async def test_a_quiet_stream_sends_a_keep_alive_comment_every_interval():
    script = Script(*([{"v": 1}] * 8))
    events = await script.run(interval=1.0, keep_alive=3.0)
    assert events == [("state", {"v": 1}), ("comment", "keep-alive"), ("comment", "keep-alive")]
    assert KEEP_ALIVE == ": keep-alive\n\n"


async def test_temporal_away_is_reported_once_and_the_stream_recovers_by_resending():
    away = TemporalUnavailable("cannot reach Temporal at 127.0.0.1:7233")
    rpc = RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")
    script = Script({"v": 1}, away, away, rpc, {"v": 1}, HTTPException(503, detail="no worker answered"), {"v": 1})
    assert await script.run() == [
        ("state", {"v": 1}),
        ("error", {"detail": "cannot reach Temporal at 127.0.0.1:7233"}),
        ("error", {"detail": "Temporal answered UNAVAILABLE: connection refused"}),
        ("state", {"v": 1}),  # unchanged, but the board must hear the problem is over
        ("error", {"detail": "no worker answered"}),
        ("state", {"v": 1}),
    ]


async def test_an_unexpected_failure_is_an_error_event_too_not_the_end_of_the_stream():
    script = Script(ValueError("boom"), {"v": 1})
    assert await script.run() == [("error", {"detail": "ValueError: boom"}), ("state", {"v": 1})]


async def test_models_and_datetimes_are_sent_as_the_api_would_answer_them():
    summary = incidents.IncidentSummary(id="a", severity=Severity.high, opened_at=datetime(2026, 11, 5, 12, 0, tzinfo=UTC))
    events = await Script([summary]).run()
    assert events == [("state", [{**json.loads(summary.model_dump_json())}])]


# --- the routes over real HTTP, with a fake Temporal client --------------------------------


def state(status: IncidentStatus = IncidentStatus.containing) -> IncidentState:
    return IncidentState(
        id="inc-1", status=status, severity=Severity.high, runbook="harmful-output", runbook_sha256="0" * 64,
        target=TargetRef(adapter="gateway", model="support-bot"), dedup_key="k", opened_at=datetime(2026, 11, 5, tzinfo=UTC),
        stages=fresh_stages(),
    )  # fmt: skip


class FakeHandle:
    def __init__(self, client: FakeClient, incident_id: str) -> None:
        self.client, self.incident_id = client, incident_id

    async def query(self, name, *, result_type, rpc_timeout):
        assert name == "state" and result_type is IncidentState
        if self.incident_id != "inc-1":
            raise RPCError("workflow not found", RPCStatusCode.NOT_FOUND, b"")
        self.client.queries += 1
        return self.client.states[min(self.client.queries - 1, len(self.client.states) - 1)]


class FakeClient:
    __hash__ = object.__hash__

    def __init__(self, *states: IncidentState) -> None:
        self.states = list(states)
        self.queries = 0
        self.list_queries: list[str] = []

    def get_workflow_handle(self, incident_id, run_id=None):
        return FakeHandle(self, incident_id)

    async def list_workflows(self, query, limit):
        self.list_queries.append(query)
        for _ in ():
            yield


@pytest.fixture
async def serve(monkeypatch):
    """Start an app with the events routes on a free loopback port; yield its URL."""
    monkeypatch.setattr("stanch.api.events.STATE_INTERVAL_S", 0.05)
    monkeypatch.setattr("stanch.api.events.LIST_INTERVAL_S", 0.05)
    servers, apps = [], {}

    async def start(fake: FakeClient, responders: ResponderAuth | None = None) -> str:
        app = apps[fake] = FastAPI()
        app.state.responders = responders or ResponderAuth.insecure()
        app.include_router(incidents.router)
        app.include_router(events_router)
        app.dependency_overrides[get_client] = lambda: fake
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
        servers.append((server, asyncio.create_task(server.serve())))
        while not server.started:
            await asyncio.sleep(0.01)
        return f"http://127.0.0.1:{port}"

    start.apps = apps
    yield start
    for server, task in servers:
        server.should_exit = True
        # The streams ended when their clients left: shutdown has nothing to wait for.
        await asyncio.wait_for(task, 5)


async def read_events(response: httpx.Response, count: int) -> list[tuple[str, object]]:
    frames, buffer = [], ""
    async for chunk in response.aiter_text():
        buffer += chunk
        while "\n\n" in buffer and len(frames) < count:
            text, buffer = buffer.split("\n\n", 1)
            frames.append(text + "\n\n")
        if len(frames) >= count:
            return parse(frames)
    raise AssertionError(f"the stream ended after {frames}")


async def test_the_incident_stream_sends_each_new_state_once(serve):
    fake = FakeClient(state(), state(), state(), state(IncidentStatus.rolling_back))
    url = await serve(fake)
    async with httpx.AsyncClient(timeout=10) as http, http.stream("GET", f"{url}/v1/incidents/inc-1/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"].startswith("no-cache")
        events = await asyncio.wait_for(read_events(response, 2), 10)
    assert [(name, data["status"]) for name, data in events] == [("state", "containing"), ("state", "rolling_back")]
    assert events[0][1] == json.loads(state().model_dump_json())
    assert fake.queries >= 4  # one existence check, then polls


async def test_an_unknown_incident_is_a_404_not_a_stream(serve):
    url = await serve(FakeClient(state()))
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(f"{url}/v1/incidents/nope/events")
    assert answer.status_code == 404 and "nope" in answer.json()["detail"]


async def test_the_list_stream_takes_the_list_filters_and_sends_the_list(serve):
    fake = FakeClient(state())
    url = await serve(fake)
    params = {"status": "containing", "severity": "high", "runbook": "harmful-output", "target": "gateway:support-bot"}
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream("GET", f"{url}/v1/events", params=params) as response:
            assert response.status_code == 200
            assert await asyncio.wait_for(read_events(response, 1), 10) == [("incidents", [])]
        refused = await http.get(f"{url}/v1/events", params={"severity": "apocalyptic"})
    assert fake.list_queries[0] == incidents.visibility_query(
        IncidentStatus.containing, Severity.high, "harmful-output", "gateway:support-bot"
    )
    assert refused.status_code == 422  # the same validation as GET /v1/incidents


async def test_streams_need_what_reading_incidents_needs_a_token_unless_insecure_dev(serve):
    token = StaticToken(user="alice", roles=["oncall"], token_sha256=token_sha256("alice-token"))
    url = await serve(FakeClient(state()), ResponderAuth(RespondersFile(tokens=[token])))
    async with httpx.AsyncClient(timeout=10) as http:
        for path in ("/v1/events", "/v1/incidents/inc-1/events"):
            missing = await http.get(f"{url}{path}")
            assert missing.status_code == 401 and "Authorization" in missing.json()["detail"]
            forged = await http.get(f"{url}{path}", headers={"Authorization": "Bearer nope"})
            assert forged.status_code == 401 and forged.json()["detail"] == "unknown token"
        async with http.stream("GET", f"{url}/v1/incidents/inc-1/events", headers={"Authorization": "Bearer alice-token"}) as response:
            assert response.status_code == 200
            assert [name for name, _ in await asyncio.wait_for(read_events(response, 1), 10)] == ["state"]


def test_the_list_stream_accepts_exactly_the_query_parameters_of_the_list():
    app = FastAPI()
    app.include_router(incidents.router)
    app.include_router(events_router)
    paths = app.openapi()["paths"]
    listed = {p["name"] for p in paths["/v1/incidents"]["get"]["parameters"] if p["in"] == "query"}
    streamed = {p["name"] for p in paths["/v1/events"]["get"]["parameters"] if p["in"] == "query"}
    assert streamed == listed and {"status", "severity", "runbook", "target"} <= listed


async def test_stop_streams_ends_the_open_streams_so_the_server_can_stop(serve):
    fake = FakeClient(state())
    url = await serve(fake)
    async with httpx.AsyncClient(timeout=10) as http, http.stream("GET", f"{url}/v1/incidents/inc-1/events") as response:
        chunks = response.aiter_text()
        text = ""
        while "\n\n" not in text:
            text += await anext(chunks)
        stop_streams(serve.apps[fake])

        async def rest() -> str:
            return "".join([chunk async for chunk in chunks])

        await asyncio.wait_for(rest(), 5)  # the stream ends: no hanging on to the connection
    assert text.startswith("event: state\n")


async def test_a_stream_ends_when_its_token_stops_being_valid_and_says_why(serve):
    token = StaticToken(user="alice", roles=["oncall"], token_sha256=token_sha256("alice-token"))
    auth = ResponderAuth(RespondersFile(tokens=[token]))
    url = await serve(FakeClient(state()), auth)
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream("GET", f"{url}/v1/incidents/inc-1/events", headers={"Authorization": "Bearer alice-token"}) as response:
            chunks = response.aiter_text()
            text = ""
            while "\n\n" not in text:
                text += await anext(chunks)
            auth.config.tokens.clear()  # revoked (a JWT expiring takes the same path)

            async def rest() -> str:
                return "".join([chunk async for chunk in chunks])

            tail = await asyncio.wait_for(rest(), 5)
        assert parse([tail]) == [("error", {"detail": "signed out: unknown token"})]
        again = await http.get(f"{url}/v1/incidents/inc-1/events", headers={"Authorization": "Bearer alice-token"})
    assert again.status_code == 401
