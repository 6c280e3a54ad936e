"""How long does `stanch audit replay` take, per history and per 1,000 events?

    .venv/bin/python -m bench.replay [--long-signals 3000] [--repeat 3] [--committed N]

Two sets of histories: the committed ones (tests/histories/*.json; `--committed N` takes the
first N, for a quick run), and a long one made here:
one triage incident on a dev server and a real `stanch worker` that receives `--long-signals`
alerts (every run of it, when it continued as new).

Each set is replayed three ways:

- baseline: the SDK's bare `Replayer` with Stanch's own workflows (`workers.main.WORKFLOWS`)
  and the pydantic data converter, `replay_workflows` over the same histories: what any
  Temporal user pays to replay them;
- stanch: `stanch.audit.replay.replay_histories`, what `stanch audit replay` runs, in this
  process: the same replay plus Stanch's audit layer (the dry-run and encryption-key checks
  over every payload, the decision-key check, the installation's converter with its codec
  when configured, the outcome per run);
- cli: `stanch audit replay --file ... --json` as a subprocess, start-up and report included
  (`cli_startup_s`: the same command replaying only the shortest committed history).

The best of `--repeat` rounds is kept for each. `ratio` is stanch over baseline;
`cli_ratio` is the whole command over the baseline. Exits 1 when any history fails to replay.
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
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from bench.intake_overhead import start_dev_server
from bench.intake_scale import (
    counted,
    incident_signal_count,
    runs_of,
    send_all,
    stanch_sender,
    stanch_worker,
    stop,
    storm_signal,
    wait_for_poller,
)
from stanch.audit.history import load_history_file
from stanch.audit.replay import from_list, replay_histories
from stanch.config.settings import Settings
from stanch.temporal.client import data_converter
from workers.main import WORKFLOWS

REPO = Path(__file__).resolve().parents[1]
COMMITTED = sorted((REPO / "tests" / "histories").glob("*.json"))
STANCH_WORKFLOWS: list[type] = list(WORKFLOWS)  # what the worker and `stanch audit replay` run


async def long_incident(signals: int, out: Path) -> list[Path]:
    """One triage incident that received `signals` alerts: its runs' histories, as files."""
    env = await start_dev_server()
    worker = None
    try:
        client = env.client
        run = uuid.uuid4().hex[:8]
        worker = stanch_worker(client.service_client.config.target_host, out, f"bench-replay-{run}")
        await wait_for_poller(client, f"bench-replay-{run}", [worker], out)
        ids: set[str] = set()
        await send_all([storm_signal(n, 1, run) for n in range(signals)], stanch_sender(client, f"bench-replay-{run}", ids), 8)
        if (await counted(client, ids, incident_signal_count, signals, timeout=300)).signals < signals:
            raise SystemExit(f"the long incident did not count its {signals} signals; see {out / 'workers.log'}")
        return [write(history, out) for history in await runs_of(client, ids.pop())]
    finally:
        if worker is not None:
            stop([worker])
        await env.shutdown()


def write(history: WorkflowHistory, out: Path) -> Path:
    path = out / f"long-{history.run_id[:8]}.json"
    path.write_text(history.to_json())
    return path


async def bare_replay(histories: list[WorkflowHistory]) -> tuple[float, int]:
    """Seconds for the SDK's Replayer over the histories, and how many failed."""
    replayer = Replayer(workflows=STANCH_WORKFLOWS, data_converter=pydantic_data_converter)
    started = time.perf_counter()
    results = await replayer.replay_workflows(from_list(histories), raise_on_replay_failure=False)
    elapsed = time.perf_counter() - started
    return elapsed, len(results.replay_failures)


async def audit_replay(histories: list[WorkflowHistory], settings: Settings) -> tuple[float, int]:
    """Seconds for what `stanch audit replay` runs in-process, and how many runs it did not reproduce."""
    started = time.perf_counter()
    outcomes = await replay_histories(from_list(histories), STANCH_WORKFLOWS, data_converter(settings), trusted_keys=[])
    elapsed = time.perf_counter() - started
    return elapsed, sum(not outcome.reproduced for outcome in outcomes)


