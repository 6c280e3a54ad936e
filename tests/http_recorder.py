"""A local HTTP control plane for tests: records every request and honours Idempotency-Key.

Like a real idempotent API, the first request with a key takes effect and its answer is stored;
a repeat with the same key gets the stored answer (`Idempotent-Replayed: true`) and changes
nothing. `drop_after_commit` makes the server commit a request and then hang up without
answering, as when a connection dies mid-response: the client must retry with the same key.

`json_patch` and `merge_patch` change a document as the Kubernetes API server does, for fakes of
the objects the recipes patch.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass
class Recorder:
    """What the server saw (`requests`), what took effect (`effects`), and how it answers."""

    answers: dict[tuple[str, str], Any] = field(default_factory=dict)  # (method, path) -> JSON body or callable(Received)
    drop_after_commit: dict[tuple[str, str], int] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    effects: list[Received] = field(default_factory=list)
    stored: dict[str, tuple[int, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer_for(self, received: Received) -> tuple[int, Any]:
        answer = self.answers.get((received.method, received.path), {"ok": True})
        return answer(received) if callable(answer) else (200, answer)


def _handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            received = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            with recorder.lock:
                recorder.requests.append(received)
                key = received.key if self.command != "GET" else None
                replayed = key is not None and key in recorder.stored
                if replayed:
                    status, answer = recorder.stored[key]
                else:
                    status, answer = recorder.answer_for(received)
                    if self.command != "GET" and 200 <= status < 300:
                        recorder.effects.append(received)
                    if key is not None and status < 500:
                        recorder.stored[key] = (status, answer)
                route = (self.command, self.path)
                drop = not replayed and recorder.drop_after_commit.get(route, 0) > 0
                if drop:
                    recorder.drop_after_commit[route] -= 1
            if drop:
                self.close_connection = True  # committed, then the connection dies: no answer
                return
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if replayed:
                self.send_header("Idempotent-Replayed", "true")
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler


class RecordingServer:
    """`with RecordingServer() as server:` — `server.url`, `server.recorder`."""

    def __init__(self, recorder: Recorder | None = None) -> None:
        self.recorder = recorder or Recorder()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.recorder))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, method: str, path: str, body: Any | Callable[[Received], tuple[int, Any]]) -> None:
        self.recorder.answers[(method, path)] = body


def json_patch(document: Any, operations: list[dict[str, Any]]) -> tuple[int, Any]:
    """RFC 6902 `test`, `replace` and `add` on object members, as the API server applies them: the
    patched copy, or 422 naming the failed test (nothing changed)."""
    patched = copy.deepcopy(document)
    for operation in operations:
        parts = [part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]]
        parent = patched
        for part in parts[:-1]:
            parent = parent.setdefault(part, {}) if operation["op"] == "add" else parent.get(part, {})
        if operation["op"] == "test":
            if parts[-1] not in parent or parent[parts[-1]] != operation["value"]:
                return 422, {"kind": "Status", "code": 422, "message": f"testing value {operation['path']} failed: test failed"}
        elif operation["op"] in ("replace", "add"):
            parent[parts[-1]] = copy.deepcopy(operation["value"])
        else:
            return 422, {"kind": "Status", "code": 422, "message": f"unsupported operation {operation['op']}"}
    return 200, patched


def merge_patch(document: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(document) if isinstance(document, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged
