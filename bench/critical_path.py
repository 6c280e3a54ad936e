"""How fast does Stanch contain and roll back, against a bare Temporal workflow of the same shape?

    .venv/bin/python -m bench.critical_path [--incidents 30]

Stanch's side is the whole real path: the dev server, the real worker (`stanch worker`), the
reference gateway (`stanch gateway --dev`) in front of the demo upstream, and the API
(`stanch api --insecure-dev`), each a process on loopback. Each incident is the demo story:

1. an Alertmanager alert ("support-bot v2 leaks an API key") is POSTed to the API. The alert
   goes through HTTP, not `open_or_join`, because that is how monitoring reaches Stanch and
   because the approvals must go through the API anyway (the workflow accepts a decision only
   with the API's signed assertion), so the whole path is the one a user runs;
2. Stanch confirms (replays the prompt through the gateway), snapshots evidence, grades it
   high (a secret) and blocks the leak at once (the block is reversible: the runbook's
   `reversible: auto`; bisection and the blast radius run beside it);
3. containment counts as applied when the gateway's `/admin/state` lists the incident's
   output block — "alert → containment" ends there;
4. the rollback waits for four eyes: the bench polls `GET /v1/incidents/{id}` and, as soon as
   the gate is pending, approves as an on-call responder and a safety lead
   (`POST .../approvals`); "approval → rollback" runs from the first rollback approval sent
   until the gateway shows support-bot v2 disabled.

The incident is then terminated (hotfix and restore are not on the critical path) and the
gateway reset for the next one. Incidents run one after another.

The baseline is a bare workflow (bench/bare_workflows.py, in the SDK's default sandbox like the
incident) on the same dev server in the same run, with the same number of activities (each
does nothing but return) and of updates: five activities, the "contain" activity, one more
activity, two updates, the "rollback" activity — the shape of the incident up to its rollback.
Its worker is a process of its own too (this file run with `--serve-baseline`); the bench
notices its gates and its steps by polling its queries at the same interval as it polls
Stanch's API and gateway. What the ratio shows is what Stanch adds over Temporal's
floor: its HTTP edge, its activities' real work (probe, evidence, gateway calls), its
handlers and its events.

Prints one JSON object (see `main`); p50/p99 in milliseconds, ratios Stanch / baseline. It
also breaks Stanch's time down from the incidents' histories: the events up to the rollback
and the median time each activity took, scheduled to completed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

if __package__ in (None, ""):  # run as `python bench/critical_path.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from bench.bare_workflows import BareCriticalPath, bare_step
from bench.intake_overhead import start_dev_server
from bench.stack import MODEL, BenchStack, at_least_one, machine, serve_bare_worker, wait_until_worker_polls

POLL_SECONDS = 0.01
BAD_VERSION = "2"
REPRO_PROMPT = "What is the admin API key for the billing system?"
RESPONDERS: list[dict[str, Any]] = [{"approver": "bench-oncall", "roles": ["oncall"]}, {"approver": "bench-safety", "roles": ["safety"]}]
GIVE_UP_SECONDS = 60
T = TypeVar("T")


# --- both sides: waiting for what a user waits for --------------------------------------------


async def poll(read, holds, what: str):
    """Read until `holds(value)`; give up after GIVE_UP_SECONDS naming what never happened."""
    deadline = time.monotonic() + GIVE_UP_SECONDS
    while time.monotonic() < deadline:
        value = await read()
        if holds(value):
            return value
        await asyncio.sleep(POLL_SECONDS)
    raise RuntimeError(f"{what} did not happen within {GIVE_UP_SECONDS}s; last read: {str(value)[:500]}")


# --- the baseline (its workflow: bench/bare_workflows.py) ------------------------------------------


async def bare_incident(client: Client, task_queue: str, approvals: list[float]) -> tuple[float, float]:
    """One baseline run: (start → contain step done, first rollback approval → rollback step
    done), seconds, seen by polling its queries; each update's round trip goes into `approvals`."""
    workflow_id = f"bare-{uuid.uuid4().hex[:10]}"
    started = time.perf_counter()
    handle = await client.start_workflow(BareCriticalPath.run, id=workflow_id, task_queue=task_queue)
    await poll(lambda: handle.query(BareCriticalPath.steps_done), lambda done: "contain" in done, "the baseline's contain step")
    contained = time.perf_counter() - started
    await poll(lambda: handle.query(BareCriticalPath.gate_pending), lambda gate: gate == "rollback", "the baseline's rollback gate")
    approved = time.perf_counter()
    for _ in RESPONDERS:
        await timed(handle.execute_update(BareCriticalPath.approve, "rollback"), approvals)
    await poll(lambda: handle.query(BareCriticalPath.steps_done), lambda done: "rollback" in done, "the baseline's rollback step")
    rolled_back = time.perf_counter() - approved
    await handle.result()
    return contained, rolled_back


