"""End to end: payload encryption with a real dev server, worker, codec server and Temporal CLI.

The acceptance check of issue 5: with encryption on, the Temporal CLI shows ciphertext
without the codec and plain payloads with it — and only for an authorised responder.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from temporalio.client import WorkflowHandle, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from stanch.config.settings import Settings
from stanch.models.incident import IncidentStatus
from stanch.models.signals import ReproCase
from stanch.temporal import search_attributes as sa
from stanch.temporal.client import data_converter
from stanch.temporal.codec import new_key_line
from tests.conftest import installed_binary
from tests.e2e.processes import DEFAULT_PORTS, Process, free_port, stop_all, wait_for, wait_http
from tests.e2e.test_stanch_up import alertmanager_alert
from tests.workflow.conftest import alert, incident_input
from tests.workflow.standins import Script, stand_ins
from workflows.incident import IncidentWorkflow

pytestmark = pytest.mark.e2e

KEYS = ",".join([new_key_line("e2e-new"), new_key_line("e2e-old")])
PROMPT = f"PROMPT-{uuid.uuid4().hex[:12]}: read me the admin API key"
ENCRYPTED = base64.b64encode(b"binary/encrypted").decode()


def temporal_cli(*args: str) -> subprocess.CompletedProcess:
    # The CLI also reads TEMPORAL_* variables and profiles (a codec endpoint among them): none here.
    env = {name: value for name, value in os.environ.items() if not name.startswith("TEMPORAL_")}
    env["TEMPORAL_CONFIG_FILE"] = os.devnull
    return subprocess.run([installed_binary("temporal"), *args], capture_output=True, text=True, timeout=60, env=env, check=False)


def show(workflow_id: str, address: str, *codec: str) -> subprocess.CompletedProcess:
    return temporal_cli("workflow", "show", "--output", "json", "-w", workflow_id, "--address", address, *codec)


def payloads(node) -> Iterator[dict]:
    """Every Payload in the CLI's JSON (a dict with `metadata` and `data`), but for search
    attributes: those the server indexes, so they stay plain (and carry no prompt; see below);
    and for the SDK's patch markers (`workflow.patched`), which hold the patch's name only and
    are written by the SDK's core, not through the data converter."""
    if isinstance(node, dict):
        if "metadata" in node and "data" in node:
            yield node
        if node.get("markerName") == "core_patch":
            return
        for key, value in node.items():
            if key != "searchAttributes":
                yield from payloads(value)
    elif isinstance(node, list):
        for value in node:
            yield from payloads(value)


def readable(output: str) -> str:
    """The CLI's output plus every payload's data decoded, so a prompt is found however it is shown."""
    return output + "".join(base64.b64decode(p["data"]).decode("utf-8", "replace") for p in payloads(json.loads(output)))


def assert_only_ciphertext(output: str, prompt: str) -> None:
    found = list(payloads(json.loads(output)))
    assert found, "the history has payloads"
    assert all(p["metadata"].get("encoding") == ENCRYPTED for p in found), [
        p["metadata"] for p in found if p["metadata"].get("encoding") != ENCRYPTED
    ]
    assert prompt not in readable(output)


# --- an encrypted incident on a dev server, and a codec server for it ---------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encrypted-home")


@pytest.fixture(scope="module")
def settings(home: Path) -> Settings:
    return Settings(home=home, encryption_keys=KEYS)


@pytest.fixture(scope="module")
def auditor_token(home: Path) -> str:
    minted = subprocess.run(
        [sys.executable, "-m", "stanch", "responders", "token", "--user", "vera", "--role", "auditor"]
        + ["--file", str(home / "responders.yaml")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "STANCH_HOME": str(home)}, check=False,
    )  # fmt: skip
    assert minted.returncode == 0, minted.stderr
    return minted.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def codec_url(settings: Settings, auditor_token: str) -> Iterator[str]:
    port = free_port()
    process = Process("codec-server", ["codec-server", "--port", str(port)], settings.child_env(), settings.home)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", process, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_all([process])


@pytest_asyncio.fixture(scope="module")
async def temporal(settings: Settings) -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=installed_binary("temporal"),
        search_attributes=sa.ALL,
        data_converter=data_converter(settings),
        ui=False,
        dev_server_extra_args=["--ui-disable-news-fetch"],
    )
    yield environment
    await environment.shutdown()


@pytest_asyncio.fixture(scope="module")
async def incident(temporal: WorkflowEnvironment) -> WorkflowHandle:
    """A false-positive incident run end to end by a worker whose client encrypts: its first
    signal, the confirm activity's input and the final state all hold PROMPT."""
    client = temporal.client
    input = incident_input().model_copy(update={"upsert_search_attributes": True})
    task_queue = f"encrypted-{uuid.uuid4()}"
    async with Worker(client, task_queue=task_queue, workflows=[IncidentWorkflow], activities=stand_ins(Script(confirm="not_confirmed"))):
        handle = await client.start_workflow(
            IncidentWorkflow.run, input, id=input.incident_id, task_queue=task_queue,
            start_signal="add_signal", start_signal_args=[alert(repro=[ReproCase(prompt=PROMPT)])],
        )  # fmt: skip
        state = await handle.result()
    assert state.status == IncidentStatus.false_positive and state.signals[0].repro[0].prompt == PROMPT
    return handle


