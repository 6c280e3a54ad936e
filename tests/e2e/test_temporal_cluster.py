"""Stanch on a Temporal it did not start: a dev server without Stanch's search attributes stands in
for a cluster. The worker refuses until `stanch temporal setup` has run, the API is not ready
and answers alerts 503 naming that command; afterwards incidents start. A temporal.toml profile
chooses the namespace, and Stanch never overrides it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from stanch.temporal.devserver import temporal_cli, wait_for_port
from tests.e2e.processes import Process, free_port, start_bare_temporal, stop_all, wait_for, wait_http
from tests.e2e.test_stanch_up import alertmanager_alert

pytestmark = pytest.mark.e2e

ATTRIBUTES = ["IncidentStatus", "IncidentSeverity", "IncidentRunbook", "IncidentTarget", "IncidentOpenedAt"]


@pytest.fixture(scope="module")
def bare_cluster(tmp_path_factory):
    """`temporal server start-dev` as a cluster would be: no `--search-attribute` flags."""
    address, stop = start_bare_temporal(tmp_path_factory.mktemp("cluster"))
    try:
        yield address
    finally:
        stop()


def stanch(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stanch", *args], env=env, capture_output=True, text=True, timeout=120)


def base_env(home: Path) -> dict[str, str]:
    """No TEMPORAL_* from the developer's shell: each test says where Temporal is."""
    import os

    kept = {name: value for name, value in os.environ.items() if not name.startswith(("TEMPORAL_", "STANCH_"))}
    return {**kept, "STANCH_HOME": str(home), "COLUMNS": "250"}


async def incident_namespace_and_queue(address: str, namespace: str, incident_id: str) -> str:
    client = await Client.connect(address, namespace=namespace)
    return (await client.get_workflow_handle(incident_id).describe()).task_queue


def test_worker_refuses_an_unprepared_namespace_until_temporal_setup_then_incidents_start(bare_cluster, tmp_path):
    env = {**base_env(tmp_path / "home"), "TEMPORAL_ADDRESS": bare_cluster}
    processes: list[Process] = []
    try:
        refused = stanch("worker", env=env)
        assert refused.returncode != 0
        said = " ".join(refused.stderr.split())
        assert "refusing to start" in said and "`stanch temporal setup`" in said and "'default'" in said

        api_port = free_port()
        api = f"http://127.0.0.1:{api_port}"
        processes.append(api_process := Process("api", ["api", "--port", str(api_port), "--insecure-dev"], env, tmp_path))
        wait_http(f"{api}/healthz", api_process)  # alive, though not ready
        readiness = httpx.get(f"{api}/readyz", timeout=15)
        assert readiness.status_code == 503
        assert "stanch temporal setup" in readiness.json()["detail"]
        alert = httpx.post(f"{api}/v1/alerts/alertmanager", json=alertmanager_alert("HarmfulOutputSecret", "the key?"), timeout=30)
        assert alert.status_code == 503, alert.text
        assert "stanch temporal setup" in alert.json()["detail"] and alert.headers["Retry-After"]

        setup = stanch("temporal", "setup", env=env)
        assert setup.returncode == 0, setup.stderr
        assert [line for line in setup.stdout.splitlines() if line.endswith(": added")] == [
            f"+ search attribute {name} ({'Datetime' if name == 'IncidentOpenedAt' else 'Keyword'}): added" for name in ATTRIBUTES
        ]
        again = stanch("temporal", "setup", "--json", env=env)
        assert again.returncode == 0, again.stderr
        report = json.loads(again.stdout)
        assert report["namespace"] == "default"
        assert {a["name"]: a["outcome"] for a in report["attributes"]} == dict.fromkeys(ATTRIBUTES, "already present")

        health_port = free_port()
        processes.append(worker := Process("worker", ["worker", "--health-port", str(health_port)], env, tmp_path))
        wait_http(f"{api}/readyz", api_process, timeout=30)
        # Kubernetes' probes: the worker is alive, and ready once connected, checked and polling.
        wait_http(f"http://127.0.0.1:{health_port}/readyz", worker, timeout=30)
        assert httpx.get(f"http://127.0.0.1:{health_port}/readyz").json() == {"status": "ok", "detail": "polling"}
        assert httpx.get(f"http://127.0.0.1:{health_port}/healthz").status_code == 200
        accepted = httpx.post(f"{api}/v1/alerts/alertmanager", json=alertmanager_alert("HarmfulOutputSecret", "the key?"), timeout=30)
        assert accepted.status_code == 202, accepted.text
        incident_id = accepted.json()["incidents"][0]["incident_id"]
        # A query needs a worker: the one that refused before now serves the incident.
        state = wait_for(lambda: httpx.get(f"{api}/v1/incidents/{incident_id}", timeout=15), lambda r: r.status_code == 200, timeout=60)
        assert state.json()["id"] == incident_id
        assert worker.popen.poll() is None
    finally:
        stop_all(processes)


