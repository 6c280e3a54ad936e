"""SIGTERM drains, as a rollout or a scale-down sends it: the worker stops polling and lets a
running activity finish (its result in history) before exiting 0; the API stops accepting and
lets a webhook in flight be recorded and answered before exiting 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from stanch.temporal.devserver import temporal_cli, wait_for_port
from tests.e2e.processes import Process, free_port, start_bare_temporal, stop_all, wait_for, wait_http
from tests.e2e.test_stanch_up import alertmanager_alert

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def temporal(tmp_path_factory):
    address, stop = start_bare_temporal(tmp_path_factory.mktemp("temporal"))
    try:
        yield address
    finally:
        stop()


def env_for(home: Path, address: str) -> dict[str, str]:
    kept = {name: value for name, value in os.environ.items() if not name.startswith(("TEMPORAL_", "STANCH_"))}
    # No search attributes on this server and none needed: these tests are about stopping.
    return {**kept, "STANCH_HOME": str(home), "TEMPORAL_ADDRESS": address, "STANCH_UPSERT_SEARCH_ATTRIBUTES": "false"}


async def start_stand_in(address: str, task_queue: str) -> str:
    client = await Client.connect(address)
    handle = await client.start_workflow("DrainStandIn", id=f"drain-{uuid.uuid4().hex[:8]}", task_queue=task_queue)
    return handle.id


async def completed_activity_result(address: str, workflow_id: str) -> str | None:
    client = await Client.connect(address)
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            payload = event.activity_task_completed_event_attributes.result.payloads[0]
            return payload.data.decode()
    return None


def test_sigterm_lets_the_running_activity_finish_then_the_worker_exits_0(temporal, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    task_queue = f"drain-{uuid.uuid4()}"
    env = {**env_for(tmp_path / "home", temporal), "STANCH_TASK_QUEUE": task_queue, "DRAIN_MARKERS": str(markers)}
    env["STANCH_WORKER_SHUTDOWN_SECONDS"] = "20"
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.stand_in_worker", "worker"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        workflow_id = asyncio.run(start_stand_in(temporal, task_queue))
        wait_for(lambda: (markers / "started").exists(), bool, timeout=60, interval=0.05)
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(30)
        log_text = (tmp_path / "worker.log").read_text()
        assert code == 0, log_text
        assert (markers / "finished").read_text() == workflow_id
        # Its result reached Temporal before the worker left: a later worker carries on from there.
        assert asyncio.run(completed_activity_result(temporal, workflow_id)) == '"finished after 3s"'
        assert "draining" in log_text
    finally:
        if worker.poll() is None:
            worker.kill()


class SlowLink:
    """A TCP proxy in front of Temporal that, once `slow` is set, holds each chunk the API sends
    for that many seconds: Temporal answering slowly, without touching Temporal."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.slow = 0.0
        self.held = threading.Event()  # a chunk was held: a request is in flight
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, from_api: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if from_api and self.slow:
                    self.held.set()
                    time.sleep(self.slow)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_sigterm_lets_a_webhook_in_flight_be_recorded_and_answered_then_the_api_exits_0(temporal, tmp_path):
    link = SlowLink(temporal)
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    processes = [
        api_process := Process("api", ["api", "--port", str(port), "--insecure-dev"], env_for(tmp_path / "home", link.address), tmp_path)
    ]
    try:
        wait_http(f"{api}/readyz", api_process)  # connected to Temporal through the link
        link.slow = 2.0
        answers: list[httpx.Response] = []
        alert = alertmanager_alert("HarmfulOutputSecret", "the key?")
        sender = threading.Thread(target=lambda: answers.append(httpx.post(f"{api}/v1/alerts/alertmanager", json=alert, timeout=30)))
        sender.start()
        assert link.held.wait(15), "the alert never reached Temporal"
        api_process.signal(signal.SIGTERM)  # while Temporal is still recording the signal
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no new requests once draining
            httpx.get(f"{api}/healthz", timeout=5)
        sender.join(30)
        assert answers and answers[0].status_code == 202, answers[0].text if answers else "no answer"
        assert api_process.popen.wait(30) == 0, api_process.tail()
    finally:
        stop_all(processes)
