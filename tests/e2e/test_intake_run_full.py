"""A storm into one incident while no worker runs: Temporal takes at most so many signals into
one run (10,000 by default; 3 here, through the dev server's dynamic config). The next alert is
answered 503 with Retry-After, naming why, so Alertmanager and the like retry it instead of
dropping it; what was accepted before stays recorded."""

from __future__ import annotations

import subprocess
import uuid

import httpx
import pytest

from stanch.temporal import search_attributes
from stanch.temporal.devserver import temporal_cli, wait_for_port
from tests.e2e.processes import Process, free_port, stop_all, wait_http
from tests.e2e.test_intake import generic_signal

pytestmark = pytest.mark.e2e

SIGNALS_PER_RUN = 3


def test_an_alert_past_what_one_run_takes_is_retried_not_dropped(tmp_path):
    port, api_port = free_port(), free_port()
    with (tmp_path / "temporal.log").open("wb") as log:
        server = subprocess.Popen(
            [str(temporal_cli()), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port), "--log-level", "warn"]
            + search_attributes.dev_server_flags()
            + ["--dynamic-config-value", f"history.maximumSignalsPerExecution={SIGNALS_PER_RUN}"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    processes = []
    try:
        wait_for_port("127.0.0.1", port, 60)
        env = {"STANCH_HOME": str(tmp_path / "home"), "TEMPORAL_ADDRESS": f"127.0.0.1:{port}"}
        api = Process("api", ["api", "--port", str(api_port), "--insecure-dev"], env, tmp_path)
        processes.append(api)
        wait_http(f"http://127.0.0.1:{api_port}/readyz", api)

        key = uuid.uuid4().hex[:8]
        answers = [
            httpx.post(f"http://127.0.0.1:{api_port}/v1/alerts/generic", json=generic_signal(f"storm-{n}", key), timeout=30)
            for n in range(SIGNALS_PER_RUN + 1)
        ]
        assert [answer.status_code for answer in answers] == [202] * SIGNALS_PER_RUN + [503], [a.text for a in answers]
        refused = answers[-1]
        assert int(refused.headers["Retry-After"]) > 0
        assert "as many signals as Temporal allows" in refused.json()["detail"]
        assert "is a worker running?" in refused.json()["detail"]

        incident_id = answers[0].json()["incidents"][0]["incident_id"]
        assert {answer.json()["incidents"][0]["incident_id"] for answer in answers[:-1]} == {incident_id}
    finally:
        stop_all(processes)
        server.terminate()
        server.wait(20)
