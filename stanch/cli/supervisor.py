"""Child processes for `stanch up`: start each in its own process group, log it to a file,
notice when one dies, and stop them all in reverse order.

Own process groups, because a terminal's Ctrl-C goes to the whole foreground group: the
children must not each race to shut down on their own while the API still talks to the
worker and the worker to Temporal. `stanch up` decides the order instead: API, worker,
gateway, then Temporal last, so nothing loses its server mid-request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

STOP_TIMEOUT_S = 10.0


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def exit_code(self) -> int | None:
        return self.process.poll() if self.process else None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ChildDied(RuntimeError):
    def __init__(self, child: Child) -> None:
        super().__init__(f"{child.name} exited with code {child.exit_code}; its log is {child.log_path}")
        self.child = child


class Supervisor:
    def __init__(self, env: dict[str, str], logs_dir: Path) -> None:
        self.env = env
        self.logs_dir = logs_dir
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str]) -> Child:
        log_path = self.logs_dir / f"{name}.log"
        child = Child(name=name, argv=argv, log_path=log_path)
        with log_path.open("ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            child.process = subprocess.Popen(
                argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.children.append(child)
        return child

    def first_dead(self) -> Child | None:
        return next((child for child in self.children if child.exit_code is not None), None)

    def check_alive(self) -> None:
        dead = self.first_dead()
        if dead:
            raise ChildDied(dead)

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float, stopping: Callable[[], bool]) -> bool:
        """Poll `ready` until it holds; False if asked to stop. A child dying or the timeout
        passing raises, so a broken start-up never looks like a slow one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if stopping():
                return False
            self.check_alive()
            if ready():
                return True
            time.sleep(0.25)
        raise TimeoutError(f"{what} was not ready after {timeout:.0f}s")

    def stop_all(self, timeout: float = STOP_TIMEOUT_S, report: Callable[[str], None] = lambda _: None) -> None:
        for child in reversed(self.children):
            if child.process is None or child.exit_code is not None:
                continue
            report(f"stopping {child.name}")
            _signal_group(child.process, signal.SIGTERM)
            try:
                child.process.wait(timeout)
            except subprocess.TimeoutExpired:
                report(f"{child.name} ignored SIGTERM for {timeout:.0f}s; killing it")
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)  # start_new_session made the child its group's leader
    except ProcessLookupError:
        pass


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
