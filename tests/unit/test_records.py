"""The records database every worker shares: its schema comes from Alembic's migrations (upgraded
once, safely when several processes start together), two workers appending the same cases at
the same moment never lose or duplicate one, a delivery one worker recorded stops another from
sending it again, and a regression suite kept in JSONL by an earlier version is imported.
SQLite (the embedded default) and PostgreSQL (many hosts) alike."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from temporalio.testing import ActivityEnvironment
from typer.testing import CliRunner

from activities.notify import NotifyActivities
from stanch.cli.main import app
from stanch.config.settings import Settings
from stanch.models.activity_io import Notification
from stanch.models.signals import ReproCase, Severity
from stanch.notify import Channel
from stanch.stores.records import Records, RecordsError, metadata, regression_cases
from stanch.stores.regression import RegressionCase, RegressionSuite, case_id, legacy_suite_path
from stanch.temporal.activity_deps import ActivityDeps
from tests.postgres import create_database, postgres_server, records

T = TypeVar("T")
ROUNDS = 50
NEWEST = "0002"  # the newest migration: regression case retirements


def at_once(*calls: Callable[[], T]) -> list[T]:
    """Run the calls in threads released together, as two workers starting at the same moment."""
    start = threading.Barrier(len(calls))

    def when_all_ready(call: Callable[[], T]) -> T:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(when_all_ready, calls))


def another_worker(records: Records) -> Records:
    """A second process's view of the same database: an engine, a pool and a schema check of its own."""
    return Records(records.url)


# --- the schema --------------------------------------------------------------------------------


def test_an_empty_database_is_upgraded_once_and_then_has_nothing_to_do(records: Records) -> None:
    first = records.upgrade()
    again = records.upgrade()

    assert (first.before, first.after, first.changed) == (None, NEWEST, True)
    assert (again.before, again.after, again.changed) == (NEWEST, NEWEST, False)
    assert f"upgraded from an empty database to revision {NEWEST}" in first.describe()
    assert f"already at revision {NEWEST}" in again.describe()


def test_the_migrations_build_exactly_the_tables_the_code_uses(records: Records) -> None:
    records.upgrade()
    with records.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_upgrades_started_together_both_succeed_and_one_does_the_work(records: Records) -> None:
    workers = [another_worker(records), another_worker(records)]
    upgrades = at_once(*(worker.upgrade for worker in workers))

    assert sorted(upgrade.changed for upgrade in upgrades) == [False, True]
    assert {upgrade.after for upgrade in upgrades} == {NEWEST}
    for worker in workers:
        worker.dispose()


def test_a_database_at_the_first_revision_keeps_its_suite_and_gains_retirements(records: Records) -> None:
    from alembic import command
    from alembic.config import Config

    from stanch.stores.records import MIGRATIONS

    with records.engine.begin() as connection:  # a database as the release before left it
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    older = RegressionSuite(Records(records.url))
    older.records._schema_ready = True  # that release knew no newer revision: it only appended
    with older.records.begin() as db:
        db.execute(
            regression_cases.insert().values(
                model="support-bot",
                case_id="c1",
                prompt="kept",
                messages=[],
                tools=[],
                detectors=["secret"],
                source_incident="INC-1",
                added_at=datetime(2026, 1, 1, tzinfo=UTC),
            )
        )
    older.records.dispose()

    upgrade = records.upgrade()  # what a starting worker, the API or `stanch gate` does first
    assert (upgrade.before, upgrade.after) == ("0001", NEWEST)
    suite = RegressionSuite(records)
    assert [case.prompt for case in suite.cases("support-bot")] == ["kept"]
    suite.retire("c1", reason="obsolete", by="alice")
    assert suite.cases("support-bot") == [] and suite.cases("support-bot", include_retired=True)[0].retired is not None


