"""The incident list with 1,000 incidents: `GET /v1/incidents` and the board, p50/p99.

    .venv/bin/python -m bench.incident_list [--incidents 1000] [--requests 50]

`--incidents` triage incidents are opened through Stanch's intake (`open_or_join`, each its own
dedup key) on a dev server started in this process, and simply started: no worker runs, so
each is exactly what intake made of it, a running workflow with the search attributes intake
gives it (status, runbook, target, opened-at). The real API runs as a subprocess
(`stanch api --insecure-dev`) and is asked over HTTP on loopback.

Measured `--requests` times each, taking turns with its baseline (the same load on both):

- `api_default`: `GET /v1/incidents` (its default limit, 100) — against `baseline_default`,
  a raw `client.list_workflows` with the same visibility query and limit, in this process;
- `api_all`: `GET /v1/incidents?limit=1000` — against `baseline_all` (limit 1000);
- `board`: what a browser loads to show the board's list: the page and its assets (at once,
  as a browser does), then in turn what main.js and list.js wait for (`/healthz`,
  `/v1/auth`, `/v1/me`, `/openapi.json`) and the first `event: incidents` of `/v1/events` —
  against `baseline_default` (the board shows the API's default limit).

Prints one JSON object: p50/p99 in milliseconds of each, the board's steps (p50), and
`ratio` (API over raw, p50).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
from temporalio.client import Client

from bench.intake_overhead import start_dev_server
from bench.intake_scale import send_all, stanch_sender, storm_signal
from stanch.api.incidents import visibility_query

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LIMIT = 100  # GET /v1/incidents without ?limit
ALL_LIMIT = 1000  # the most it takes
WHO = {"X-Stanch-User": "bench", "X-Stanch-Roles": "viewer"}
BOARD_ASSETS = ["board.css", "main.js", "api.js", "dom.js", "incident.js", "list.js", "signin.js", "favicon.svg"]
BOARD_CALLS = ["/healthz", "/v1/auth", "/v1/me", "/openapi.json"]
Loaded = TypeVar("Loaded")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_api(address: str, home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "TEMPORAL_ADDRESS": address, "STANCH_HOME": str(home)}
    logs = (home / "api.log").open("ab")
    api = subprocess.Popen(
        [sys.executable, "-m", "stanch", "api", "--port", str(port), "--insecure-dev"],
        env=env,
        cwd=REPO,
        stdout=logs,
        stderr=subprocess.STDOUT,
    )
    return api, f"http://127.0.0.1:{port}"


async def wait_until(what: str, ready: Callable[[], Awaitable[bool]], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await ready():
                return
        except (httpx.HTTPError, OSError):
            pass
        await asyncio.sleep(0.5)
    raise SystemExit(f"{what} within {timeout:.0f} s")


# --- what is timed ------------------------------------------------------------------------


def raw_list(client: Client, query: str, limit: int) -> Callable[[], Awaitable[int]]:
    async def read() -> int:
        return len([execution async for execution in client.list_workflows(query, limit=limit)])

    return read


def api_list(http: httpx.AsyncClient, limit: int | None) -> Callable[[], Awaitable[int]]:
    async def read() -> int:
        answer = await http.get("/v1/incidents", params={"limit": limit} if limit else None, headers=WHO)
        answer.raise_for_status()
        return len(answer.json())

    return read


def board_list(http: httpx.AsyncClient, steps: dict[str, list[float]]) -> Callable[[], Awaitable[int]]:
    """The board's list load; each step's milliseconds go to `steps`, to show where the time goes."""

    async def step(name: str, load: Awaitable[Loaded]) -> Loaded:
        started = time.perf_counter()
        result = await load
        steps.setdefault(name, []).append((time.perf_counter() - started) * 1000)
        return result

    async def page_and_assets() -> None:
        (await http.get("/board")).raise_for_status()
        for asset in await asyncio.gather(*(http.get(f"/board/assets/{name}") for name in BOARD_ASSETS)):
            asset.raise_for_status()

    async def call(path: str) -> None:
        (await http.get(path, headers=WHO)).raise_for_status()

    async def read() -> int:
        await step("page_and_assets", page_and_assets())
        for path in BOARD_CALLS:
            await step(path, call(path))
        return await step("/v1/events first incidents event", first_incidents_event(http))

    return read


async def first_incidents_event(http: httpx.AsyncClient) -> int:
    """Rows in the first `event: incidents` of the board's list stream."""
    async with http.stream("GET", "/v1/events", headers={**WHO, "Accept": "text/event-stream"}) as stream:
        stream.raise_for_status()
        event, data = "", []
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data.append(line.removeprefix("data:").strip())
            elif line == "" and event:
                if event == "incidents":
                    return len(json.loads("\n".join(data)))
                if event == "error":
                    raise SystemExit(f"the board's stream says: {' '.join(data)}")
                event, data = "", []
    raise SystemExit("the board's stream ended before its first incidents event")


