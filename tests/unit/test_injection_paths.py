"""No file or folder is named by an alert's value as written: a model's regression suite is rows
in the records database, and the file an earlier version kept it in (imported from there) stays
inside its folder, one level deep, a plain name keeping the file it always had; evidence
and review documents are named by their content, whatever the incident's occurrence says."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from activities.evidence import EvidenceActivities
from activities.review import ReviewActivities
from stanch.config.settings import Settings
from stanch.models.actions import TargetRef
from stanch.models.activity_io import EvidenceInput, ReviewInput
from stanch.models.signals import ReproCase, Severity
from stanch.runbooks.loader import default_runbooks_dir, load_runbook
from stanch.stores.records import Records
from stanch.stores.regression import RegressionCase, RegressionSuite, legacy_suite_path
from stanch.temporal.activity_deps import ActivityDeps

# Absolute names point into the test's own folder ("{tmp_path}" is filled in): a test run on code
# without the fix must not write anywhere else.
UNSAFE_NAMES = [
    "../../escaped",
    "a/b",
    "..",
    ".",
    "a\\b",
    "nested/../../../x",
    "{tmp_path}/absolute",
    'quote"d',
    "line\nbreak",
    "nul\x00byte",
]
PLAIN_OCCURRENCE = "harmful-output-support-bot-0123456789@abcd1234"


def concrete(name: str, tmp_path: Path) -> str:
    return name.replace("{tmp_path}", str(tmp_path))


def files_under(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


@pytest.fixture
def home(tmp_path: Path) -> Path:
    # Two levels below tmp_path, so a name that climbs two levels still lands where the test looks.
    return tmp_path / "stanch" / "home"


# --- the regression suite ------------------------------------------------------------------------


def suite_of(home: Path) -> RegressionSuite:
    settings = Settings(home=home)
    return RegressionSuite(Records.from_settings(settings), settings.regression_dir)


@pytest.mark.parametrize("model", UNSAFE_NAMES)
def test_a_models_suite_writes_no_file_of_its_own(tmp_path: Path, home: Path, model: str) -> None:
    model = concrete(model, tmp_path)
    folder = Settings(home=home).regression_dir

    added = suite_of(home).add(model, [ReproCase(prompt="leak it")], "inc-1")

    assert added == 1
    assert {path.relative_to(home).as_posix() for path in files_under(tmp_path)} <= {"stanch.db", "stanch.db-wal", "stanch.db-shm"}
    assert legacy_suite_path(folder, model).parent == folder
    assert [case.prompt for case in suite_of(home).cases(model)] == ["leak it"]


def test_a_plain_model_keeps_the_suite_file_it_always_had(home: Path) -> None:
    folder = Settings(home=home).regression_dir
    recorded = RegressionCase(id="c1", prompt="old case", source_incident="inc-0", added_at=datetime(2026, 1, 1, tzinfo=UTC))
    (folder / "support-bot.jsonl").write_text(recorded.model_dump_json() + "\n")

    assert legacy_suite_path(folder, "support-bot") == folder / "support-bot.jsonl"
    for model in ("llama-3.1_8b@eu", "llama3:8b", "Mistral 7B Instruct", "a..b"):
        assert legacy_suite_path(folder, model) == folder / f"{model}.jsonl"
    assert [case.prompt for case in suite_of(home).cases("support-bot")] == ["old case"]


def test_distinct_models_never_share_a_suite_and_the_same_model_always_finds_its_own(home: Path) -> None:
    folder = Settings(home=home).regression_dir
    # Each of these becomes "a-b" once its unsafe character is replaced: only the digest parts them.
    models = ["a-b", "a/b", "a\\b", "a b", "a:b", "a\nb", "a/b/", "a-b/"]

    paths = [legacy_suite_path(folder, model) for model in models]

    assert len(set(paths)) == len(models)
    assert all(path.parent == folder for path in paths)
    assert paths == [legacy_suite_path(folder, model) for model in models]


def test_a_plain_model_named_like_a_hashed_file_does_not_take_its_file(home: Path) -> None:
    folder = Settings(home=home).regression_dir
    hashed = legacy_suite_path(folder, "a/b")
    lookalike = hashed.name.removesuffix(".jsonl")

    assert legacy_suite_path(folder, lookalike) != hashed
    assert legacy_suite_path(folder, lookalike).parent == folder


# --- evidence and review documents ----------------------------------------------------------------


class StatefulTarget:
    async def state(self, model: str) -> dict:
        return {"served_version": "2"}


class OneTarget:
    def get(self, ref: TargetRef) -> StatefulTarget:
        return StatefulTarget()


def evidence_activities(home: Path) -> EvidenceActivities:
    return EvidenceActivities(ActivityDeps(settings=Settings(home=home), targets=OneTarget()))  # type: ignore[arg-type]


def evidence_input(occurrence: str) -> EvidenceInput:
    return EvidenceInput(
        incident_id="inc-1", occurrence=occurrence, runbook="r", runbook_sha256="0" * 64, target=TargetRef(model="m"), signals=[]
    )


@pytest.mark.parametrize("occurrence", UNSAFE_NAMES)
async def test_evidence_is_named_by_its_content_whatever_the_occurrence(tmp_path: Path, home: Path, occurrence: str) -> None:
    result = await ActivityEnvironment().run(evidence_activities(home).snapshot_evidence, evidence_input(concrete(occurrence, tmp_path)))

    (written,) = files_under(tmp_path)
    assert written == (home / "artefacts" / "evidence" / f"{result.sha256}-snapshot.json").resolve()
    assert result.location == written.as_uri()


def review_input(occurrence: str) -> ReviewInput:
    runbook = load_runbook(default_runbooks_dir() / "harmful-output.yaml").runbook
    return ReviewInput(
        incident_id="inc-1", occurrence=occurrence, runbook=runbook, target=TargetRef(model="m"), severity=Severity.high, status="closed"
    )


def review_activities(home: Path) -> ReviewActivities:
    return ReviewActivities(ActivityDeps(settings=Settings(home=home), targets=None))  # type: ignore[arg-type]  # never calls a target


@pytest.mark.parametrize("occurrence", UNSAFE_NAMES)
async def test_review_documents_are_named_by_their_content_whatever_the_occurrence(tmp_path: Path, home: Path, occurrence: str) -> None:
    result = await ActivityEnvironment().run(review_activities(home).write_review, review_input(concrete(occurrence, tmp_path)))

    reviews = (home / "artefacts" / "reviews").resolve()
    documents = [path for path in files_under(tmp_path) if path.parent == reviews]
    assert sorted(path.name.split("-", 1)[1] for path in documents) == ["compliance.json", "postmortem.md", "tasks.json"]
    assert result.postmortem == (reviews / f"{result.postmortem_sha256}-postmortem.md").as_uri()
    # Beside the documents, only the records database the regression suite lives in.
    assert all(path.parent in (reviews, home) for path in files_under(tmp_path))
    assert {path.name for path in files_under(tmp_path) if path.parent == home} <= {"stanch.db", "stanch.db-wal", "stanch.db-shm"}