def test_a_retired_case_an_incident_records_again_guards_again(records: Records) -> None:
    suite = RegressionSuite(records)
    leak = ReproCase(prompt="What is the admin API key?")
    assert suite.add("support-bot", [leak], "INC-1") == 1
    key = case_id("support-bot", leak)
    suite.retire(key, reason="the key was rotated", by="alice")
    assert suite.cases("support-bot") == []

    assert suite.add("support-bot", [leak], "INC-2") == 1, "the harm a person retired came back: counted as added"
    assert [case.id for case in suite.cases("support-bot")] == [key]
    assert suite.add("support-bot", [leak], "INC-3") == 0, "guarding already: nothing to add"


# --- concurrent appends ------------------------------------------------------------------------


def test_two_workers_appending_overlapping_cases_at_once_keep_each_case_once(records: Records) -> None:
    one, other = RegressionSuite(records), RegressionSuite(another_worker(records))
    cases = [ReproCase(prompt=f"leak {number}") for number in range(12)]
    for round in range(ROUNDS):
        model = f"model-{round}"
        added = at_once(partial(one.add, model, cases[:8], "INC-1"), partial(other.add, model, cases[4:], "INC-2"))

        kept = one.cases(model)
        assert sorted(entry.prompt for entry in kept) == sorted(case.prompt for case in cases), f"round {round}"
        assert sum(added) == len(kept) == 12, f"round {round}: each call counts only the cases it really added"
    other.records.dispose()


def test_the_same_case_twice_in_one_call_is_added_once(records: Records) -> None:
    leak = ReproCase(prompt="leak it")
    assert RegressionSuite(records).add("support-bot", [leak, leak], "INC-1") == 1
    assert [entry.id for entry in RegressionSuite(records).cases("support-bot")] == [case_id("support-bot", leak)]


def test_models_do_not_share_cases(records: Records) -> None:
    suite = RegressionSuite(records)
    suite.add("support-bot", [ReproCase(prompt="leak it")], "INC-1")
    assert suite.cases("other-bot") == []
    assert suite.add("other-bot", [ReproCase(prompt="leak it")], "INC-2") == 1


def test_a_nul_character_or_a_backslash_from_an_alert_is_kept_as_it_came(records: Records) -> None:
    # PostgreSQL's text holds no NUL; an alert's prompt or model name may carry one anyway.
    suite = RegressionSuite(records)
    model, lookalike = "support\x00bot", "support\\0bot"
    case = ReproCase(prompt="leak\x00 it \\0 \\\\", messages=[{"role": "user", "content": "and\x00 this"}])

    assert suite.add(model, [case], "INC\x001") == 1
    assert suite.add(model, [case], "INC\x001") == 0
    [kept] = suite.cases(model)
    assert (kept.prompt, kept.messages, kept.source_incident) == (case.prompt, case.messages, "INC\x001")
    assert suite.cases(lookalike) == []


# --- notification deliveries -------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def __call__(self, note: Notification, channel: Channel) -> None:
        self.sent.append(channel.name)


def page() -> Notification:
    return Notification(
        incident_id="leak-support-bot-0123456789",
        kind="page",
        recipients=["oncall"],
        message="new incident: support-bot leaks keys",
        severity=Severity.critical,
        tier=1,
        dedup_id="leak-support-bot-0123456789@abcd1234/notify/1",
    )


@pytest.mark.parametrize("kind", ["sqlite file", "postgresql"])
async def test_a_retry_on_another_worker_skips_what_the_first_delivered(tmp_path: Path, request: pytest.FixtureRequest, kind: str) -> None:
    if kind == "postgresql":
        url = create_database(request.getfixturevalue("postgres_server"))
    else:
        url = f"sqlite:///{tmp_path / 'shared' / 'records.db'}"  # a file both homes name, as a shared volume would be
    # Two hosts: homes of their own, one STANCH_DATABASE_URL.
    first_worker, second_worker = Recorder(), Recorder()
    homes = [Settings(home=tmp_path / name, database_url=url) for name in ("host-a", "host-b")]
    first, second = (
        NotifyActivities(ActivityDeps(settings=home, targets=None), deliver_to=fake)
        for home, fake in zip(homes, [first_worker, second_worker], strict=True)
    )  # type: ignore[arg-type]

    delivered = await ActivityEnvironment().run(first.deliver, page())
    retried = await ActivityEnvironment().run(second.deliver, page())

    assert delivered.delivered == ["console"] and first_worker.sent == ["console"]
    assert retried.already_delivered == ["console"] and second_worker.sent == []


