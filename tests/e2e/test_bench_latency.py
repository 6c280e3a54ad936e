"""The critical-path and open-incidents benchmarks run as a user runs them, at tiny sizes.

Not a timing test: the numbers depend on the machine, so only their shape is checked — one
JSON object with the keys docs/BENCHMARKS.md reads, every latency, memory figure and ratio a
positive number. Both benchmarks run side by side (each starts its own dev server and processes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
LATENCY_KEYS = {"p50_ms", "p99_ms", "baseline_p50_ms", "baseline_p99_ms", "ratio_p50"}


def positive_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


@pytest.fixture(scope="module")
def outputs() -> dict[str, subprocess.CompletedProcess]:
    commands = {
        "critical_path": [sys.executable, "bench/critical_path.py", "--incidents", "2"],
        "open_incidents": [sys.executable, "bench/open_incidents.py", "--incidents", "20"],
    }
    running = {
        name: subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, command in commands.items()
    }
    finished = {}
    for name, process in running.items():
        try:
            stdout, stderr = process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        finished[name] = subprocess.CompletedProcess(commands[name], process.returncode, stdout, stderr)
    return finished


def one_json_object(run: subprocess.CompletedProcess) -> dict:
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line on stdout, got: {run.stdout[-2000:]}"
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    return result


def test_the_critical_path_bench_prints_containment_and_rollback_against_its_baseline(outputs):
    result = one_json_object(outputs["critical_path"])
    assert result["benchmark"] == "critical_path" and result["incidents"] == 2
    for leg in ("containment", "rollback"):
        assert set(result[leg]) == LATENCY_KEYS, result[leg]
        assert all(positive_number(result[leg][key]) for key in LATENCY_KEYS), result[leg]
    assert {"cores", "python", "temporalio"} <= set(result["machine"])
    history = result["stanch_history"]
    assert history["activities_to_rollback"]["apply_containment"] == 1 and history["activities_to_rollback"]["apply_rollback"] == 1
    assert positive_number(history["events_to_rollback"])


def test_the_open_incidents_bench_prints_time_memory_and_cache_against_its_baseline(outputs):
    result = one_json_object(outputs["open_incidents"])
    assert result["benchmark"] == "open_incidents" and result["incidents"] == 20
    assert positive_number(result["ratio_time_to_gate"]) and positive_number(result["ratio_rss"])
    assert positive_number(result["max_cached_workflows"])
    for side in ("stanch", "baseline"):
        held = result[side]
        assert all(positive_number(held[key]) for key in ("seconds_to_all_at_gate", "rss_idle_mib", "rss_held_mib")), held
        assert set(held["sticky_cache"]) == {"size", "hits", "misses", "forced_evictions"}
        assert held["sticky_cache"]["size"] == 20, "every waiting workflow stays in the worker's cache"
