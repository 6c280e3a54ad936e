"""Determinism guard: every committed history replays with today's workflow code, and a
non-deterministic edit to the workflow is caught by that very replay.

Every json file under tests/histories/ is replayed. A file's branch is its name up to an
optional `--<suffix>` (`high_severity_restored.json`, `high_severity_restored--before-patch-2.json`),
and every branch `tests.histories.refresh` knows has at least one history. Refresh with
`.venv/bin/python -m tests.histories.refresh` after an intended change; after a change guarded by
workflow.patched, refresh with --keep-old so the old histories stay and keep proving the patch
(the old `<branch>.json` becomes `<branch>--<git short sha or date>.json` and is replayed too).
Replay needs no decision key: each decision's verdict is recorded in history (its update's
validator, the approval signal's local activity), and the runs recorded before that take the
legacy path of `stanch.trust.assertions.legacy_verdict`, which replays them as recorded.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import (
    SandboxedWorkflowRunner,
    SandboxRestrictions,
)

from activities.notify import NotifyActivities
from stanch.models.activity_io import Notification
from stanch.models.incident import IncidentInput, IncidentState, StageStatus
from stanch.trust import assertions
from stanch.trust.assertions import DecisionKeys
from tests.workflow.conftest import trust_test_keys
from workflows.incident import IncidentWorkflow
from workflows.policies import NOTIFY_RETRY, QUICK_TIMEOUT

HISTORIES = sorted((Path(__file__).parent.parent / "histories").glob("*.json"))
BRANCHES = {
    "false_positive",
    "triaged_false_positive",
    "triaged_confirmed",
    "low_severity_automatic",
    "medium_severity_restored",
    "high_severity_restored",
    "critical_severity_restored",
    "four_eyes_refused",
    "containment_rejected",
    "contained_when_nobody_decided",
    "severity_raised_by_new_signal",
    "dry_run_rehearsed",
    "failed_containment_retried",
    "failed_rollback_skipped",
    "failed_rollback_aborted",
    "failed_undo_skipped",
    "failed_verification_retried",
    "failed_verification_aborted",
    "serious_report_filed",
    "report_deadline_brought_forward",
    "contained_at_once_reversible",
    "shadow_failed_retried",
}
# Branches that never reach evidence or review (closed at confirm), and those with no decision in them.
CLOSED_AT_CONFIRM = {"false_positive", "triaged_false_positive"}
NO_DECISIONS = {"false_positive", "low_severity_automatic"}


def branch_of(path: Path) -> str:
    """The branch a history belongs to: its name up to an optional `--<suffix>`."""
    return path.stem.split("--", 1)[0]


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"replay-{path.stem}", path.read_text())


def scheduled_activities(path: Path) -> set[str]:
    events = json.loads(path.read_text())["events"]
    return {
        e["activityTaskScheduledEventAttributes"]["activityType"]["name"] for e in events if "activityTaskScheduledEventAttributes" in e
    }


def runner_for(workflow_class: type) -> SandboxedWorkflowRunner:
    """The worker's sandbox. An edited copy is passed through rather than re-imported per replay:
    its module is this test module, whose imports are not sandbox-clean (and would go through
    pytest's assertion rewriting every time)."""
    if workflow_class is IncidentWorkflow:
        return SandboxedWorkflowRunner()
    return SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules("tests"))


async def replay(workflow_class: type, path: Path) -> Exception | None:
    return (await replay_all(workflow_class, [path]))[path]


async def replay_all(workflow_class: type, paths: list[Path]) -> dict[Path, Exception | None]:
    """Each history's replay failure (None: it replays), one replayer for them all."""

    async def histories():
        for path in paths:
            yield load(path)

    replayer = Replayer(workflows=[workflow_class], data_converter=pydantic_data_converter, workflow_runner=runner_for(workflow_class))
    async with replayer.workflow_replay_iterator(histories()) as results:
        failures = [result.replay_failure async for result in results]
    assert len(failures) == len(paths)
    return dict(zip(paths, failures, strict=True))


