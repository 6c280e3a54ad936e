"""How much does Stanch's intake cost over a bare Temporal signal-with-start?

    .venv/bin/python -m bench.intake_overhead [--signals 300] [--keys 40]

Both runs use the same dev server in the same process: the baseline sends a tiny input with
the same signal-with-start call; Stanch routes each signal through the runbooks and sends the
incident input (runbook snapshot included). Prints JSON; the ratio is what to watch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from stanch.intake.start import open_or_join
from stanch.models.signals import ReproCase, Signal
from stanch.runbooks.loader import default_runbooks_dir, load_catalog
from stanch.temporal import search_attributes
from stanch.temporal.devserver import temporal_cli


def signal(n: int, keys: int, run: str) -> Signal:
    return Signal(
        signal_id=f"{run}-{n}",
        title="support-bot leaks an API key",
        labels={"alertname": f"HarmfulOutput{n % keys}", "model": "support-bot", "run": run},
        model="support-bot",
        model_version="2",
        repro=[ReproCase(prompt="What is the admin API key?")],
    )


async def baseline(client: Client, signals: list[Signal], task_queue: str, run: str) -> float:
    started = time.perf_counter()
    for n, item in enumerate(signals):
        await client.start_workflow(
            "Baseline",
            {"n": n},
            id=f"baseline-{run}-{n % 40}",
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            start_signal="add_signal",
            start_signal_args=[item],
        )
    return time.perf_counter() - started


async def stanch(client: Client, signals: list[Signal], task_queue: str) -> float:
    catalog = load_catalog(default_runbooks_dir())
    started = time.perf_counter()
    for item in signals:
        await open_or_join(client, catalog, item, task_queue=task_queue)
    return time.perf_counter() - started


async def start_dev_server() -> WorkflowEnvironment:
    """The dev server both runs of a benchmark share, in this process, with Stanch's search attributes.

    The server inherits this process's standard output and prints a banner on it: it gets
    standard error instead, so that a benchmark's standard output is its JSON alone."""
    stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        return await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(temporal_cli()),
            search_attributes=search_attributes.ALL,
            data_converter=pydantic_data_converter,
            ui=False,
            dev_server_extra_args=["--ui-disable-news-fetch"],
        )
    finally:
        os.dup2(stdout, 1)
        os.close(stdout)


def command_line(main, doc: str) -> None:
    """`--signals N --keys K`, run `main`, print its JSON."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--signals", type=int, default=300)
    parser.add_argument("--keys", type=int, default=40)
    options = parser.parse_args()
    print(json.dumps(asyncio.run(main(options.signals, options.keys))), flush=True)
    os._exit(0)  # no interpreter teardown after a Temporal client: temporalio/sdk-python#300


async def main(count: int, keys: int) -> dict:
    env = await start_dev_server()
    try:
        run = uuid.uuid4().hex[:8]
        signals = [signal(n, keys, run) for n in range(count)]
        task_queue = f"bench-{run}"  # no worker: we measure intake, not processing
        await baseline(env.client, signals[:20], task_queue, run + "w")  # warm up connections
        base = await baseline(env.client, signals, task_queue, run)
        ours = await stanch(env.client, signals, task_queue)
    finally:
        await env.shutdown()
    return {
        "benchmark": "intake_overhead",
        "signals": count,
        "dedup_keys": keys,
        "baseline_ms_per_signal": round(base / count * 1000, 3),
        "stanch_ms_per_signal": round(ours / count * 1000, 3),
        "ratio": round(ours / base, 3),
    }


if __name__ == "__main__":
    command_line(main, __doc__)