def test_a_temporal_toml_profile_chooses_the_namespace_for_setup_worker_and_api(bare_cluster, tmp_path):
    namespace = "stanch-ops"
    config = tmp_path / "temporal.toml"
    config.write_text(f'[profile.ops]\naddress = "{bare_cluster}"\nnamespace = "{namespace}"\n')
    # Only the profile says where: no TEMPORAL_ADDRESS, no TEMPORAL_NAMESPACE.
    env = {**base_env(tmp_path / "home"), "TEMPORAL_CONFIG_FILE": str(config), "TEMPORAL_PROFILE": "ops"}
    processes: list[Process] = []
    try:
        setup = stanch("temporal", "setup", "--create-namespace", "--retention", "3d", "--json", env=env)
        assert setup.returncode == 0, setup.stderr
        report = json.loads(setup.stdout)
        assert report["namespace"] == namespace and report["namespace_outcome"] == "created"
        assert {a["outcome"] for a in report["attributes"]} == {"added"}

        api_port = free_port()
        api = f"http://127.0.0.1:{api_port}"
        processes.append(Process("worker", ["worker"], env, tmp_path))
        processes.append(api_process := Process("api", ["api", "--port", str(api_port), "--insecure-dev"], env, tmp_path))
        wait_http(f"{api}/readyz", api_process, timeout=60)
        assert httpx.get(f"{api}/readyz").json()["namespace"] == namespace
        assert httpx.get(f"{api}/healthz").json()["namespace"] == namespace

        accepted = httpx.post(f"{api}/v1/alerts/alertmanager", json=alertmanager_alert("HarmfulOutputSecret", "the key?"), timeout=30)
        assert accepted.status_code == 202, accepted.text
        incident_id = accepted.json()["incidents"][0]["incident_id"]
        # The incident is in the profile's namespace, served by the worker that connected there.
        assert asyncio.run(incident_namespace_and_queue(bare_cluster, namespace, incident_id)) == "stanch-incidents"
        state = wait_for(lambda: httpx.get(f"{api}/v1/incidents/{incident_id}", timeout=15), lambda r: r.status_code == 200, timeout=60)
        assert state.json()["id"] == incident_id
    finally:
        stop_all(processes)


def test_setup_says_what_to_do_when_temporal_is_unreachable_or_a_type_clashes(bare_cluster, tmp_path):
    unreachable = stanch("temporal", "setup", env={**base_env(tmp_path), "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"})
    assert unreachable.returncode == 1
    assert "cannot reach Temporal at 127.0.0.1:" in unreachable.stderr and "TEMPORAL_ADDRESS" in unreachable.stderr

    env = {**base_env(tmp_path), "TEMPORAL_ADDRESS": bare_cluster, "TEMPORAL_NAMESPACE": "clash"}
    assert stanch("temporal", "setup", "--create-namespace", env=env).returncode == 0
    subprocess.run(
        [
            str(temporal_cli()),
            "operator",
            "search-attribute",
            "remove",
            "--address",
            bare_cluster,
            "-n",
            "clash",
            "--name",
            "IncidentTarget",
            "--yes",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    subprocess.run(
        [
            str(temporal_cli()),
            "operator",
            "search-attribute",
            "create",
            "--address",
            bare_cluster,
            "-n",
            "clash",
            "--name",
            "IncidentTarget",
            "--type",
            "Int",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    clash = stanch("temporal", "setup", env=env)
    assert clash.returncode == 1
    said = " ".join(clash.stderr.split())
    assert "IncidentTarget is Int, Stanch needs Keyword" in said


def test_up_joining_a_cluster_registers_what_is_missing_before_its_worker_starts(bare_cluster, tmp_path):
    from stanch.cli.supervisor import Supervisor
    from stanch.cli.up import _prepare_cluster

    subprocess.run(
        [str(temporal_cli()), "operator", "namespace", "create", "--address", bare_cluster, "-n", "joined"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    env = {**base_env(tmp_path), "TEMPORAL_ADDRESS": bare_cluster, "TEMPORAL_NAMESPACE": "joined"}
    supervisor = Supervisor(env=env, logs_dir=tmp_path)
    assert wait_for(lambda: _prepare_cluster(supervisor, [sys.executable, "-m", "stanch"]), bool, timeout=30)
    report = json.loads(stanch("temporal", "setup", "--json", env=env).stdout)
    assert {a["outcome"] for a in report["attributes"]} == {"already present"}