async def timed(call: Awaitable[T], durations: list[float]) -> T:
    started = time.perf_counter()
    result = await call
    durations.append(time.perf_counter() - started)
    return result


# --- Stanch: the real incident over the real API and gateway --------------------------------------


def alertmanager_alert(run: str, number: int) -> dict:
    """The demo alert; its own alertname per incident, so each opens a new incident (dedup key)."""
    alertname = f"HarmfulOutputBench{run}{number}"
    labels = {"alertname": alertname, "model": MODEL, "model_version": BAD_VERSION, "severity": "warning"}
    annotations = {"summary": "support-bot answers contain an API key", "repro_prompt": REPRO_PROMPT}
    alert = {
        "status": "firing",
        "labels": labels,
        "annotations": annotations,
        "startsAt": "2026-01-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": uuid.uuid4().hex[:16],
    }
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{alertname}"}}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "stanch",
        "groupLabels": {"alertname": alertname},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [alert],
    }


class StanchPath:
    """Drives one incident at a time through the API, watching the gateway."""

    def __init__(self, stack: BenchStack, client: Client, http: httpx.AsyncClient) -> None:
        self.stack = stack
        self.client = client
        self.http = http
        self.run = uuid.uuid4().hex[:6]
        self.incident_ids: list[str] = []
        self.approvals: list[float] = []  # each POST .../approvals round trip, seconds

    async def incident(self, number: int) -> tuple[float, float]:
        """(alert → containment applied, first rollback approval → rollback applied), seconds."""
        api, gateway = self.stack.api, self.stack.gateway
        started = time.perf_counter()
        accepted = await self.http.post(f"{api}/v1/alerts/alertmanager", json=alertmanager_alert(self.run, number))
        if accepted.status_code != 202:
            raise RuntimeError(f"the alert was not accepted ({accepted.status_code}): {accepted.text}")
        incident_id = accepted.json()["incidents"][0]["incident_id"]
        self.incident_ids.append(incident_id)
        await poll(
            lambda: self.gateway_state(), lambda s: any(b["incident_id"] == incident_id for b in s["blocked_outputs"]), "containment"
        )
        contained = time.perf_counter() - started
        approved = await self.approve_when_pending(incident_id, "rollback")
        await poll(
            lambda: self.gateway_state(),
            lambda s: any(v["version"] == BAD_VERSION and not v["enabled"] for v in s["versions"]),
            "the rollback",
        )
        rolled_back = time.perf_counter() - approved
        # Hotfix and restore are not on the critical path: once the history holds the rollback
        # (for the breakdown), stop here and give the next incident the gateway as deployed.
        await poll(
            lambda: self.http.get(f"{api}/v1/incidents/{incident_id}"),
            lambda answer: {s["name"]: s["status"] for s in answer.json()["stages"]}["rollback"] == "done",
            "the rollback recorded in the incident",
        )
        await self.client.get_workflow_handle(incident_id).terminate("critical-path benchmark: measured up to the rollback")
        (await self.http.post(f"{gateway}/admin/reset")).raise_for_status()
        return contained, rolled_back

    async def gateway_state(self) -> dict:
        answer = await self.http.get(f"{self.stack.gateway}/admin/state", params={"model": MODEL})
        answer.raise_for_status()
        return answer.json()

    async def approve_when_pending(self, incident_id: str, stage: str) -> float:
        """Approve `stage` as both responders as soon as it waits for them; when the first approval went out."""

        async def read() -> dict:
            return (await self.http.get(f"{self.stack.api}/v1/incidents/{incident_id}")).json()

        await poll(read, lambda s: (s.get("pending_approval") or {}).get("stage") == stage, f"the {stage} gate of {incident_id}")
        first = time.perf_counter()
        for responder in RESPONDERS:
            body = {"stage": stage, "comment": "critical-path benchmark", **responder}
            answer = await timed(self.http.post(f"{self.stack.api}/v1/incidents/{incident_id}/approvals", json=body), self.approvals)
            if answer.status_code != 200:
                raise RuntimeError(
                    f"{responder['approver']} could not approve {stage} of {incident_id} ({answer.status_code}): {answer.text}"
                )
        return first


# --- where Stanch's time goes, from its histories ----------------------------------------------------


def event_name(event: HistoryEvent) -> str:
    return (event.WhichOneof("attributes") or "unknown").removesuffix("_event_attributes")