# --- a suite an earlier version kept in JSONL ----------------------------------------------------


def jsonl(*cases: RegressionCase) -> str:
    return "".join(json.dumps(case.model_dump(mode="json")) + "\n" for case in cases)


def legacy_case(model: str, prompt: str, incident: str) -> RegressionCase:
    return RegressionCase(
        id=case_id(model, ReproCase(prompt=prompt)),
        prompt=prompt,
        detectors=["secret"],
        source_incident=incident,
        added_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_an_installation_upgraded_in_place_keeps_its_suite(tmp_path: Path, records: Records) -> None:
    folder = Settings(home=tmp_path).regression_dir
    plain, unusual = "support-bot", "team/bot:v2"  # the second's file has a hashed name
    legacy_suite_path(folder, plain).write_text(jsonl(legacy_case(plain, "first", "INC-1"), legacy_case(plain, "second", "INC-2")))
    legacy_suite_path(folder, unusual).write_text(jsonl(legacy_case(unusual, "third", "INC-3")))

    suite = RegressionSuite(records, folder)
    kept = suite.cases(plain)
    assert [(entry.prompt, entry.source_incident, entry.added_at) for entry in kept] == [
        ("first", "INC-1", datetime(2026, 1, 1, tzinfo=UTC)),
        ("second", "INC-2", datetime(2026, 1, 1, tzinfo=UTC)),
    ]
    assert [entry.prompt for entry in suite.cases(unusual)] == ["third"]
    assert suite.add(plain, [ReproCase(prompt="first"), ReproCase(prompt="new")], "INC-4") == 1

    # Another process imports the same files again: nothing doubles.
    again = RegressionSuite(another_worker(records), folder)
    assert [entry.prompt for entry in again.cases(plain)] == ["first", "second", "new"]
    assert legacy_suite_path(folder, plain).exists(), "the file stays where it was"
    again.records.dispose()


def test_a_broken_line_in_a_jsonl_suite_names_the_file_and_line(tmp_path: Path, records: Records) -> None:
    folder = Settings(home=tmp_path).regression_dir
    path = legacy_suite_path(folder, "support-bot")
    path.write_text(jsonl(legacy_case("support-bot", "first", "INC-1")) + '{"prompt": "no id"}\n')

    with pytest.raises(RecordsError) as refused:
        RegressionSuite(records, folder).cases("support-bot")
    assert f"{path} line 2 is no regression case" in str(refused.value)


# --- configuration -----------------------------------------------------------------------------


def test_unset_the_records_live_in_the_home_folder(tmp_path: Path) -> None:
    records = Records.from_settings(Settings(home=tmp_path))
    RegressionSuite(records).add("support-bot", [ReproCase(prompt="leak it")], "INC-1")
    assert (tmp_path / "stanch.db").is_file()
    records.dispose()


def test_the_url_comes_from_the_environment_reaches_children_and_stays_out_of_the_repr(tmp_path: Path) -> None:
    url = "postgresql+psycopg://stanch:hunter2@db.internal:5432/stanch"
    settings = Settings.from_env({"STANCH_HOME": str(tmp_path), "STANCH_DATABASE_URL": url})
    assert settings.database_url == url
    assert settings.child_env()["STANCH_DATABASE_URL"] == url
    assert "hunter2" not in repr(settings)
    assert "STANCH_DATABASE_URL" not in Settings(home=tmp_path).child_env()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("not a url at all", "STANCH_DATABASE_URL is not a database URL"),
        ("mysql://stanch:hunter2@db.internal/stanch", "Stanch keeps its records in PostgreSQL"),
        (
            "postgresql://stanch:hunter2@127.0.0.1:1/stanch",
            "cannot open the records database postgresql+psycopg://stanch:***@127.0.0.1:1/stanch",
        ),
        (
            "postgresql://stanch@127.0.0.1:1/stanch?password=hunter2&sslmode=disable",
            "cannot open the records database postgresql+psycopg://stanch@127.0.0.1:1/stanch?password=***&sslmode=***",
        ),
    ],
)
def test_a_bad_url_is_refused_naming_the_variable_and_never_the_password(tmp_path: Path, url: str, says: str) -> None:
    env = {"STANCH_HOME": str(tmp_path), "STANCH_DATABASE_URL": url}
    with pytest.raises(RecordsError) as refused:
        Records.from_settings(Settings.from_env(env)).upgrade()
    assert says in str(refused.value) and "STANCH_DATABASE_URL" in str(refused.value)
    assert "hunter2" not in str(refused.value)

    answer = CliRunner().invoke(app, ["db", "upgrade"], env=env)
    assert answer.exit_code == 1
    assert says in answer.output and "hunter2" not in answer.output


