"""`stanch up --temporal-address` against a Temporal that production also uses: its incidents run
on the home's own task queue under ids of its own, whatever STANCH_TASK_QUEUE says."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from temporalio.client import Client

from stanch.config.settings import DEFAULT_TASK_QUEUE
from stanch.intake.sources import examples
from stanch.temporal.devserver import wait_for_port
from tests.e2e.processes import DEFAULT_PORTS, Process, free_port, stop_all, wait_for, wait_http

pytestmark = pytest.mark.e2e


async def task_queue_of(address: str, incident_id: str) -> str:
    client = await Client.connect(address)
    return (await client.get_workflow_handle(incident_id).describe()).task_queue


@DEFAULT_PORTS
def test_up_on_a_shared_cluster_runs_incidents_on_its_own_queue_under_its_own_ids(tmp_path):
    ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway", "codec")}
    address = f"127.0.0.1:{ports['temporal']}"
    # The environment of a production host: its task queue, its Temporal.
    production = {"STANCH_TASK_QUEUE": DEFAULT_TASK_QUEUE, "TEMPORAL_ADDRESS": address}
    processes = [
        Process(
            "cluster",
            ["dev-server", "--home", str(tmp_path / "cluster"), "--port", str(ports["temporal"]), "--ui-port", str(ports["ui"])],
            {},
            tmp_path,
        )
    ]
    try:
        wait_for_port("127.0.0.1", ports["temporal"], 60)
        home = tmp_path / "dev-home"
        args = ["up", "--home", str(home), "--temporal-address", address]
        args += ["--api-port", str(ports["api"]), "--gateway-port", str(ports["gateway"]), "--codec-port", str(ports["codec"])]
        up = Process("up", args, {**production, "COLUMNS": "200"}, tmp_path)
        processes.append(up)
        api = f"http://127.0.0.1:{ports['api']}"
        wait_http(f"{api}/readyz", up, timeout=120)

        prefix = (home / "dev-prefix").read_text().strip()
        assert prefix.startswith("stanch-dev-") and prefix != DEFAULT_TASK_QUEUE
        said = " ".join(wait_for(lambda: up.tail(80), lambda text: "not the production queue" in text, timeout=30).split())
        assert f"on task queue {prefix}, not the production queue '{DEFAULT_TASK_QUEUE}'" in said

        answer = httpx.post(f"{api}/v1/alerts/grafana", json=examples.GRAFANA, timeout=30)
        assert answer.status_code == 202, answer.text
        incident_id = answer.json()["incidents"][0]["incident_id"]
        assert incident_id.startswith(f"{prefix}-harmful-output-")
        assert asyncio.run(task_queue_of(address, incident_id)) == prefix
        # The stack's own worker polls that queue: it answers the incident's state.
        state = wait_for(lambda: httpx.get(f"{api}/v1/incidents/{incident_id}", timeout=15), lambda r: r.status_code == 200, timeout=60)
        assert state.json()["id"] == incident_id
    finally:
        stop_all(processes)
