"""What does payload encryption cost at intake? Stanch's own intake, plain and encrypted.

    .venv/bin/python -m bench.codec_overhead [--signals 300] [--keys 40]

Both runs go through `open_or_join` (routing, runbook snapshot, signal-with-start) against
the same dev server in the same process; one client uses the plain pydantic converter, the
other the installation's converter with the AES-GCM codec (`stanch.temporal.data_converter`).
Prints JSON; the ratio is what to watch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from bench.intake_overhead import signal
from stanch import search_attributes
from stanch.codec import new_key_line
from stanch.config import Settings
from stanch.devserver import temporal_cli
from stanch.intake import open_or_join
from stanch.runbooks.loader import default_runbooks_dir, load_catalog
from stanch.temporal import data_converter


async def intake(client: Client, count: int, keys: int, run: str) -> float:
    catalog = load_catalog(default_runbooks_dir())
    signals = [signal(n, keys, run) for n in range(count)]
    task_queue = f"bench-{run}"  # no worker: we measure intake, not processing
    started = time.perf_counter()
    for item in signals:
        await open_or_join(client, catalog, item, task_queue=task_queue)
    return time.perf_counter() - started


async def main(count: int, keys: int) -> dict:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_cli()), search_attributes=search_attributes.ALL,
        data_converter=pydantic_data_converter, ui=False, dev_server_extra_args=["--ui-disable-news-fetch"],
    )
    try:
        encrypted_converter = data_converter(Settings(encryption_keys=new_key_line("bench")))
        assert encrypted_converter.payload_codec is not None
        encrypted = Client(**{**env.client.config(), "data_converter": encrypted_converter})
        run = uuid.uuid4().hex[:8]
        await intake(env.client, 20, keys, run + "w")  # warm up connections and the runbook cache
        plain_seconds = await intake(env.client, count, keys, run + "p")
        encrypted_seconds = await intake(encrypted, count, keys, run + "e")
    finally:
        await env.shutdown()
    return {
        "benchmark": "codec_overhead",
        "signals": count,
        "dedup_keys": keys,
        "plain_ms_per_signal": round(plain_seconds / count * 1000, 3),
        "encrypted_ms_per_signal": round(encrypted_seconds / count * 1000, 3),
        "ratio": round(encrypted_seconds / plain_seconds, 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=300)
    parser.add_argument("--keys", type=int, default=40)
    options = parser.parse_args()
    print(json.dumps(asyncio.run(main(options.signals, options.keys))), flush=True)
    os._exit(0)  # no interpreter teardown after a Temporal client: temporalio/sdk-python#300
