"""The records database: what several workers append to or look up (the regression suite, the
notification deliveries), shared by every host of an installation.

`STANCH_DATABASE_URL` chooses it: unset, a SQLite file at `STANCH_HOME/stanch.db` (one host,
the embedded default); `postgresql+psycopg://user:password@host:5432/stanch` for many hosts.
The schema is Alembic's (`stanch/stores/migrations/`): the worker upgrades it to the newest
revision at start, `stanch db upgrade` does it by hand, and anything that reads or writes
makes sure of it first. A password in the URL never appears in a log or an error: the URL is
always shown as SQLAlchemy renders it with the password hidden.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from threading import Lock
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import BaseModel
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Dialect, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from stanch.config.settings import Settings

logger = logging.getLogger("stanch.records")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
URL_VARIABLE = "STANCH_DATABASE_URL"
# Any number will do as long as nothing else in the database takes the same advisory lock.
UPGRADE_LOCK_KEY = 0x5374616E6368  # "Stanch"
SQLITE_BUSY_SECONDS = 30  # how long a SQLite writer waits for another one before failing
# How long a PostgreSQL connection attempt may take: a database host that does not answer fails
# the step (Temporal retries it) in seconds, not after the operating system's TCP timeout.
CONNECT_TIMEOUT_SECONDS = 10


class NulSafeText(TypeDecorator[str]):
    """Text that may hold a NUL character (a prompt or a model name from an alert may), which
    PostgreSQL's text refuses: there it is stored escaped (`\\0`, and `\\` for a backslash) and
    read back as it was. SQLite stores it as it is. Comparisons escape alike, so lookups match."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or dialect.name != "postgresql":
            return value
        return value.replace("\\", "\\\\").replace("\x00", "\\0")

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or dialect.name != "postgresql" or "\\" not in value:
            return value
        return re.sub(r"\\(.)", lambda escaped: "\x00" if escaped[1] == "0" else escaped[1], value)


# The tables as the newest migration leaves them (tests/unit/test_records.py checks the two agree).
metadata = MetaData()

