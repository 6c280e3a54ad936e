"""The worker's health endpoints for Kubernetes probes: `GET /healthz` (liveness) and
`GET /readyz` (readiness), on STANCH_WORKER_HEALTH_PORT or `stanch worker --health-port`.

A few lines of asyncio rather than a web framework: the worker serves nothing else, and two
probes answering from state the worker keeps need no more.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

log = logging.getLogger("stanch.worker.health")


@dataclass
class WorkerHealth:
    """What the probes report, kept up to date by `run_worker` as it goes through its start-up."""

    # Why the worker is not ready yet (or any more); None once it polls.
    not_ready: str | None = "starting: not connected to Temporal yet"
    # Set once the worker's task exists; liveness fails when it has ended while the process lives on.
    worker_task: asyncio.Task[None] | None = None

    def alive(self) -> tuple[bool, str]:
        if self.worker_task is not None and self.worker_task.done():
            return False, "the worker has stopped polling"
        return True, "alive"

    def ready(self) -> tuple[bool, str]:
        alive, why = self.alive()
        if not alive:
            return False, why
        if self.not_ready is not None:
            return False, self.not_ready
        return True, "polling"


async def serve_health(health: WorkerHealth, host: str, port: int) -> asyncio.Server:
    """Start answering the probes on host:port; close the returned server to stop."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            # Read and drop the headers: a probe sends no body.
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
            if method != "GET" or path not in ("/healthz", "/readyz"):
                status, body = 404, {"detail": "GET /healthz (liveness) or /readyz (readiness)"}
            else:
                ok, why = health.alive() if path == "/healthz" else health.ready()
                status, body = (200 if ok else 503), {"status": "ok" if ok else "unavailable", "detail": why}
            payload = json.dumps(body).encode()
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            writer.write(head.encode() + b"Connection: close\r\n\r\n" + payload)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass  # a probe that hung up or sent garbage gets nothing
        finally:
            writer.close()

    server = await asyncio.start_server(answer, host, port)
    log.info("worker health on http://%s:%d/healthz and /readyz", host, port)
    return server
