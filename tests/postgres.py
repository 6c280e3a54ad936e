"""A real PostgreSQL server for the tests: Debian's postgresql 15 binaries, on loopback only.

`start_postgres(tmp_dir)` starts one and hands back its URL and a function that stops it (the
multi-host e2e test uses it as is); the `postgres_server` fixture shares one for the whole
session, `postgres_url` gives a test a fresh database on it, and `records` runs a test on SQLite
and on PostgreSQL.

Tests run as root and initdb refuses root: the server then runs as the `postgres` OS user, in
a data folder of its own under the system temp folder (pytest's are root's alone). It listens
on 127.0.0.1 and a free port, keeps its unix socket inside that folder, and trusts loopback
connections: a throwaway server nobody else can reach. With no binaries the fixture FAILS.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from stanch.config.settings import Settings
from stanch.stores.records import Records

POSTGRES_BIN = Path(os.environ.get("STANCH_TEST_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"
START_SECONDS = 30


class PostgresMissing(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_postgres(tmp_dir: Path) -> tuple[str, Callable[[], None]]:
    """Start a server; returns its URL (database `postgres`, user `postgres`, no password) and a
    function that stops it and removes its data. The server's log is `tmp_dir/postgres.log`."""
    initdb, postgres = POSTGRES_BIN / "initdb", POSTGRES_BIN / "postgres"
    if not (initdb.exists() and postgres.exists()):
        raise PostgresMissing(
            f"no PostgreSQL server binaries in {POSTGRES_BIN}: `.ci/run` installs Debian's postgresql (apt-get install postgresql)"
        )
    as_root = os.geteuid() == 0
    user = OS_USER if as_root else None  # who initdb and the server run as
    folder = Path(tempfile.mkdtemp(prefix="stanch-postgres-"))
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    if as_root:
        for path in (folder, sockets):
            shutil.chown(path, OS_USER, OS_USER)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    log = (tmp_dir / "postgres.log").open("ab")
    env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8", "HOME": str(folder)}
    subprocess.run(
        [initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"],
        check=True,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=folder,
        user=user,
        group=user,
        extra_groups=[] if as_root else None,
    )
    port = free_port()
    # Durability off: a test server's data dies with it anyway, and commits get much faster.
    server = subprocess.Popen(
        [postgres, "-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", sockets]
        + ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=folder,
        user=user,
        group=user,
        extra_groups=[] if as_root else None,
    )

    def stop() -> None:
        server.terminate()  # SIGTERM: a "smart" shutdown; the tests' connections are gone by now
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)

    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", connect_timeout=2).close()
            return url, stop
        except psycopg.OperationalError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop()
                raise RuntimeError(f"PostgreSQL did not start within {START_SECONDS} s; see {tmp_dir / 'postgres.log'}") from None
            time.sleep(0.1)


def create_database(server_url: str) -> str:
    """A new, empty database on the server; returns its URL."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    return server_url.rsplit("/", 1)[0] + f"/{name}"


# The session's server. Each test module that imports the fixture gets a fixture of its own from
# pytest, so the server is kept here: one per test run, stopped when the run ends.
_session_server: list[str] = []


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> str:
    """One server for the whole run (a start costs seconds); its URL."""
    if not _session_server:
        try:
            url, stop = start_postgres(tmp_path_factory.mktemp("postgres"))
        except PostgresMissing as missing:
            pytest.fail(str(missing))
        pytestconfig.add_cleanup(stop)
        _session_server.append(url)
    return _session_server[0]


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh database for one test."""
    return create_database(postgres_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def records(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Records]:
    """The records database a test runs on, once on each kind: SQLite under the test's home (the
    embedded default), and a fresh PostgreSQL database (many hosts)."""
    if request.param == "sqlite":
        found = Records.from_settings(Settings(home=tmp_path))
    else:
        found = Records(create_database(request.getfixturevalue("postgres_server")))
    yield found
    found.dispose()
