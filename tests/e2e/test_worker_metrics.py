"""The worker serves the Temporal SDK's metrics for Prometheus when STANCH_WORKER_METRICS_ADDRESS
is set: once it polls, a scrape finds the SDK's worker metrics, named the Prometheus way."""

from __future__ import annotations

import re

import httpx
import pytest

from stanch.temporal.devserver import wait_for_port
from tests.e2e.processes import Process, free_port, stop_all, wait_for

pytestmark = pytest.mark.e2e


def test_a_worker_with_a_metrics_address_serves_the_sdk_metrics(tmp_path):
    ports = {name: free_port() for name in ("temporal", "ui", "metrics")}
    env = {
        "STANCH_HOME": str(tmp_path / "home"),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{ports['temporal']}",
        "STANCH_WORKER_METRICS_ADDRESS": f"127.0.0.1:{ports['metrics']}",
    }
    processes: list[Process] = []
    try:
        home = str(tmp_path / "home")
        processes.append(
            Process(
                "dev-server", ["dev-server", "--home", home, "--port", str(ports["temporal"]), "--ui-port", str(ports["ui"])], env, tmp_path
            )
        )
        wait_for_port("127.0.0.1", ports["temporal"], 60)
        processes.append(worker := Process("worker", ["worker"], env, tmp_path))

        def scrape() -> str:
            assert worker.popen.poll() is None, worker.tail()
            try:
                answer = httpx.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5)
            except httpx.HTTPError:
                return ""
            return answer.text if answer.status_code == 200 else ""

        # The worker's own series, labelled with its task queue, appear once it polls.
        text = wait_for(scrape, lambda body: 'task_queue="stanch-incidents' in body, timeout=60)
        assert re.search(r"^temporal_\w+_total\{", text, re.MULTILINE), "counters carry Prometheus's _total suffix"
        assert re.search(r"^temporal_\w+_seconds_bucket\{", text, re.MULTILINE), "durations are histograms in seconds"
    finally:
        stop_all(processes)