def cli_replay(files: list[Path], home: Path) -> float:
    """Seconds for the whole `stanch audit replay --file ... --json` command."""
    command = [sys.executable, "-m", "stanch", "audit", "replay", "--json", *(arg for path in files for arg in ("--file", str(path)))]
    started = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "STANCH_HOME": str(home)}, cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"`stanch audit replay` exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return elapsed


async def measure(files: list[Path], repeat: int, home: Path) -> dict:
    histories = [load_history_file(path) for path in files]
    events = sum(len(history.events) for history in histories)
    settings = Settings.from_env().model_copy(update={"home": home})
    base, ours, cli = [], [], []
    failed = 0
    # The first replay in a process imports the workflows into the sandbox: not what we time.
    await bare_replay(histories[:1])
    await audit_replay(histories[:1], settings)
    for _ in range(repeat):
        seconds, bare_failed = await bare_replay(histories)
        base.append(seconds)
        seconds, audit_failed = await audit_replay(histories, settings)
        ours.append(seconds)
        failed = max(failed, bare_failed, audit_failed)
        cli.append(cli_replay(files, home))
    best_base, best_ours, best_cli = min(base), min(ours), min(cli)
    return {
        "histories": len(histories),
        "events": events,
        "failed": failed,
        "baseline_ms_per_history": round(best_base / len(histories) * 1000, 2),
        "stanch_ms_per_history": round(best_ours / len(histories) * 1000, 2),
        "cli_ms_per_history": round(best_cli / len(histories) * 1000, 2),
        "baseline_ms_per_1000_events": round(best_base / events * 1e6, 2),
        "stanch_ms_per_1000_events": round(best_ours / events * 1e6, 2),
        "cli_ms_per_1000_events": round(best_cli / events * 1e6, 2),
        "ratio": round(best_ours / best_base, 3),
        "cli_ratio": round(best_cli / best_base, 3),
    }


async def main(long_signals: int, repeat: int, committed: list[Path]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="stanch-bench-replay-"))
    long_files = await long_incident(long_signals, work)
    # Start-up alone: the command replaying the shortest committed history.
    floor = min(cli_replay([min(committed, key=lambda path: path.stat().st_size)], work) for _ in range(repeat))
    sets = {
        "committed": await measure(committed, repeat, work),
        "long_incident": await measure(long_files, repeat, work),
    }
    return {
        "benchmark": "replay",
        "long_signals": long_signals,
        "repeat": repeat,
        "baseline": "the SDK's bare Replayer with Stanch's workflows and the pydantic converter, no audit layer",
        "cli_startup_s": round(floor, 3),
        "sets": sets,
        "ratio": {name: result["ratio"] for name, result in sets.items()},
        "cli_ratio": {name: result["cli_ratio"] for name, result in sets.items()},
        "failed": sum(result["failed"] for result in sets.values()),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long-signals", type=int, default=3000, help="alerts the long incident receives")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per set; the best is kept")
    parser.add_argument("--committed", type=int, default=len(COMMITTED), help="how many committed histories to replay (default all)")
    options = parser.parse_args()
    if min(options.long_signals, options.repeat, options.committed) < 1:
        parser.error("--long-signals, --repeat and --committed must be at least 1")
    if not COMMITTED:
        parser.error(f"no committed histories in {REPO / 'tests' / 'histories'}")
    result = asyncio.run(main(options.long_signals, options.repeat, COMMITTED[: options.committed]))
    print(json.dumps(result), flush=True)
    if result["failed"]:
        print(f"FAILED: {result['failed']} histories did not replay with today's workflow code", file=sys.stderr, flush=True)
    os._exit(1 if result["failed"] else 0)  # no interpreter teardown after a Temporal client: temporalio/sdk-python#300