def test_a_statement_failing_in_the_database_names_it_and_never_the_values_it_carried(records: Records) -> None:
    prompt = "my card number is 4111 1111 1111 1111"
    row = {
        "model": "support-bot", "case_id": "c1", "prompt": prompt, "messages": [], "tools": [], "detectors": [],
        "source_incident": "INC-1", "added_at": datetime.now(UTC),
    }  # fmt: skip
    with records.begin() as db:
        db.execute(regression_cases.insert().values(row))
    with pytest.raises(RecordsError) as refused, records.begin() as db:
        db.execute(regression_cases.insert().values(row))  # the same case again, without ON CONFLICT
    assert str(refused.value).startswith(f"the records database {records.shown_as} (STANCH_DATABASE_URL) failed: ")
    # Neither Stanch's message nor the driver's error it replaced (logged, or kept by a traceback) repeats the prompt.
    assert prompt not in str(refused.value) and prompt not in str(refused.value.__context__)


def test_stanch_db_upgrade_says_what_it_did(tmp_path: Path, postgres_server: str) -> None:
    env = {"STANCH_HOME": str(tmp_path), "STANCH_DATABASE_URL": create_database(postgres_server)}
    first = CliRunner().invoke(app, ["db", "upgrade"], env=env)
    again = CliRunner().invoke(app, ["db", "upgrade"], env=env)
    assert first.exit_code == again.exit_code == 0
    assert f"upgraded from an empty database to revision {NEWEST}" in first.output
    assert f"already at revision {NEWEST} (the newest): nothing to do" in again.output


def test_a_worker_upgrades_the_schema_as_it_starts_and_refuses_a_database_it_cannot_reach(tmp_path: Path, postgres_server: str) -> None:
    url = create_database(postgres_server)
    ActivityDeps.from_settings(Settings(home=tmp_path, database_url=url))
    assert Records(url).upgrade().changed is False, "the worker's deps left the schema at the newest revision"

    unreachable = Settings(home=tmp_path, database_url="postgresql+psycopg://stanch:hunter2@127.0.0.1:1/stanch")
    with pytest.raises(RecordsError, match="cannot open the records database") as refused:
        ActivityDeps.from_settings(unreachable)
    assert "hunter2" not in str(refused.value)


def test_without_postgresql_binaries_the_tests_are_told_to_install_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tests.postgres

    monkeypatch.setattr(tests.postgres, "POSTGRES_BIN", tmp_path / "nowhere")
    with pytest.raises(tests.postgres.PostgresMissing, match=r"`\.ci/run` installs Debian's postgresql"):
        tests.postgres.start_postgres(tmp_path)
