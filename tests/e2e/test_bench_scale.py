"""The scale benchmarks run from a fresh clone and print their JSON: intake at scale, replay,
the incident list. Each runs here as a subprocess at a tiny size (its own dev server, real
workers and API); its numbers are not judged, only that it ran, printed one JSON object with
its ratios, and, for intake, that every signal was counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def bench(module: str, *args: str) -> dict:
    """Run `python -m bench.<module> ARGS`; its standard output must be one JSON object."""
    done = subprocess.run([sys.executable, "-m", f"bench.{module}", *args], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"bench.{module} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}"
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"bench.{module} printed more than its JSON:\n{done.stdout}"
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    assert result["benchmark"] == module
    return result


def positive(ratios: dict, names: set[str]) -> None:
    assert set(ratios) == names
    assert all(isinstance(value, (int, float)) and value > 0 for value in ratios.values()), ratios


def test_intake_at_scale_counts_every_signal_over_many_incidents_and_into_one():
    result = bench("intake_scale", "--signals", "24", "--keys", "3", "--concurrency", "4", "--settle-timeout", "60")
    positive(result["ratio"], {"spread", "one_incident"})
    assert result["lost"] == 0
    spread, one = result["shapes"]["spread"], result["shapes"]["one_incident"]
    assert (spread["incidents"], one["incidents"]) == (3, 1)
    for shape in (spread, one):
        assert shape["counted"] == shape["signals"] == 24
        assert shape["lost"] == shape["baseline_lost"] == 0
        assert shape["stanch_ms_per_signal"] > 0 and shape["baseline_ms_per_signal"] > 0


def test_replay_times_the_committed_histories_and_a_long_incident_against_the_bare_replayer():
    result = bench("replay", "--long-signals", "30", "--repeat", "1", "--committed", "2")
    assert result["failed"] == 0
    positive(result["ratio"], {"committed", "long_incident"})
    positive(result["cli_ratio"], {"committed", "long_incident"})
    assert result["sets"]["committed"]["histories"] == 2
    long = result["sets"]["long_incident"]
    assert long["events"] > 30, "every alert is an event in the long incident's history"
    for numbers in result["sets"].values():
        assert numbers["stanch_ms_per_1000_events"] > 0 and numbers["cli_ms_per_history"] > 0


def test_incident_list_times_the_api_and_the_board_against_a_raw_visibility_list():
    result = bench("incident_list", "--incidents", "12", "--requests", "3")
    positive(result["ratio"], {"api_default", "api_all", "board"})
    latency = result["latency"]
    assert set(latency) == {"baseline_default", "api_default", "baseline_all", "api_all", "board"}
    for numbers in latency.values():
        assert numbers["rows"] == 12, "every incident is listed"
        assert 0 < numbers["p50_ms"] <= numbers["p99_ms"]