Reader = tuple[str, Callable[[], Awaitable[int]], int]  # name, what to time, the rows it must list


async def interleaved(readers: list[Reader], requests: int) -> dict[str, dict]:
    """Each reader `requests` times, taking turns: a baseline and what it is compared with see
    the same load on the machine (the machine is shared; a slow minute hits both)."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in readers}
    for _ in range(requests):
        for name, read, rows in readers:
            started = time.perf_counter()
            got = await read()
            times[name].append((time.perf_counter() - started) * 1000)
            if got != rows:
                raise SystemExit(f"{name}: expected {rows} incidents in the list, got {got}")
    return {name: {"rows": rows, **percentiles(times[name])} for name, _, rows in readers}


def percentiles(times: list[float]) -> dict:
    times = sorted(times)
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[min(len(times) - 1, round(0.99 * (len(times) - 1)))], 2),
    }


# --- the benchmark ------------------------------------------------------------------------


async def open_incidents(client: Client, count: int) -> None:
    run = uuid.uuid4().hex[:8]
    ids: set[str] = set()
    # No worker polls this task queue: the incidents stay as intake started them.
    await send_all([storm_signal(n, count, run) for n in range(count)], stanch_sender(client, f"bench-list-{run}", ids), 8)
    if len(ids) != count:
        raise SystemExit(f"expected {count} incidents, intake opened {len(ids)}")


async def main(count: int, requests: int) -> dict:
    env = await start_dev_server()
    home = Path(tempfile.mkdtemp(prefix="stanch-bench-list-"))
    api = None
    try:
        client = env.client
        await open_incidents(client, count)
        query = visibility_query()
        await wait_until(f"visibility did not list {count} incidents", lambda: _listed(client, query, count))
        api, url = start_api(client.service_client.config.target_host, home)
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            await wait_until(f"the API did not answer /readyz (see {home / 'api.log'})", lambda: _ready(http))
            default_rows, all_rows = min(count, DEFAULT_LIMIT), min(count, ALL_LIMIT)
            steps: dict[str, list[float]] = {}
            default: list[Reader] = [
                ("baseline_default", raw_list(client, query, DEFAULT_LIMIT), default_rows),
                ("api_default", api_list(http, None), default_rows),
                ("board", board_list(http, steps), default_rows),
            ]
            all_: list[Reader] = [
                ("baseline_all", raw_list(client, query, ALL_LIMIT), all_rows),
                ("api_all", api_list(http, ALL_LIMIT), all_rows),
            ]
            await interleaved(default + all_, 2)  # warm up connections and caches
            steps.clear()
            measured = {**await interleaved(default, requests), **await interleaved(all_, requests)}
            board_steps = {name: percentiles(times)["p50_ms"] for name, times in steps.items()}
    finally:
        if api is not None:
            api.terminate()
            api.wait(20)
        await env.shutdown()

    def ratio(ours: str, baseline: str) -> float:
        return round(measured[ours]["p50_ms"] / measured[baseline]["p50_ms"], 3)

    return {
        "benchmark": "incident_list",
        "incidents": count,
        "requests": requests,
        "incidents_are": "started by intake, no worker running: search attributes as intake sets them",
        "baseline": "raw client.list_workflows with the API's visibility query and the same limit, in the bench process",
        "latency": measured,
        "board_steps_p50_ms": board_steps,
        "ratio": {
            "api_default": ratio("api_default", "baseline_default"),
            "api_all": ratio("api_all", "baseline_all"),
            "board": ratio("board", "baseline_default"),
        },
    }


async def _listed(client: Client, query: str, count: int) -> bool:
    return (await client.count_workflows(query)).count >= count


async def _ready(http: httpx.AsyncClient) -> bool:
    return (await http.get("/readyz")).status_code == 200


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=1000, help="incidents to open before measuring")
    parser.add_argument("--requests", type=int, default=50, help="timed requests of each kind")
    options = parser.parse_args()
    if options.incidents < 1 or options.requests < 1:
        parser.error("--incidents and --requests must be at least 1")
    print(json.dumps(asyncio.run(main(options.incidents, options.requests))), flush=True)
    os._exit(0)  # no interpreter teardown after a Temporal client: temporalio/sdk-python#300