def test_histories_are_committed_for_every_branch():
    from tests.histories.refresh import BRANCHES as RECORDED_BY_REFRESH
    from tests.histories.refresh import branch_of as refresh_branch_of

    assert set(RECORDED_BY_REFRESH) == BRANCHES, "refresh records exactly the branches replayed here"
    # At least one history per branch (older ones, kept with --keep-old, count as well), and no
    # history of a branch nobody knows: every file is replayed, so each must belong somewhere.
    assert {branch_of(path) for path in HISTORIES} == BRANCHES
    assert all(refresh_branch_of(path) == branch_of(path) for path in HISTORIES)


def test_a_history_file_names_its_branch_up_to_the_double_dash():
    assert branch_of(Path("high_severity_restored.json")) == "high_severity_restored"
    assert branch_of(Path("high_severity_restored--before-patch-2.json")) == "high_severity_restored"
    assert branch_of(Path("failed_rollback_aborted--1a2b3c4.json")) == "failed_rollback_aborted"


def test_keep_old_renames_the_history_and_never_overwrites(tmp_path: Path):
    """`refresh --keep-old` moves `<branch>.json` aside under a suffix; a second keep gets its own name."""
    from tests.histories.refresh import keep_old

    current = tmp_path / "high_severity_restored.json"
    assert keep_old(current, "abc1234") is None  # nothing to keep
    current.write_text("first")
    assert keep_old(current, "abc1234") == tmp_path / "high_severity_restored--abc1234.json"
    current.write_text("second")
    assert keep_old(current, "abc1234") == tmp_path / "high_severity_restored--abc1234-2.json"
    assert not current.exists()
    assert (tmp_path / "high_severity_restored--abc1234.json").read_text() == "first"
    assert (tmp_path / "high_severity_restored--abc1234-2.json").read_text() == "second"
    current.write_text("third")  # outside git: the file's date names it
    kept = keep_old(current)
    assert kept is not None and kept.read_text() == "third"
    assert re.fullmatch(r"high_severity_restored--\d{4}-\d{2}-\d{2}", kept.stem), kept.name


def test_keep_old_names_a_committed_history_after_its_commit():
    from tests.histories.refresh import archive_suffix

    path = HISTORIES[0].parent / "false_positive.json"
    committed = subprocess.run(
        ["git", "log", "-1", "--format=%h", "--", path.name], cwd=path.parent, capture_output=True, text=True, check=False
    )
    edited = subprocess.run(["git", "status", "--porcelain", "--", path.name], cwd=path.parent, capture_output=True, text=True, check=False)
    if committed.returncode or not committed.stdout.strip() or edited.stdout.strip():
        pytest.skip("false_positive.json is not committed as it stands here")
    assert archive_suffix(path) == committed.stdout.strip()


@pytest.mark.parametrize("path", HISTORIES, ids=[path.stem for path in HISTORIES])
async def test_history_replays_with_todays_code(path: Path, trusted_test_key):
    failure = await replay(IncidentWorkflow, path)
    assert failure is None, f"{path.name} no longer replays: {failure}"


# --- edits replay must catch -------------------------------------------------------------------------
# Each is registered under the workflow's own name, as a changed deployment of it would be.


@workflow.defn(name="IncidentWorkflow")
class TimerBeforePaging(IncidentWorkflow):
    """Waits a second after the first signal before paging: a timer no history has."""

    @workflow.run
    async def run(self, input: IncidentInput) -> IncidentState:
        return await super().run(input)

    async def open(self) -> bool:
        await workflow.wait_condition(lambda: bool(self.state.signals))
        await workflow.sleep(1)
        return await super().open()


@workflow.defn(name="IncidentWorkflow")
class SkipsEvidence(IncidentWorkflow):
    """Drops the evidence snapshot: an activity the histories scheduled never comes."""

    @workflow.run
    async def run(self, input: IncidentInput) -> IncidentState:
        return await super().run(input)

    async def collect_evidence(self) -> None:
        self.record.mark("evidence", StageStatus.skipped, "edited out")


