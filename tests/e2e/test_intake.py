"""Intake under pressure, end to end: redeliveries, Temporal going away, many concurrent alerts.

Real dev server, worker and API processes over real HTTP. The signals route to the catch-all
`triage` runbook, whose incidents wait for a human, so they stay open while we count.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from stanch.temporal.devserver import wait_for_port
from tests.e2e.processes import Process, free_port, stop_all, wait_for, wait_http

pytestmark = pytest.mark.e2e


class Stack:
    """Dev server, worker and API for one test, each a process that can be stopped alone."""

    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.ports = {name: free_port() for name in ("temporal", "ui", "api", "worker_health")}
        self.api = f"http://127.0.0.1:{self.ports['api']}"
        self.env = {
            "STANCH_HOME": str(tmp_path / "home"),
            "TEMPORAL_ADDRESS": f"127.0.0.1:{self.ports['temporal']}",
            "STANCH_GATEWAY_URL": "http://127.0.0.1:9",  # triage incidents never reach a target
            "STANCH_API_URL": self.api,
        }
        self.processes: list[Process] = []

    def start(self, name: str, *args: str) -> Process:
        process = Process(name, list(args), self.env, self.tmp)
        self.processes.append(process)
        return process

    def start_temporal(self) -> Process:
        home = str(self.tmp / "home")
        process = self.start(
            "dev-server", "dev-server", "--home", home, "--port", str(self.ports["temporal"]), "--ui-port", str(self.ports["ui"])
        )
        wait_for_port("127.0.0.1", self.ports["temporal"], 60)
        return process

    def __enter__(self) -> Stack:
        self.temporal = self.start_temporal()
        worker = self.start("worker", "worker", "--health-port", str(self.ports["worker_health"]))
        api = self.start("api", "api", "--port", str(self.ports["api"]), "--insecure-dev")
        wait_http(f"{self.api}/readyz", api)
        # Polling before a test stops Temporal: a worker still starting up when Temporal goes away
        # fails the SDK's namespace check and stops (it does not retry its start-up yet).
        wait_http(f"http://127.0.0.1:{self.ports['worker_health']}/readyz", worker)
        return self

    def __exit__(self, *exc) -> None:
        stop_all(self.processes)

    def incident(self, incident_id: str) -> dict:
        return httpx.get(f"{self.api}/v1/incidents/{incident_id}", timeout=15).json()


def generic_signal(signal_id: str, key: str) -> dict:
    return {
        "signal_id": signal_id,
        "sender": "load-test",
        "title": f"unclassified oddity {key}",
        "labels": {"key": key},
        "model": "support-bot",
    }


def test_the_same_delivery_twenty_times_is_one_incident_and_one_signal(tmp_path):
    with Stack(tmp_path) as stack:
        body = generic_signal("redelivered-1", uuid.uuid4().hex[:8])
        answers = [httpx.post(f"{stack.api}/v1/alerts/generic", json=body, timeout=30) for _ in range(20)]
        assert {answer.status_code for answer in answers} == {202}
        incident_ids = {answer.json()["incidents"][0]["incident_id"] for answer in answers}
        assert len(incident_ids) == 1
        (incident_id,) = incident_ids
        state = wait_for(lambda incident_id=incident_id: stack.incident(incident_id), lambda s: "signals" in s)
        assert [s["signal_id"] for s in state["signals"]] == ["redelivered-1"]


def test_while_temporal_is_down_intake_answers_503_and_retried_deliveries_all_land(tmp_path):
    with Stack(tmp_path) as stack:
        key = uuid.uuid4().hex[:8]
        before = [generic_signal(f"before-{n}", key) for n in range(3)]
        during = [generic_signal(f"during-{n}", key) for n in range(3)]
        accepted = [httpx.post(f"{stack.api}/v1/alerts/generic", json=body, timeout=30) for body in before]
        assert {answer.status_code for answer in accepted} == {202}
        incident_id = accepted[0].json()["incidents"][0]["incident_id"]

        assert stack.temporal.stop() == 0
        refused = [httpx.post(f"{stack.api}/v1/alerts/generic", json=body, timeout=60) for body in during]
        assert {answer.status_code for answer in refused} == {503}, [a.text for a in refused]
        assert all(answer.headers.get("retry-after") for answer in refused)

        stack.temporal = stack.start_temporal()
        for body in during:  # the sender retries until it hears 202
            wait_for(
                lambda body=body: httpx.post(f"{stack.api}/v1/alerts/generic", json=body, timeout=30).status_code,
                lambda code: code == 202,
                timeout=90,
                interval=1,
            )
        state = wait_for(lambda incident_id=incident_id: stack.incident(incident_id), lambda s: len(s.get("signals", [])) == 6, timeout=60)
        assert sorted(s["signal_id"] for s in state["signals"]) == sorted(b["signal_id"] for b in before + during)


def test_two_thousand_concurrent_alerts_over_forty_keys_make_forty_incidents(tmp_path):
    run = uuid.uuid4().hex[:6]
    bodies = [generic_signal(f"{run}-{n}", f"{run}-key-{n % 40}") for n in range(2000)]

    async def deliver_all(api: str) -> list[httpx.Response]:
        limit = asyncio.Semaphore(64)
        async with httpx.AsyncClient(timeout=60) as client:

            async def deliver(body: dict) -> httpx.Response:
                async with limit:
                    return await client.post(f"{api}/v1/alerts/generic", json=body)

            return await asyncio.gather(*(deliver(body) for body in bodies))

    with Stack(tmp_path) as stack:
        answers = asyncio.run(deliver_all(stack.api))
        assert {answer.status_code for answer in answers} == {202}, {a.status_code: a.text for a in answers if a.status_code != 202}
        incident_ids = {answer.json()["incidents"][0]["incident_id"] for answer in answers}
        assert len(incident_ids) == 40
        held = {}
        for incident_id in incident_ids:
            state = wait_for(
                lambda incident_id=incident_id: stack.incident(incident_id), lambda s: len(s.get("signals", [])) == 50, timeout=120
            )
            held[incident_id] = {s["signal_id"] for s in state["signals"]}
        assert set().union(*held.values()) == {body["signal_id"] for body in bodies}


def test_metrics_count_opened_incidents_and_signals(tmp_path):
    with Stack(tmp_path) as stack:
        key = uuid.uuid4().hex[:8]
        first = httpx.post(f"{stack.api}/v1/alerts/generic", json=generic_signal(f"m-{key}-1", key), timeout=30).json()
        second = httpx.post(f"{stack.api}/v1/alerts/generic", json=generic_signal(f"m-{key}-2", key), timeout=30).json()
        assert first["incidents"][0]["opened"] is True and second["incidents"][0]["opened"] is False
        metrics = httpx.get(f"{stack.api}/metrics").text
        assert 'stanch_incidents_opened_total{runbook="triage"} 1.0' in metrics
        assert 'stanch_signals_routed_total{runbook="triage",source="generic"} 2.0' in metrics
        assert 'stanch_intake_requests_total{outcome="accepted",source="generic"} 2.0' in metrics
        assert "stanch_intake_latency_seconds_bucket" in metrics
