"""Intake at scale: N alerts over K incidents, and N alerts into one, with every signal counted.

    .venv/bin/python -m bench.intake_scale [--signals 2000] [--keys 40] [--concurrency 8]

Two shapes, each timed twice against the same dev server (started in this process):

- baseline: raw signal-with-start (`Client.start_workflow` with `start_signal`) of a trivial
  workflow that only counts its signals and continues as new when Temporal suggests it,
  processed by a bare worker of its own (this file, `--serve-baseline`, in a subprocess);
- stanch: `open_or_join` (routing, masking, runbook snapshot, signal-with-start) of the real
  incident workflow, processed by a real `stanch worker` subprocess.

The signals route to the catch-all `triage` runbook, whose incident waits for a human: it
keeps running while the alerts arrive, as it does in production. `concurrency` senders
share the signals, as concurrent webhooks would.

Timing stops when the last signal-with-start returns (Temporal has recorded it). Then each
incident is asked for its `signal_count` (the `state` query, as `GET /v1/incidents/{id}`
does) until they add up or `--settle-timeout` passes: any signal not counted is `lost`, and
the benchmark exits 1 saying how many and which incidents could not be read, and why.

Prints one JSON object; `ratio` per shape is Stanch's time over the baseline's. Each shape also
shows what the workflow side pays: history events per signal (all runs, against the counting
baseline's) and the largest incident's `state` query, in kB and ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

from temporalio import workflow
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowHistory
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from bench.intake_overhead import start_dev_server
from stanch.intake.start import open_or_join
from stanch.models.incident import IncidentState
from stanch.models.signals import Signal
from stanch.runbooks.loader import default_runbooks_dir, load_catalog

REPO = Path(__file__).resolve().parents[1]
BASELINE_WORKFLOW = "BenchCountingBaseline"


def storm_signal(n: int, keys: int, run: str) -> Signal:
    """Alert `n` of a storm spread over `keys` incidents (the triage runbook groups by title)."""
    return Signal(
        signal_id=f"{run}-{n}",
        title=f"bench storm {run} group {n % keys}",
        labels={"alertname": "BenchStorm", "instance": f"pod-{n}", "run": run},
        model="support-bot",
    )


# --- the baseline: a workflow that only counts, on a worker of its own -------------------


@workflow.defn(name=BASELINE_WORKFLOW, sandboxed=False)
class CountingBaseline:
    """Counts `add_signal`s; hands its count over to a new run when Temporal suggests it."""

    def __init__(self) -> None:
        self.count = 0

    @workflow.run
    async def run(self, carried: int) -> None:
        self.count += carried
        await workflow.wait_condition(lambda: workflow.info().is_continue_as_new_suggested())
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(self.count)

    @workflow.signal(name="add_signal")
    def add_signal(self, signal: dict) -> None:
        self.count += 1

    @workflow.query(name="signal_count")
    def signal_count(self) -> int:
        return self.count


async def serve_baseline(address: str, task_queue: str) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    await Worker(client, task_queue=task_queue, workflows=[CountingBaseline]).run()


# --- sending ------------------------------------------------------------------------------


async def send_all(signals: list[Signal], send: Callable[[int, Signal], Awaitable[object]], concurrency: int) -> float:
    """Seconds until every signal was sent by `concurrency` senders sharing the list."""
    queue = list(enumerate(signals))
    queue.reverse()

    async def sender() -> None:
        while queue:
            n, item = queue.pop()
            await send(n, item)

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return time.perf_counter() - started


def baseline_sender(client: Client, task_queue: str, run: str, keys: int) -> Callable[[int, Signal], Awaitable[object]]:
    async def send(n: int, item: Signal) -> object:
        return await client.start_workflow(
            BASELINE_WORKFLOW,
            0,
            id=f"baseline-{run}-{n % keys}",
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            start_signal="add_signal",
            start_signal_args=[item],
        )

    return send


def stanch_sender(client: Client, task_queue: str, incident_ids: set[str]) -> Callable[[int, Signal], Awaitable[object]]:
    catalog = load_catalog(default_runbooks_dir())

    async def send(n: int, item: Signal) -> object:
        result = await open_or_join(client, catalog, item, task_queue=task_queue)
        incident_ids.add(result.incident_id)
        return result

    return send


# --- counting -----------------------------------------------------------------------------


class Count(NamedTuple):
    signals: int
    unreadable: dict[str, str]  # workflow id -> why its count could not be read, at the last try


async def counted(client: Client, ids: set[str], query: Callable[[Client, str], Awaitable[int]], expected: int, timeout: float) -> Count:
    """The signals the workflows counted, asked again until they add up or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        ordered = sorted(ids)
        counts = await asyncio.gather(*(query(client, workflow_id) for workflow_id in ordered), return_exceptions=True)
        total = sum(count for count in counts if isinstance(count, int))
        if total >= expected or time.monotonic() > deadline:
            failed = {
                workflow_id: describe(count) for workflow_id, count in zip(ordered, counts, strict=True) if isinstance(count, BaseException)
            }
            return Count(total, failed)
        await asyncio.sleep(0.5)


