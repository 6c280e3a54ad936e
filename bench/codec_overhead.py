"""What does payload encryption cost at intake? Stanch's own intake, plain and encrypted.

    .venv/bin/python -m bench.codec_overhead [--signals 300] [--keys 40]

Both runs go through `open_or_join` (routing, runbook snapshot, signal-with-start) against
the same dev server in the same process; one client uses the plain pydantic converter, the
other the installation's converter with the AES-GCM codec (`stanch.temporal.client.data_converter`).
Prints JSON; the ratio is what to watch.
"""

from __future__ import annotations

import uuid

from temporalio.client import Client

from bench.intake_overhead import command_line, signal, stanch, start_dev_server
from stanch.config.settings import Settings
from stanch.temporal.client import data_converter
from stanch.temporal.codec import new_key_line


async def intake(client: Client, count: int, keys: int, run: str) -> float:
    # No worker: we measure intake, not processing.
    return await stanch(client, [signal(n, keys, run) for n in range(count)], f"bench-{run}")


async def main(count: int, keys: int) -> dict:
    env = await start_dev_server()
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
    command_line(main, __doc__)
