"""Real processes on loopback for end-to-end tests: start, wait until they answer, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from stanch.temporal.devserver import temporal_cli, wait_for_port

# `stanch up` listens on its default API, gateway, demo-upstream and codec ports: the tests that
# run it share one pytest-xdist worker (`make test` runs -n auto --dist loadgroup), one at a time.
DEFAULT_PORTS = pytest.mark.xdist_group("stanch-up-default-ports")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A `python -m stanch ...` child in its own process group, logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "stanch", *args],
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 20) -> int:
        self.signal(signal.SIGINT)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.popen.wait(5)
        finally:
            self.log.close()

    def kill(self) -> None:
        """SIGKILL: no clean-up, as when a machine dies."""
        self.signal(signal.SIGKILL)
        self.popen.wait(5)
        self.log.close()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def stop_all(processes: list[Process]) -> None:
    """Stop what is still running, newest first: every part is asked at once, then awaited."""
    for process in reversed(processes):
        if process.popen.poll() is None:
            process.signal(signal.SIGINT)
    for process in reversed(processes):
        if not process.log.closed:
            process.stop()


def wait_http(url: str, process: Process | None = None, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process and process.popen.poll() is not None:
            raise AssertionError(f"{process.name} exited with {process.popen.returncode}:\n{process.tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout}s" + (f":\n{process.tail()}" if process else ""))


def wait_for(read, predicate, timeout: float = 90, interval: float = 0.3):
    """Poll `read()` until `predicate(value)` holds; fail with the last value seen.

    A read that times out (a query while no worker is up yet) counts as not yet."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = read()
        except httpx.TimeoutException as slow:
            value = f"read timed out: {slow!r}"
        else:
            if predicate(value):
                return value
        time.sleep(interval)
    raise AssertionError(f"condition never held within {timeout}s; last value: {str(value)[:2000]}")


def start_demo_models(env: dict[str, str], logs: Path, processes: list[Process]) -> dict[str, str]:
    """`stanch demo-upstream` on a free port, writing the gateway's upstreams file; what a gateway
    (STANCH_GATEWAY_UPSTREAMS) and a worker (STANCH_TRAINER_URL) need in their environment to use it."""
    port = free_port()
    upstreams = logs / "upstreams.yaml"
    args = ["demo-upstream", "--port", str(port), "--state-dir", str(logs / "demo-upstream"), "--write-upstreams", str(upstreams)]
    processes.append(process := Process("demo-upstream", [*args, "--finetune-seconds", "1"], env, logs))
    wait_http(f"http://127.0.0.1:{port}/healthz", process)
    return {"STANCH_GATEWAY_UPSTREAMS": str(upstreams), "STANCH_TRAINER_URL": f"http://127.0.0.1:{port}/v1"}


def start_bare_temporal(logs: Path) -> tuple[str, Callable[[], None]]:
    """`temporal server start-dev` as a cluster would be: none of Stanch's search attributes
    (`stanch temporal setup` adds them). Returns its address and a function that stops it."""
    port = free_port()
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "temporal.log").open("wb") as log:
        server = subprocess.Popen(
            [str(temporal_cli()), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port), "--log-level", "warn"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop() -> None:
        server.terminate()
        server.wait(20)

    try:
        wait_for_port("127.0.0.1", port, 60)
    except TimeoutError:
        stop()
        raise
    return f"127.0.0.1:{port}", stop