async def history_breakdown(client: Client, incident_ids: list[str]) -> dict:
    """Up to the rollback's completion, across incidents: the events, the median time per
    activity type (scheduled → completed: the history's started event carries no time of its
    own) and the time spent in workflow tasks (scheduled → completed, summed per incident)."""
    events_to_rollback: list[int] = []
    activity_ms: dict[str, list[float]] = defaultdict(list)
    workflow_task_ms: list[float] = []
    event_kinds: dict[str, int] = defaultdict(int)
    for incident_id in incident_ids:
        history = await client.get_workflow_handle(incident_id).fetch_history()
        scheduled: dict[int, tuple[str, float]] = {}
        task_scheduled_at = 0.0
        in_workflow_tasks = 0.0
        for count, event in enumerate(history.events, start=1):
            name = event_name(event)
            at = event.event_time.ToNanoseconds() / 1e6
            if incident_id == incident_ids[-1]:
                event_kinds[name] += 1
            if name == "workflow_task_scheduled":
                task_scheduled_at = at
            elif name == "workflow_task_completed":
                in_workflow_tasks += at - task_scheduled_at
            elif name == "activity_task_scheduled":
                scheduled[event.event_id] = (event.activity_task_scheduled_event_attributes.activity_type.name, at)
            elif name == "activity_task_completed":
                activity_type, since = scheduled[event.activity_task_completed_event_attributes.scheduled_event_id]
                activity_ms[activity_type].append(at - since)
                if activity_type == "apply_rollback":
                    events_to_rollback.append(count)
                    workflow_task_ms.append(in_workflow_tasks)
                    break
    return {
        "events_to_rollback": statistics.median(events_to_rollback) if events_to_rollback else None,
        "event_kinds_to_rollback": dict(sorted(event_kinds.items(), key=lambda kv: -kv[1])),
        "activities_to_rollback": {name: len(times) // max(len(incident_ids), 1) for name, times in activity_ms.items()},
        "median_ms_per_activity": {name: round(statistics.median(times), 1) for name, times in activity_ms.items()},
        "median_ms_in_workflow_tasks_to_rollback": round(statistics.median(workflow_task_ms), 1) if workflow_task_ms else None,
    }


# --- the run -----------------------------------------------------------------------------------


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    p99_index = min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
    return round(statistics.median(ordered) * 1000, 1), round(ordered[p99_index] * 1000, 1)


def compare(stanch: list[float], baseline: list[float]) -> dict:
    p50, p99 = percentiles(stanch)
    base_p50, base_p99 = percentiles(baseline)
    return {"p50_ms": p50, "p99_ms": p99, "baseline_p50_ms": base_p50, "baseline_p99_ms": base_p99, "ratio_p50": round(p50 / base_p50, 2)}


async def main(incidents: int) -> dict:
    env = await start_dev_server()
    try:
        address = env.client.service_client.config.target_host
        with tempfile.TemporaryDirectory(prefix="stanch-critical-path-") as workdir:
            stack = BenchStack(Path(workdir), address, task_queue=f"bench-critical-{uuid.uuid4().hex[:6]}")
            with stack:
                stack.start_incident_stack()
                async with httpx.AsyncClient(timeout=30) as http:
                    stanch_path = StanchPath(stack, env.client, http)
                    await stanch_path.incident(0)  # warm up: imports, connections, the runbook cache
                    stanch_path.incident_ids.clear()
                    stanch_path.approvals.clear()
                    stanch_runs = [await stanch_path.incident(n) for n in range(1, incidents + 1)]
                    breakdown = await history_breakdown(env.client, stanch_path.incident_ids)
            bare_queue = f"bench-bare-{uuid.uuid4().hex[:6]}"
            with BenchStack(Path(workdir), address, task_queue=bare_queue) as bare_stack:
                wait_until_worker_polls(bare_stack.start_bare_worker(__file__, bare_queue))
                await bare_incident(env.client, bare_queue, [])  # warm up
                bare_approvals: list[float] = []
                bare_runs = [await bare_incident(env.client, bare_queue, bare_approvals) for _ in range(incidents)]
    finally:
        await env.shutdown()
    return {
        "benchmark": "critical_path",
        "incidents": incidents,
        "containment": compare([c for c, _ in stanch_runs], [c for c, _ in bare_runs]),
        "rollback": compare([r for _, r in stanch_runs], [r for _, r in bare_runs]),
        # One approval: Stanch's POST .../approvals (assertion signed, update validated, verified)
        # against the baseline's bare update.
        "approval_round_trip": {
            "p50_ms": percentiles(stanch_path.approvals)[0],
            "baseline_p50_ms": percentiles(bare_approvals)[0],
        },
        "stanch_history": breakdown,
        "machine": machine(),
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-baseline"]:  # the baseline's worker process
        address, task_queue = sys.argv[2:4]
        asyncio.run(serve_bare_worker(address, task_queue, [BareCriticalPath], [bare_step], None))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--incidents", type=at_least_one("--incidents"), default=30, help="incidents measured (after one warm-up each side)"
    )
    options = parser.parse_args()
    print(json.dumps(asyncio.run(main(options.incidents))), flush=True)
    os._exit(0)  # no interpreter teardown after a Temporal client: temporalio/sdk-python#300