def describe(error: BaseException) -> str:
    cause = error.__cause__
    return f"{type(error).__name__}: {error}" + (f" ({cause})" if cause else "")


async def incident_signal_count(client: Client, incident_id: str) -> int:
    state = await client.get_workflow_handle(incident_id).query("state", result_type=IncidentState, rpc_timeout=timedelta(seconds=30))
    return state.signal_count


async def baseline_signal_count(client: Client, workflow_id: str) -> int:
    return await client.get_workflow_handle(workflow_id).query("signal_count", result_type=int, rpc_timeout=timedelta(seconds=30))


# --- workers ------------------------------------------------------------------------------


def stanch_worker(address: str, home: Path, task_queue: str) -> subprocess.Popen:
    """A real `stanch worker` on `task_queue`, logging to `home`/workers.log."""
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": address,
        "STANCH_HOME": str(home),
        "STANCH_TASK_QUEUE": task_queue,
        "STANCH_GATEWAY_URL": "http://127.0.0.1:9",  # triage incidents never reach a target
    }
    logs = (home / "workers.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "stanch", "worker"], env=env, cwd=REPO, stdout=logs, stderr=subprocess.STDOUT)


def baseline_worker(address: str, home: Path, task_queue: str) -> subprocess.Popen:
    """The bare worker of the counting baseline (this file, `--serve-baseline`)."""
    logs = (home / "workers.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "bench.intake_scale", "--serve-baseline", address, task_queue],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        stdout=logs,
        stderr=subprocess.STDOUT,
    )


def stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()


async def wait_for_poller(client: Client, task_queue: str, workers: list[subprocess.Popen], home: Path, timeout: float = 120) -> None:
    """Until a worker polls `task_queue`: timing starts with both workers ready."""
    request = DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=task_queue), task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(worker.poll() is not None for worker in workers):
            raise SystemExit(f"a worker exited before polling {task_queue}; see {home / 'workers.log'}")
        if (await client.workflow_service.describe_task_queue(request)).pollers:
            return
        await asyncio.sleep(0.3)
    raise SystemExit(f"no worker polled {task_queue} within {timeout:.0f} s; see {home / 'workers.log'}")


# --- the benchmark ------------------------------------------------------------------------


async def measure_shape(
    client: Client, shape: str, count: int, keys: int, concurrency: int, queues: tuple[str, str], timeout: float
) -> dict:
    stanch_queue, baseline_queue = queues
    run = uuid.uuid4().hex[:8]
    signals = [storm_signal(n, keys, run) for n in range(count)]
    base = await send_all(signals, baseline_sender(client, baseline_queue, run, keys), concurrency)
    incident_ids: set[str] = set()
    ours = await send_all(signals, stanch_sender(client, stanch_queue, incident_ids), concurrency)
    baseline_ids = {f"baseline-{run}-{k}" for k in range(min(keys, count))}
    settle_started = time.perf_counter()
    stanch_counted, unreadable = await counted(client, incident_ids, incident_signal_count, count, timeout)
    settled_in = time.perf_counter() - settle_started
    baseline_counted, _ = await counted(client, baseline_ids, baseline_signal_count, count, timeout)
    stanch_events = sum([await history_events(client, workflow_id) for workflow_id in incident_ids])
    baseline_events = sum([await history_events(client, workflow_id) for workflow_id in baseline_ids])
    reads = [await state_read(client, incident_id) for incident_id in sorted(incident_ids - set(unreadable))]
    return {
        "shape": shape,
        "signals": count,
        "incidents": len(incident_ids),
        "baseline_ms_per_signal": round(base / count * 1000, 3),
        "stanch_ms_per_signal": round(ours / count * 1000, 3),
        "ratio": round(ours / base, 3),
        "counted": stanch_counted,
        "lost": count - stanch_counted,
        "baseline_lost": count - baseline_counted,
        "all_counted_s_after_last_send": round(settled_in, 3),
        # What the workflow side pays per signal, and what reading the biggest incident costs.
        "history_events_per_signal": round(stanch_events / count, 2),
        "baseline_history_events_per_signal": round(baseline_events / count, 2),
        "state_query_max_kb": max((size for size, _ in reads), default=None),
        "state_query_max_ms": max((ms for _, ms in reads), default=None),
        "unreadable": unreadable,
    }


