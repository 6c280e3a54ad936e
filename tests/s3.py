"""An S3-compatible server on loopback for tests: moto's server, a real HTTP server in a process of
its own, standing in for AWS S3, MinIO or Ceph. Stanch reaches it as it would any bucket: through
obstore, configured by STANCH_ARTEFACTS and the standard AWS_* variables.

    server, stop = start_s3_server(logs_dir)
    try:
        bucket_env = server.bucket("incident-artefacts")   # a new bucket, and the variables for it
        subprocess.run([...], env={**os.environ, **bucket_env})
    finally:
        stop()

`start_s3_server_in_process()` runs the same server on a thread instead. In pytest: the
`s3_server` fixture (one server per test session) and `s3_env` (a fresh bucket per
test, its variables set in this process, as obstore reads them from the environment).
"""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

# moto accepts any credentials; these only have to be present, as on a real deployment.
ACCESS_KEY_ID = "stanch-test-key"
SECRET_ACCESS_KEY = "stanch-test-secret"
REGION = "us-east-1"
_buckets = itertools.count(1)


@dataclass(frozen=True)
class S3Server:
    url: str  # the endpoint, http://127.0.0.1:PORT

    def env(self, bucket: str, prefix: str = "stanch") -> dict[str, str]:
        """What a Stanch process needs to keep its artefacts in `bucket` under `prefix`."""
        return {
            "STANCH_ARTEFACTS": f"s3://{bucket}/{prefix}",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_REGION": REGION,
            "AWS_ALLOW_HTTP": "true",  # loopback, plain HTTP
        }

    def bucket(self, name: str | None = None, prefix: str = "stanch") -> dict[str, str]:
        """Create a bucket (a new one unless named) and return the variables for it."""
        name = name or f"stanch-test-{next(_buckets)}"
        answer = httpx.put(f"{self.url}/{name}", timeout=10)
        if answer.status_code not in (200, 409):  # 409: it exists already (BucketAlreadyOwnedByYou)
            raise RuntimeError(f"creating bucket {name} on {self.url}: {answer.status_code} {answer.text[:300]}")
        return self.env(name, prefix)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_s3_server(logs_dir: Path, timeout: float = 30) -> tuple[S3Server, Callable[[], None]]:
    """Start `python -m moto.server` on a free loopback port; return it once it answers, and a
    function that stops it. Its output goes to logs_dir/moto-s3.log."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (logs_dir / "moto-s3.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def stop() -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        log.close()

    server = S3Server(url=f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop()
            raise RuntimeError(f"moto's S3 server exited with {process.returncode}: see {logs_dir / 'moto-s3.log'}")
        try:
            if httpx.get(f"{server.url}/moto-api/", timeout=2).status_code == 200:
                return server, stop
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop()
    raise RuntimeError(f"moto's S3 server did not answer on {server.url} within {timeout:.0f} s: see {logs_dir / 'moto-s3.log'}")


def start_s3_server_in_process() -> tuple[S3Server, Callable[[], None]]:
    """The same server on a thread of this process (moto's ThreadedMotoServer): no child to
    manage, for a test that stays in one process."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    return S3Server(url=f"http://127.0.0.1:{port}"), moto.stop


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server, stop = start_s3_server(tmp_path_factory.mktemp("s3-logs"))
    try:
        yield server
    finally:
        stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh bucket, its variables set in this process (obstore reads them from the environment)."""
    env = s3_server.bucket()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env