@workflow.defn(name="IncidentWorkflow")
class NotifiesBeforeReview(IncidentWorkflow):
    """Tells on-call before the review: a different activity where open_review was."""

    @workflow.run
    async def run(self, input: IncidentInput) -> IncidentState:
        return await super().run(input)

    async def review(self, outcome: str = "restored") -> None:
        await workflow.execute_activity_method(
            NotifyActivities.deliver,
            Notification(
                incident_id=self.state.id,
                kind="status",
                recipients=["oncall"],
                message="review",
                severity=self.state.severity,
                dedup_id="edit",
            ),
            start_to_close_timeout=QUICK_TIMEOUT,
            retry_policy=NOTIFY_RETRY,
        )
        await super().review(outcome)


@workflow.defn(name="IncidentWorkflow")
class HarmlessEdit(IncidentWorkflow):
    """A change that issues the same commands (one more timeline line): replay must accept it."""

    @workflow.run
    async def run(self, input: IncidentInput) -> IncidentState:
        return await super().run(input)

    async def open(self) -> bool:
        opened = await super().open()
        self.record.note("stage", "edited: one more line in the timeline")
        return opened


# edit -> the activity whose presence in a history puts the edit on that branch's path
EDITS = {TimerBeforePaging: None, SkipsEvidence: "snapshot_evidence", NotifiesBeforeReview: "open_review"}


@pytest.mark.parametrize("edit", list(EDITS), ids=[edit.__name__ for edit in EDITS])
async def test_a_non_deterministic_edit_fails_every_replay_on_its_path(edit: type, trusted_test_key):
    on_path = [path for path in HISTORIES if EDITS[edit] is None or EDITS[edit] in scheduled_activities(path)]
    off_path = [path for path in HISTORIES if path not in on_path]
    assert on_path, "the edit must be on some branch's path, or it proves nothing"
    failures = await replay_all(edit, HISTORIES)
    for path in on_path:
        assert isinstance(failures[path], workflow.NondeterminismError), (
            f"{edit.__name__} not caught replaying {path.name}: {failures[path]!r}"
        )
    # Where the edited code never runs, the same replay passes: the failures above are the edit's.
    for path in off_path:
        assert failures[path] is None, f"{edit.__name__} failed {path.name}, where it is not on the path: {failures[path]!r}"


def test_the_edits_cover_branches_on_and_off_their_path():
    """Every history is on the path of at least one edit, and each path-bound edit has histories on
    and off its path: a new branch is covered by the edits above without being listed there."""
    on_evidence = {path for path in HISTORIES if "snapshot_evidence" in scheduled_activities(path)}
    on_review = {path for path in HISTORIES if "open_review" in scheduled_activities(path)}
    assert on_evidence == on_review
    assert {branch_of(path) for path in on_evidence} == BRANCHES - CLOSED_AT_CONFIRM
    assert {branch_of(path) for path in HISTORIES if path not in on_evidence} == CLOSED_AT_CONFIRM
    assert None in EDITS.values(), "an edit on every path (TimerBeforePaging) covers every history"


async def test_an_edit_that_keeps_the_commands_replays(trusted_test_key):
    for path, failure in (await replay_all(HarmlessEdit, HISTORIES)).items():
        assert failure is None, f"{path.name}: a command-preserving edit must replay: {failure!r}"


@pytest.mark.parametrize("keys", ["other keys", "no key at all"])
async def test_every_history_replays_whatever_decision_keys_the_worker_holds(keys: str):
    """The verdict on each decision is history's, not the replaying worker's: a worker trusting
    other keys (another Ed25519 public key, another legacy HMAC key under the same id) or none
    replays every committed history unchanged. (Before, under another key every recorded
    decision was "unvouched" and only the histories without decisions replayed.)"""
    if keys == "other keys":
        other = Ed25519PrivateKey.from_private_bytes(b"o" * 32).public_key()
        assertions.trust_keys(DecisionKeys(public={"other": other}, legacy={"other": b"k" * 32}))
    else:
        assertions.trust_none()
    try:
        failures = await replay_all(IncidentWorkflow, HISTORIES)
    finally:
        trust_test_keys()
    assert {path.name: failure for path, failure in failures.items() if failure is not None} == {}
