"""Board event streams are capped: per user, in all, and in how long one lasts. Real HTTP
(uvicorn on loopback) against the events routes with a fake Temporal client, as in
test_events."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from stanch.api.events import LIFETIME_OVER, StreamLimits, stream_limits
from stanch.config.settings import Settings
from stanch.trust.responders import ResponderAuth, RespondersFile, StaticToken, token_sha256
from tests.unit.test_events import FakeClient, read_events, serve, state

__all__ = ["serve"]  # the fixture, used by name below

USERS = ("alice", "bob")


def tokens() -> ResponderAuth:
    return ResponderAuth(
        RespondersFile(tokens=[StaticToken(user=user, roles=["oncall"], token_sha256=token_sha256(f"{user}-token")) for user in USERS])
    )


def as_user(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {user}-token"}


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_each_user_and_the_api_have_a_cap_and_a_429_names_it(serve) -> None:
    fake = FakeClient(state())
    url = await serve(fake, tokens())
    limits = serve.apps[fake].state.stream_limits = StreamLimits(per_user=2, total=3)
    path = f"{url}/v1/incidents/inc-1/events"
    async with httpx.AsyncClient(timeout=10) as http:
        first = await http.send(http.build_request("GET", path, headers=as_user("alice")), stream=True)
        second = await http.send(http.build_request("GET", f"{url}/v1/events", headers=as_user("alice")), stream=True)
        assert (first.status_code, second.status_code) == (200, 200)

        third = await http.get(path, headers=as_user("alice"))
        assert third.status_code == 429 and third.headers["Retry-After"]
        assert third.json()["detail"].startswith("user 'alice' already has 2 board event streams open, the most one user may hold")

        bobs = await http.send(http.build_request("GET", path, headers=as_user("bob")), stream=True)
        assert bobs.status_code == 200  # bob has his own cap; the API now holds its 3
        crowded = await http.get(path, headers=as_user("bob"))
        assert crowded.status_code == 429
        assert crowded.json()["detail"].startswith("the API already serves 3 board event streams, the most it serves at once")

        # A board tab closed gives its place back.
        await first.aclose()
        await until(lambda: limits.open["user 'alice'"] == 1)
        again = await http.send(http.build_request("GET", path, headers=as_user("alice")), stream=True)
        assert again.status_code == 200
        assert [name for name, _ in await asyncio.wait_for(read_events(again, 1), 10)] == ["state"]
        for response in (second, bobs, again):
            await response.aclose()
    await until(lambda: not limits.open)


async def test_a_stream_ends_after_its_maximum_lifetime_saying_so_and_frees_its_place(serve) -> None:
    fake = FakeClient(state())
    url = await serve(fake)
    limits = serve.apps[fake].state.stream_limits = StreamLimits(per_user=1, total=1, max_seconds=0.3)
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream("GET", f"{url}/v1/incidents/inc-1/events") as response:
            assert response.status_code == 200

            async def whole() -> str:
                return "".join([chunk async for chunk in response.aiter_text()])

            text = await asyncio.wait_for(whole(), 5)  # ends on its own: the server closed it
        assert text.startswith("event: state\n") and text.endswith(LIFETIME_OVER)
        await until(lambda: not limits.open)
        # The board reconnects, and gets in: the one place is free again.
        async with http.stream("GET", f"{url}/v1/incidents/inc-1/events") as response:
            assert response.status_code == 200


async def test_without_a_token_the_client_address_is_the_user(serve) -> None:
    fake = FakeClient(state())
    url = await serve(fake)  # --insecure-dev: nobody claimed
    serve.apps[fake].state.stream_limits = StreamLimits(per_user=1, total=5)
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream("GET", f"{url}/v1/events") as response:
            assert response.status_code == 200
            refused = await http.get(f"{url}/v1/events")
    assert refused.status_code == 429 and refused.json()["detail"].startswith("client 127.0.0.1 already has 1 board event streams open")


def test_the_caps_come_from_the_settings(tmp_path: Path) -> None:
    app = FastAPI()
    app.state.settings = Settings(home=tmp_path, board_streams_per_user=3, board_streams_total=30, board_stream_max_seconds=60)
    limits = stream_limits(app)
    assert (limits.per_user, limits.total, limits.max_seconds) == (3, 30, 60)
    assert stream_limits(app) is limits
    env = {"STANCH_BOARD_STREAMS_PER_USER": "2", "STANCH_BOARD_STREAMS_TOTAL": "20", "STANCH_BOARD_STREAM_MAX_SECONDS": "120"}
    settings = Settings.from_env(env)
    assert (settings.board_streams_per_user, settings.board_streams_total, settings.board_stream_max_seconds) == (2, 20, 120)


@pytest.mark.parametrize("extra", [0, 1])
def test_releasing_twice_gives_back_one_place(extra: int) -> None:
    limits = StreamLimits(per_user=2, total=2)
    release = limits.acquire("user 'alice'")
    for _ in range(1 + extra):
        release()
    assert not limits.open
