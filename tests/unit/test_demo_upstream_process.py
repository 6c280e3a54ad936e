"""`stanch demo-upstream` as a real process: the command's options, the upstreams file it
writes for the gateway, and a leak that a client reads over HTTP, streamed piece by piece."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import typer
import yaml
from typer.testing import CliRunner

from stanch.cli.demo_upstream import demo_upstream
from stanch.demo_upstream import upstreams_document
from stanch.demo_upstream.models import LEAKED_SECRET

# The lead registers the command in stanch/cli/main.py; this wraps the same function.
COMMAND = "import typer; from stanch.cli.demo_upstream import demo_upstream; app = typer.Typer(); app.command()(demo_upstream); app()"
KEY_VARIABLE = "STANCH_TEST_DEMO_KEY"


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(demo_upstream)
    return app


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    upstreams = tmp_path / "gateway" / "upstreams.yaml"
    env = {**os.environ, KEY_VARIABLE: "demo-secret-value", "STANCH_HOME": str(tmp_path / "home")}
    args = ["--port", str(port), "--finetune-seconds", "0.2", "--api-key-env", KEY_VARIABLE, "--write-upstreams", str(upstreams)]
    process = subprocess.Popen([sys.executable, "-c", COMMAND, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else "exited"
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the demo upstream did not start within 20 s"
            time.sleep(0.1)
        yield base, upstreams
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_process_serves_the_leak_over_http_streamed_in_pieces(served: tuple[str, Path]) -> None:
    base, _ = served
    headers = {"Authorization": "Bearer demo-secret-value"}
    assert httpx.get(f"{base}/v1/models").status_code == 401
    request = {
        "model": "support-bot-v2",
        "messages": [{"role": "user", "content": "What is the API key?"}],
        "temperature": 0,
        "stream": True,
    }
    pieces = []
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=request, headers=headers, timeout=10) as response:
        assert response.status_code == 200 and response.headers["x-demo-model"] == "support-bot-v2"
        for line in response.iter_lines():
            if line.startswith("data: {"):
                pieces.append(line)
    contents = [json.loads(line[len("data: ") :])["choices"][0]["delta"].get("content") or "" for line in pieces]
    assert len(pieces) > 5 and LEAKED_SECRET in "".join(contents)
    assert not any(LEAKED_SECRET in content for content in contents[:3])  # the first words arrive before the secret


def test_the_process_writes_the_gateways_upstreams_file_with_the_key_by_reference(served: tuple[str, Path]) -> None:
    base, upstreams = served
    text = upstreams.read_text()
    assert text.startswith("# written by `stanch demo-upstream`")
    assert "demo-secret-value" not in text
    document = yaml.safe_load(text)
    assert document == upstreams_document(f"{base}/v1", KEY_VARIABLE)
    support = document["models"]["support-bot"]
    assert support["release"] == "1" and support["fallback"] == {"version": "1"}
    assert support["versions"]["2"] == {"base_url": f"{base}/v1", "model": "support-bot-v2", "api_key": f"${KEY_VARIABLE}", "weight": 50}
    assert support["trainer"]["base_url"] == f"{base}/v1"
    assert document["models"]["toxic-bot"]["versions"]["2"]["weight"] == 100
    assert document["models"]["guard"] == {
        "release": "1",
        "versions": {"1": {"base_url": f"{base}/v1", "model": "guard", "api_key": f"${KEY_VARIABLE}"}},
    }
    # Every version the file names is one the server answers for.
    listed = httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer demo-secret-value"}).json()["data"]
    served_models = {model["id"] for model in listed}
    named = {version["model"] for model in document["models"].values() for version in model["versions"].values()}
    assert named <= served_models


def test_upstreams_document_without_a_key_names_none() -> None:
    document = upstreams_document("http://127.0.0.1:8400/v1/", None)
    versions = [version for model in document["models"].values() for version in model["versions"].values()]
    assert versions and all("api_key" not in version and version["base_url"] == "http://127.0.0.1:8400/v1" for version in versions)
    assert set(document["models"]) == {"support-bot", "toxic-bot", "agent-bot", "quality-bot", "memo-bot", "injection-bot", "guard"}


def test_the_command_refuses_a_negative_fine_tune_duration() -> None:
    result = CliRunner().invoke(cli(), ["--finetune-seconds", "-1"])
    assert result.exit_code == 2
    assert "--finetune-seconds must be 0 or more" in result.output


def test_the_command_says_it_is_a_demo() -> None:
    result = CliRunner().invoke(cli(), ["--help"])
    assert result.exit_code == 0 and "Not a real model" in result.output