async def runs_of(client: Client, workflow_id: str) -> list[WorkflowHistory]:
    """Every run of a workflow, first to latest, following continue-as-new."""
    description = await client.get_workflow_handle(workflow_id).describe()
    run_id = description.raw_description.workflow_execution_info.first_run_id
    histories = []
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        histories.append(history)
        last = history.events[-1]
        run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return histories


async def history_events(client: Client, workflow_id: str) -> int:
    return sum(len(history.events) for history in await runs_of(client, workflow_id))


async def state_read(client: Client, incident_id: str) -> tuple[float, float]:
    """The `state` query's JSON size in kB and how long it took in ms (what `GET /v1/incidents/{id}` waits for)."""
    started = time.perf_counter()
    state = await client.get_workflow_handle(incident_id).query("state", result_type=IncidentState, rpc_timeout=timedelta(seconds=30))
    took = (time.perf_counter() - started) * 1000
    return round(len(state.model_dump_json()) / 1000, 1), round(took, 1)


async def main(count: int, keys: int, concurrency: int, settle_timeout: float) -> dict:
    env = await start_dev_server()
    home = Path(tempfile.mkdtemp(prefix="stanch-bench-intake-"))
    workers: list[subprocess.Popen] = []
    try:
        client = env.client
        address = client.service_client.config.target_host
        run = uuid.uuid4().hex[:8]
        stanch_queue, baseline_queue = f"bench-stanch-{run}", f"bench-baseline-{run}"
        workers = [stanch_worker(address, home, stanch_queue), baseline_worker(address, home, baseline_queue)]
        for queue in (stanch_queue, baseline_queue):
            await wait_for_poller(client, queue, workers, home)
        queues = (stanch_queue, baseline_queue)
        # Warm up connections and both workers before anything is timed.
        await measure_shape(client, "warm-up", min(20, count), 2, concurrency, queues, settle_timeout)
        shapes = [
            await measure_shape(client, "spread", count, keys, concurrency, queues, settle_timeout),
            await measure_shape(client, "one_incident", count, 1, concurrency, queues, settle_timeout),
        ]
    finally:
        stop(workers)
        await env.shutdown()
    return {
        "benchmark": "intake_scale",
        "signals": count,
        "dedup_keys": keys,
        "concurrency": concurrency,
        "baseline": "raw signal-with-start of a workflow that only counts, on a bare worker",
        "shapes": {shape["shape"]: shape for shape in shapes},
        "ratio": {shape["shape"]: shape["ratio"] for shape in shapes},
        "lost": sum(shape["lost"] for shape in shapes),
    }


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=2000, help="alerts per shape")
    parser.add_argument("--keys", type=int, default=40, help="incidents the 'spread' shape spreads them over")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent senders, as concurrent webhooks")
    parser.add_argument("--settle-timeout", type=float, default=300, help="seconds to wait for every signal to be counted")
    parser.add_argument("--serve-baseline", nargs=2, metavar=("ADDRESS", "TASK_QUEUE"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    for name in ("signals", "keys", "concurrency"):
        if getattr(options, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return options


if __name__ == "__main__":
    options = parse_options()
    if options.serve_baseline:
        asyncio.run(serve_baseline(*options.serve_baseline))
        sys.exit(0)
    result = asyncio.run(main(options.signals, options.keys, options.concurrency, options.settle_timeout))
    print(json.dumps(result), flush=True)
    if result["lost"]:
        print(f"LOST: {result['lost']} of {2 * options.signals} signals were never counted by their incident", file=sys.stderr, flush=True)
        for shape in result["shapes"].values():
            for incident_id, why in shape["unreadable"].items():
                print(f"  {shape['shape']}: {incident_id} could not be read: {why}", file=sys.stderr, flush=True)
    os._exit(1 if result["lost"] else 0)  # no interpreter teardown after a Temporal client: temporalio/sdk-python#300
