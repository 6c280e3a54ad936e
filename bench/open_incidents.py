"""How many open incidents does one worker hold, and at what cost? 1,000 against bare workflows.

    .venv/bin/python -m bench.open_incidents [--incidents 1000]

Stanch's side: one real worker (`stanch worker`, a process of its own so its memory is its own)
and N incidents opened through `open_or_join` (routing, runbook snapshot, signal-with-start),
50 at a time, from this process. Each signal routes to the catch-all `triage` runbook, whose
confirm step cannot decide: the incident waits for a responder to triage it — its first gate,
where it stays. "All at their first gate" is the moment Temporal's visibility counts N
incidents with IncidentStatus = "triage" on the run's task queue.

The baseline, on the same dev server in the same run: N bare workflows started with the same
signal-with-start (the same Signal as payload), held by a bare worker process (this file run
with `--serve-baseline`): bench/bare_workflows.py's BareOpenIncident, in the SDK's default
sandbox like the incident, sets IncidentStatus = "triage" — so visibility sees it the same
way — and waits for a signal that never comes.

For each side, once every workflow waits: the time from the first start to all at their gate,
the worker's resident memory (VmRSS from /proc, idle before and with N held), and the SDK's
sticky-cache metrics from the worker's Prometheus endpoint (STANCH_WORKER_METRICS_ADDRESS for
Stanch's): cache size, hits, misses, forced evictions. Both workers keep the SDK's default
`max_cached_workflows` (workers/main.build_worker sets none). Ratios are Stanch / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/open_incidents.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

from bench.bare_workflows import GATE, BareOpenIncident
from bench.intake_overhead import start_dev_server
from bench.stack import BenchStack, Child, at_least_one, free_port, machine, resident_kib, serve_bare_worker, wait_until_worker_polls
from stanch.intake.start import open_or_join
from stanch.models.signals import Signal
from stanch.runbooks.loader import default_runbooks_dir, load_catalog

AT_ONCE = 50  # concurrent starts, as a busy intake sends them
GIVE_UP_SECONDS = 600


# --- what both sides start: the same signal (the baseline's workflow is in bench/bare_workflows.py) ---


def signal(run: str, number: int) -> Signal:
    """An unclassified oddity: only the triage runbook matches; its own title, so its own incident."""
    return Signal(signal_id=f"{run}-{number}", sender="load-test", title=f"unclassified oddity {run}-{number}", model="support-bot")


# --- measuring ----------------------------------------------------------------------------------


async def all_at_gate(client: Client, task_queue: str, count: int) -> None:
    query = f'TaskQueue = "{task_queue}" AND IncidentStatus = "{GATE}"'
    deadline = time.monotonic() + GIVE_UP_SECONDS
    waiting = 0
    while time.monotonic() < deadline:
        waiting = (await client.count_workflows(query)).count
        if waiting >= count:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"only {waiting} of {count} workflows on {task_queue} reached {GATE!r} within {GIVE_UP_SECONDS}s")


async def in_batches(starts: list) -> None:
    limit = asyncio.Semaphore(AT_ONCE)

    async def one(start) -> None:
        async with limit:
            await start()

    await asyncio.gather(*(one(start) for start in starts))


def sticky_cache(metrics_address: str) -> dict[str, float]:
    """The worker's sticky cache from its temporal_sticky_cache_* series, summed over their
    labels (a counter the SDK never incremented is not exported yet: it counts 0)."""
    text = httpx.get(f"http://{metrics_address}/metrics", timeout=10).text
    names = {
        "temporal_sticky_cache_size": "size",
        "temporal_sticky_cache_hit_total": "hits",
        "temporal_sticky_cache_miss_total": "misses",
        "temporal_sticky_cache_total_forced_eviction_total": "forced_evictions",
    }
    totals = dict.fromkeys(names.values(), 0.0)
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        name = series.split("{", 1)[0]
        if name in names:
            totals[names[name]] += float(value)
    return totals


async def one_history(client: Client, task_queue: str) -> dict[str, int]:
    """What one workflow of the run wrote before its gate: its events, and how many workflow tasks."""
    async for listed in client.list_workflows(f'TaskQueue = "{task_queue}"', limit=1):
        history = await client.get_workflow_handle(listed.id).fetch_history()
        tasks = sum(1 for event in history.events if event.HasField("workflow_task_completed_event_attributes"))
        return {"events_at_gate": len(history.events), "workflow_tasks_at_gate": tasks}
    raise RuntimeError(f"no workflow listed on task queue {task_queue}")


async def hold(client: Client, worker: Child, metrics_address: str, task_queue: str, starts: list) -> dict:
    """Start every workflow, wait until all sit at their gate, then read the worker's memory and cache."""
    idle_kib = resident_kib(worker.pid)
    started = time.perf_counter()
    await in_batches(starts)
    started_all = time.perf_counter() - started
    await all_at_gate(client, task_queue, len(starts))
    at_gate = time.perf_counter() - started
    worker.check_alive()
    held_kib = resident_kib(worker.pid)
    return {
        "seconds_to_start_all": round(started_all, 2),
        "seconds_to_all_at_gate": round(at_gate, 2),
        "rss_idle_mib": round(idle_kib / 1024, 1),
        "rss_held_mib": round(held_kib / 1024, 1),
        "kib_per_open_workflow": round((held_kib - idle_kib) / len(starts), 1),
        "sticky_cache": sticky_cache(metrics_address),
        **await one_history(client, task_queue),
    }