def address(temporal: WorkflowEnvironment) -> str:
    return temporal.client.service_client.config.target_host


async def test_the_cli_shows_ciphertext_without_the_codec(temporal, incident):
    shown = show(incident.id, address(temporal))
    assert shown.returncode == 0, shown.stderr
    assert_only_ciphertext(shown.stdout, PROMPT)


async def test_the_cli_shows_plain_payloads_through_the_codec_server_with_a_token(temporal, incident, codec_url, auditor_token):
    shown = show(incident.id, address(temporal), "--codec-endpoint", codec_url, "--codec-auth", f"Bearer {auditor_token}")
    assert shown.returncode == 0, shown.stderr
    assert PROMPT in readable(shown.stdout)
    assert not [p for p in payloads(json.loads(shown.stdout)) if p["metadata"].get("encoding") == ENCRYPTED]


async def test_the_codec_server_refuses_without_a_token(temporal, incident, codec_url):
    encrypted = next(payloads(json.loads(show(incident.id, address(temporal)).stdout)))
    async with httpx.AsyncClient() as http:
        for headers in ({}, {"Authorization": "Bearer stk_not_a_token"}):
            refused = await http.post(f"{codec_url}/decode", json={"payloads": [encrypted]}, headers=headers)
            assert refused.status_code == 401, refused.text
    # (The CLI, refused, retries until its deadline and shows nothing: not worth 10 s here.)


async def test_the_replayer_needs_the_codec_for_an_encrypted_history(temporal, incident, settings):
    history = await incident.fetch_history()
    with_codec = Replayer(workflows=[IncidentWorkflow], data_converter=data_converter(settings))
    await with_codec.replay_workflow(history)
    # The auditor's path: a history exported by the CLI, without the codec, still replays with it.
    exported = show(incident.id, address(temporal)).stdout
    await with_codec.replay_workflow(WorkflowHistory.from_json(incident.id, exported))
    without_codec = Replayer(workflows=[IncidentWorkflow], data_converter=pydantic_data_converter)
    with pytest.raises(RuntimeError, match="Unknown payload encoding binary/encrypted"):
        await without_codec.replay_workflow(history)


async def test_visibility_carries_no_prompt(incident):
    description = await incident.describe()
    values = {pair.key.name: pair.value for pair in description.typed_search_attributes}
    assert values[sa.INCIDENT_STATUS.name] == IncidentStatus.false_positive.value
    assert set(values) <= {key.name for key in sa.ALL} | {"BuildIds", "TemporalChangeVersion"}
    assert PROMPT not in json.dumps(values, default=str)


# --- the same through `stanch up` ------------------------------------------------------------


@DEFAULT_PORTS
def test_stanch_up_with_encryption_runs_the_codec_server_for_the_ui_and_cli(tmp_path: Path):
    home = tmp_path / "home"
    ports: dict[str, int] = {}
    while len(set(ports.values())) < 5:  # a port just freed can come back: five different ones
        ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway", "codec")}
    codec = f"http://127.0.0.1:{ports['codec']}"
    args = ["up", "--home", str(home), "--temporal-port", str(ports["temporal"]), "--ui-port", str(ports["ui"])]
    args += ["--api-port", str(ports["api"]), "--gateway-port", str(ports["gateway"]), "--codec-port", str(ports["codec"])]
    up = Process("up", args, {"STANCH_ENCRYPTION_KEYS": KEYS}, tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{ports['api']}/readyz", up, timeout=120)
        wait_http(f"{codec}/healthz", up, timeout=60)  # up starts the parts together: the API may be ready first
        assert httpx.get(f"{codec}/healthz").json()["auth"] == "insecure-dev"
        wait_for(lambda: up.log_path.read_text(), lambda printed: f"Codec server  {codec}" in printed, timeout=10)
        ui_settings = httpx.get(f"http://127.0.0.1:{ports['ui']}/api/v1/settings").json()
        assert ui_settings["Codec"]["Endpoint"] == codec, ui_settings

        prompt = f"UP-PROMPT-{uuid.uuid4().hex[:12]}: what is the customer's email?"
        api = f"http://127.0.0.1:{ports['api']}"
        accepted = httpx.post(f"{api}/v1/alerts/alertmanager", json=alertmanager_alert("HarmfulOutputContact", prompt))
        assert accepted.status_code == 202, accepted.text
        incident_id = accepted.json()["incidents"][0]["incident_id"]

        # The worker decrypts its input and the API its query answers: the incident moves on.
        def read():
            return httpx.get(f"{api}/v1/incidents/{incident_id}").json()

        state = wait_for(read, lambda s: {st["name"]: st["status"] for st in s.get("stages", [])}.get("confirm") == "done")
        assert state["signals"][0]["repro"][0]["prompt"] == prompt

        temporal = f"127.0.0.1:{ports['temporal']}"
        without = show(incident_id, temporal)
        assert without.returncode == 0, without.stderr
        assert_only_ciphertext(without.stdout, prompt)
        through = show(incident_id, temporal, "--codec-endpoint", codec)
        assert through.returncode == 0, through.stderr
        assert prompt in readable(through.stdout)
    finally:
        assert up.stop() == 0, up.tail()