regression_cases = Table(
    "regression_cases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # the order cases were added in
    Column("model", NulSafeText, nullable=False),
    Column("case_id", String(64), nullable=False),
    Column("prompt", NulSafeText, nullable=False),
    Column("messages", JSON, nullable=False),
    Column("tools", JSON, nullable=False),
    Column("detectors", JSON, nullable=False),
    Column("source_incident", NulSafeText, nullable=False),
    Column("added_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("model", "case_id", name="uq_regression_cases_model_case_id"),
)

# A retired case stops guarding changes; why, by whom and when is kept beside it (migration 0002).
regression_case_retirements = Table(
    "regression_case_retirements",
    metadata,
    Column("model", NulSafeText, nullable=False),
    Column("case_id", String(64), nullable=False),
    Column("reason", NulSafeText, nullable=False),
    Column("retired_by", NulSafeText, nullable=False),
    Column("retired_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("model", "case_id", name="pk_regression_case_retirements"),
)

notification_deliveries = Table(
    "notification_deliveries",
    metadata,
    Column("dedup_id", NulSafeText, nullable=False),
    Column("channel", NulSafeText, nullable=False),
    Column("incident_id", NulSafeText, nullable=False),
    Column("delivered_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("dedup_id", "channel", name="pk_notification_deliveries"),
)


class RecordsError(Exception):
    """The records database cannot be used as configured; the message names what to fix."""


class Upgrade(BaseModel):
    """What an upgrade did: the schema revision before (None: an empty database) and after."""

    database: str  # the URL, password hidden
    before: str | None
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def describe(self) -> str:
        if not self.changed:
            return f"records database {self.database} is already at revision {self.after} (the newest): nothing to do"
        start = "an empty database" if self.before is None else f"revision {self.before}"
        return f"records database {self.database} upgraded from {start} to revision {self.after} (the newest)"


def database_url(settings: Settings) -> URL:
    """STANCH_DATABASE_URL parsed, or the SQLite file under home; a bad one raises RecordsError."""
    if not settings.database_url:
        return URL.create("sqlite+pysqlite", database=str(settings.home / "stanch.db"))
    try:
        url = make_url(settings.database_url)
    except ArgumentError:
        # Not even the URL's shape: repeat none of it, it may hold a password.
        raise RecordsError(
            f"{URL_VARIABLE} is not a database URL; expected e.g. postgresql+psycopg://user:password@host:5432/stanch"
        ) from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")  # the driver Stanch ships, not SQLAlchemy's default psycopg2
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise RecordsError(
            f"{URL_VARIABLE}={hidden(url)}: Stanch keeps its records in PostgreSQL (postgresql+psycopg://...) or SQLite (sqlite:///path)"
        )
    return url


def hidden(url: URL) -> str:
    """The URL as a log or an error may show it: the password hidden, and every value of its
    query too (psycopg takes `?password=...` there as well)."""
    shown = url.set(query={}).render_as_string(hide_password=True)
    return shown + ("?" + "&".join(f"{name}=***" for name in url.query) if url.query else "")


class Records:
    """One records database. Cheap to build: nothing connects until the first use, which brings
    the schema up to date once per object."""

    def __init__(self, url: URL | str) -> None:
        self.url = make_url(url) if isinstance(url, str) else url
        self.shown_as = hidden(self.url)
        self._engine: Engine | None = None
        self._schema_ready = False
        self._schema_lock = Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Records:
        return cls(database_url(settings))

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`: the INSERT ... ON CONFLICT of one or the other."""
        return self.url.get_backend_name()

    def insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT in this database's dialect: both offer `on_conflict_do_nothing()`, which is
        how two workers appending the same row at once end up with one."""
        return postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._create_engine()
        return self._engine

    def _create_engine(self) -> Engine:
        try:
            if self.dialect == "sqlite":
                return sqlite_engine(self.url)
            # hide_parameters: a failing statement's message (logged, and in an activity's failure)
            # would otherwise carry the values it bound, prompts from an alert among them.
            # A `?connect_timeout=` in STANCH_DATABASE_URL wins over the default.
            timeout = {} if "connect_timeout" in self.url.query else {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
            return create_engine(self.url, pool_pre_ping=True, hide_parameters=True, connect_args=timeout)
        except (ArgumentError, NoSuchModuleError, ImportError) as error:
            raise RecordsError(f"{URL_VARIABLE}={self.shown_as}: {type(error).__name__}, no database driver for it") from None

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction on an up-to-date schema: committed when the block ends, rolled back if it raises."""
        self.ensure_schema()
        with self._transaction() as connection:
            yield connection

    def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                self.upgrade()

    def upgrade(self) -> Upgrade:
        """Bring the schema to the newest revision. Safe when several processes start at once:
        the whole upgrade is one transaction, under PostgreSQL's advisory lock or SQLite's write
        lock, so the second one waits and then finds nothing to do."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        newest = ScriptDirectory.from_config(config).get_current_head()
        assert newest is not None, "the migrations folder holds no revision"
        with self._transaction() as connection:
            if self.dialect == "postgresql":
                # Released when the transaction ends; the DDL commits (or rolls back) with it.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK_KEY})
            before = MigrationContext.configure(connection).get_current_revision()
            if before != newest:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        self._schema_ready = True
        done = Upgrade(database=self.shown_as, before=before, after=newest)
        if done.changed:
            logger.info("%s", done.describe())
        return done

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A transaction; the database failing in it (a lost connection, a failover) raises
        RecordsError naming the database and the driver's first line, never the statement's
        values (prompts, incident ids: the driver's DETAIL lines repeat them)."""
        with self._connect() as connection:
            try:
                with connection.begin():
                    yield connection
            except SQLAlchemyError as error:
                raise RecordsError(f"the records database {self.shown_as} ({URL_VARIABLE}) failed: {_first_line(error)}") from None

    def _connect(self) -> Connection:
        """A connection; a database that cannot be reached raises RecordsError naming it (password
        hidden), not a driver's traceback."""
        try:
            return self.engine.connect()
        except SQLAlchemyError as error:
            raise RecordsError(f"cannot open the records database {self.shown_as} ({URL_VARIABLE}): {_first_line(error)}") from None

    def dispose(self) -> None:
        """Close the pooled connections (tests, and a process about to exit)."""
        if self._engine is not None:
            self._engine.dispose()


def _first_line(error: SQLAlchemyError) -> str:
    # The driver's own message, without SQLAlchemy's statement dump or the driver's DETAIL lines.
    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def sqlite_engine(url: URL) -> Engine:
    """SQLite with real transactions: BEGIN IMMEDIATE takes the write lock at the start, so two
    processes on one home (a worker and `stanch db upgrade`) wait for each other instead of failing
    half-way; WAL lets readers go on meanwhile."""
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, hide_parameters=True, connect_args={"timeout": SQLITE_BUSY_SECONDS})

    @event.listens_for(engine, "connect")
    def _connected(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver starts no transaction of its own: we do
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")  # kept by the file: once is enough
        except sqlite3.OperationalError:
            pass  # another connection holds the file right now; WAL only spares readers a wait

    @event.listens_for(engine, "begin")
    def _began(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