async def main(incidents: int) -> dict:
    env = await start_dev_server()
    client = env.client
    run = uuid.uuid4().hex[:6]
    try:
        address = client.service_client.config.target_host
        with tempfile.TemporaryDirectory(prefix="stanch-open-incidents-") as workdir:
            stanch_queue, bare_queue = f"bench-open-{run}", f"bench-open-bare-{run}"
            with BenchStack(Path(workdir), address, task_queue=stanch_queue) as stack:
                stanch_metrics = f"127.0.0.1:{free_port()}"
                worker = stack.start_worker(extra_env={"STANCH_WORKER_METRICS_ADDRESS": stanch_metrics})
                bare_metrics = f"127.0.0.1:{free_port()}"
                bare_worker = stack.start_bare_worker(__file__, bare_queue, bare_metrics)
                wait_until_worker_polls(worker)
                wait_until_worker_polls(bare_worker)
                catalog = load_catalog(default_runbooks_dir())
                stanch = await hold(
                    client,
                    worker,
                    stanch_metrics,
                    stanch_queue,
                    [lambda n=n: open_or_join(client, catalog, signal(run, n), task_queue=stanch_queue) for n in range(incidents)],
                )
                bare = await hold(
                    client,
                    bare_worker,
                    bare_metrics,
                    bare_queue,
                    [
                        lambda n=n: client.start_workflow(
                            BareOpenIncident.run,
                            id=f"bare-open-{run}-{n}",
                            task_queue=bare_queue,
                            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                            start_signal="add_signal",
                            start_signal_args=[signal(run, n)],
                        )
                        for n in range(incidents)
                    ],
                )
    finally:
        await env.shutdown()
    return {
        "benchmark": "open_incidents",
        "incidents": incidents,
        "max_cached_workflows": inspect.signature(Worker.__init__).parameters["max_cached_workflows"].default,
        "stanch": stanch,
        "baseline": bare,
        "ratio_time_to_gate": round(stanch["seconds_to_all_at_gate"] / bare["seconds_to_all_at_gate"], 2),
        "ratio_rss": round(stanch["rss_held_mib"] / bare["rss_held_mib"], 2),
        "machine": machine(),
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-baseline"]:  # the baseline's worker process (see serve_baseline)
        address, task_queue, metrics_address = sys.argv[2:5]
        asyncio.run(serve_bare_worker(address, task_queue, [BareOpenIncident], [], metrics_address))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--incidents", type=at_least_one("--incidents"), default=1000, help="open incidents held (and as many bare workflows)"
    )
    options = parser.parse_args()
    print(json.dumps(asyncio.run(main(options.incidents))), flush=True)
    os._exit(0)  # no interpreter teardown after a Temporal client: temporalio/sdk-python#300
