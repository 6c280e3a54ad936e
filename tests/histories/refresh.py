"""Record the committed workflow histories that the replay test guards.

    .venv/bin/python -m tests.histories.refresh                 # every branch below
    .venv/bin/python -m tests.histories.refresh serious_report_filed --out /tmp/h   # some, elsewhere
    .venv/bin/python -m tests.histories.refresh --keep-old high_severity_restored  # keep the old one too

Runs each lifecycle branch on a local dev server (custom search attributes registered) with
the activity stand-ins, and writes `tests/histories/<branch>.json` in the format
`temporal workflow show --output json` uses. Refresh after an intended change to the
workflow's command sequence — and only after guarding old histories with `workflow.patched`.

The convention: a history's branch is its file name up to an optional `--<suffix>`
(`high_severity_restored.json`, `high_severity_restored--before-patch-2.json`). The replay
test (tests/workflow/test_replay.py) wants at least one history per branch and replays EVERY
json file here. By default a refresh overwrites `<branch>.json`. With `--keep-old` it first
renames the existing `<branch>.json` to `<branch>--<suffix>.json` — the short sha of the commit
that last recorded it, or, when git cannot say (not committed, edited since, no git), the file's
date — and then writes the new one. After a change guarded by workflow.patched, refresh with
--keep-old so the old histories stay and keep proving the patch: the old file replays through
the unpatched path, the new one through the patched path. Delete an archived history only when
the patch it proves is removed from the workflow.

The branches: false positive, triage to false positive, triage to confirmed (the triage
runbook), each severity (low, medium, high, critical), four-eyes refusal, containment rejected,
containment going ahead when nobody decides in time, severity raised by a new signal, a dry
run, the fail-safe (failed containment retried, failed rollback skipped, failed rollback
aborted, failed undo skipped during restore, failed verification retried, failed verification
aborted), a serious incident whose report is filed, one whose report deadline a later
signal (a death) brings forward, containment whose reversible step goes ahead at once while the
rest waits for four eyes, and a restore whose fix first leaks on mirrored live traffic
(`restore.shadow`) and passes when retried. Histories recorded since issue 15 also bisect
the changes and measure the blast radius after confirmation (the stand-ins name nothing); the
older ones replay through the unpatched path (audit tests read their run ids: keep them).
Decisions are vouched for with the tests' decision key
(tests/workflow/conftest.py), which the replay test trusts too.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from stanch.models.actions import ActionSpec
from stanch.models.decisions import Acknowledgement, ApprovalDecision, FailureDecision, ReportFiled, TriageDecision
from stanch.models.incident import IncidentInput, IncidentState, IncidentStatus
from stanch.models.signals import Severity, Signal
from stanch.runbooks.schema import RestoreSettings, SeverityRules, Shadow, StageGate
from stanch.temporal import search_attributes
from tests.conftest import installed_binary
from tests.workflow.conftest import alert, incident_input
from tests.workflow.helpers import (
    AsTheApi,
    approve,
    approve_four_eyes,
    failed,
    until,
    vouched_signal,
    waiting_on,
)
from tests.workflow.standins import Script, stand_ins
from workflows.incident import IncidentWorkflow

HERE = Path(__file__).parent
ARCHIVE_SEPARATOR = "--"  # <branch>--<suffix>.json: an older history of <branch>, replayed all the same
CRITICAL = {"alertname": "HarmfulOutput", "model": "support-bot", "severity": "critical"}


# --- how responders drive each branch -------------------------------------------------------------


async def nothing(handle: WorkflowHandle) -> None:
    pass


async def restore_by_alice(handle: WorkflowHandle) -> None:
    await until(handle, waiting_on("restore"))
    await approve(handle, "restore", "alice", ["oncall"])


async def high_severity_restored(handle: WorkflowHandle) -> None:
    await approve_four_eyes(handle, "contain")
    await approve_four_eyes(handle, "rollback")
    await restore_by_alice(handle)


async def medium_severity_restored(handle: WorkflowHandle) -> None:
    await until(handle, waiting_on("rollback"))  # contain, hotfix and restore are automatic at medium
    await approve(handle, "rollback", "alice", ["oncall"])


async def triaged_false_positive(handle: WorkflowHandle) -> None:
    await until(handle, lambda s: s.status == IncidentStatus.triage)
    await AsTheApi(handle).execute_update(
        IncidentWorkflow.triage, TriageDecision(by="alice", outcome="false_positive", reason="a test prompt")
    )


async def four_eyes_refused(handle: WorkflowHandle) -> None:
    """Alice approves containment, then tries again through the signal variant: refused, on record."""
    await until(handle, waiting_on("contain"))
    await handle.signal(IncidentWorkflow.approve_signal, await vouched_signal(handle, stage="contain", approver="alice", roles=["oncall"]))
    await until(handle, lambda s: len(s.approvals) == 1)
    await handle.signal(IncidentWorkflow.approve_signal, await vouched_signal(handle, stage="contain", approver="Alice ", roles=["safety"]))
    await until(handle, lambda s: any("refused signal" in e.message for e in s.timeline))
    await approve(handle, "contain", "sam", ["safety"])
    await approve_four_eyes(handle, "rollback")
    await restore_by_alice(handle)


async def containment_rejected(handle: WorkflowHandle) -> None:
    await until(handle, waiting_on("contain"))
    await AsTheApi(handle).execute_update(
        IncidentWorkflow.reject, ApprovalDecision(approve=False, stage="contain", approver="sam", roles=["safety"], comment="too broad")
    )
    await approve_four_eyes(handle, "rollback")
    await restore_by_alice(handle)


async def contained_when_nobody_decided(handle: WorkflowHandle) -> None:
    """Critical: nobody decides on containment within the (shortened) approval timeout."""
    await until(handle, waiting_on("rollback"))
    await approve_four_eyes(handle, "rollback")
    await restore_by_alice(handle)


async def failed_rollback_aborted(handle: WorkflowHandle) -> None:
    await approve_four_eyes(handle, "contain")
    await approve_four_eyes(handle, "rollback")
    await until(handle, lambda s: s.status == IncidentStatus.awaiting_decision)
    await AsTheApi(handle).execute_update(
        IncidentWorkflow.decide, FailureDecision(stage="rollback", by="alice", choice="abort", reason="manual")
    )


async def serious_report_filed(handle: WorkflowHandle) -> None:
    """A death: the 10-day report clock runs; the incident waits for the filing, then closes."""
    await AsTheApi(handle).execute_update(IncidentWorkflow.acknowledge, Acknowledgement(responder="alice"))
    await approve_four_eyes(handle, "contain")
    await approve_four_eyes(handle, "rollback")
    await restore_by_alice(handle)
    await until(handle, lambda s: s.status == IncidentStatus.awaiting_report)
    await AsTheApi(handle).execute_update(IncidentWorkflow.record_report_filed, ReportFiled(by="sam", reference="EU-2026-0042"))


async def triaged_confirmed(handle: WorkflowHandle) -> None:
    """The catch-all runbook has no checks: a responder confirms, and nothing is changed automatically."""
    await until(handle, lambda s: s.status == IncidentStatus.triage)
    await AsTheApi(handle).execute_update(
        IncidentWorkflow.triage, TriageDecision(by="alice", outcome="confirmed", reason="seen it ourselves")
    )


async def decide(handle: WorkflowHandle, stage: str, choice: str) -> None:
    await until(handle, failed(stage))
    await AsTheApi(handle).execute_update(
        IncidentWorkflow.decide, FailureDecision(stage=stage, by="alice", choice=choice, reason=f"{choice} by hand")
    )


async def failed_containment_retried(handle: WorkflowHandle) -> None:
    """block_prompts fails once; alice retries and it applies; the rest runs as at high."""
    await approve_four_eyes(handle, "contain")
    await decide(handle, "contain", "retry")
    await approve_four_eyes(handle, "rollback")
    await restore_by_alice(handle)


async def failed_rollback_skipped(handle: WorkflowHandle) -> None:
    """The rollback fails; alice skips it: containment stays, the fix and its verification go on."""
    await approve_four_eyes(handle, "contain")
    await approve_four_eyes(handle, "rollback")
    await decide(handle, "rollback", "skip")
    await restore_by_alice(handle)


async def failed_undo_skipped(handle: WorkflowHandle) -> None:
    """Restore cannot undo the output block; alice skips it: that protection stays, the rest is undone."""
    await approve_four_eyes(handle, "contain")
    await approve_four_eyes(handle, "rollback")
    await restore_by_alice(handle)
    await decide(handle, "restore", "skip")


async def failed_verification_retried(handle: WorkflowHandle) -> None:
    await approve_four_eyes(handle, "contain")
    await approve_four_eyes(handle, "rollback")
    await decide(handle, "verify", "retry")
    await restore_by_alice(handle)


async def shadow_failed_retried(handle: WorkflowHandle) -> None:
    """The fix leaks on mirrored traffic: every protection stays; alice retries, the next round is clean."""
    await approve_four_eyes(handle, "contain")
    await approve_four_eyes(handle, "rollback")
    await restore_by_alice(handle)
    await decide(handle, "restore", "retry")


async def failed_verification_aborted(handle: WorkflowHandle) -> None:
    await approve_four_eyes(handle, "contain")
    await approve_four_eyes(handle, "rollback")
    await decide(handle, "verify", "abort")


async def severity_raised_by_new_signal(handle: WorkflowHandle) -> None:
    """Medium until a second alert says critical: the waiting rollback now needs four eyes."""
    await until(handle, waiting_on("rollback"))
    await handle.signal(IncidentWorkflow.add_signal, alert("sig-2", labels=CRITICAL))
    await until(handle, lambda s: s.severity == Severity.critical and s.pending_approval is not None and s.pending_approval.count == 2)
    await approve_four_eyes(handle, "rollback")
    await restore_by_alice(handle)


def report_deadline_is(days: int) -> Callable[[IncidentState], bool]:
    return lambda s: s.regulatory.serious and s.regulatory.deadline - s.regulatory.aware_at == timedelta(days=days)


async def report_deadline_brought_forward(handle: WorkflowHandle) -> None:
    """Serious for a health harm (15 days); a later alert reports a death: the 10-day clock replaces it."""
    await until(handle, report_deadline_is(15))
    await handle.signal(IncidentWorkflow.add_signal, alert("sig-death", labels={**CRITICAL, "harm": "death"}))
    await until(handle, report_deadline_is(10))
    await approve_four_eyes(handle, "contain")
    await approve_four_eyes(handle, "rollback")
    await restore_by_alice(handle)
    await until(handle, lambda s: s.status == IncidentStatus.awaiting_report)
    await AsTheApi(handle).execute_update(IncidentWorkflow.record_report_filed, ReportFiled(by="sam", reference="EU-2026-0043"))


# --- the branches ---------------------------------------------------------------------------------


def harmful_output(**changes) -> IncidentInput:
    return incident_input("harmful-output", **changes)


def critical_contain_times_out() -> IncidentInput:
    book = harmful_output().runbook
    critical = book.policy[Severity.critical].model_copy(update={"approval_timeout": timedelta(seconds=2)})
    return harmful_output(policy={**book.policy, Severity.critical: critical})


def contained_at_once() -> IncidentInput:
    """Containment under `{approve: four eyes, reversible: auto}`: the block goes on at once,
    switching the update off waits for the two approvers."""
    book = harmful_output(
        containment=[
            ActionSpec(kind="disable_version", params={"version": "{version}"}),
            ActionSpec(kind="block_outputs", params={"detectors": ["secret"]}),
        ]
    ).runbook
    high = book.policy[Severity.high]
    at_once = StageGate.model_validate(
        {"approve": {"count": 2, "roles": ["oncall", "safety"], "required_roles": ["safety"]}, "reversible": "auto"}
    )
    policy = {**book.policy, Severity.high: high.model_copy(update={"stages": {**high.stages, "contain": at_once}})}
    return harmful_output(containment=book.containment, policy=policy)


def restored_after_shadow() -> IncidentInput:
    """Restore waits for mirrored live traffic to come back clean from the fixed version."""
    return harmful_output(restore=RestoreSettings(shadow=Shadow(clean_requests=3, sample_rate=0.5, timeout="10m")))


def dry_run() -> IncidentInput:
    return harmful_output().model_copy(update={"dry_run": True})


def triage() -> IncidentInput:
    return incident_input("triage")


@dataclass
class Branch:
    drive: Callable[[WorkflowHandle], Awaitable[None]]
    script: Callable[[], Script] = Script
    input: Callable[[], IncidentInput] = harmful_output
    first: Callable[[], Signal] = alert
    expect: IncidentStatus = IncidentStatus.closed
    notes: list[str] = field(default_factory=list)


BRANCHES: dict[str, Branch] = {
    "high_severity_restored": Branch(high_severity_restored),
    "false_positive": Branch(nothing, script=lambda: Script(confirm="not_confirmed"), expect=IncidentStatus.false_positive),
    "containment_rejected": Branch(containment_rejected),
    "failed_rollback_aborted": Branch(
        failed_rollback_aborted, script=lambda: Script(failing_kinds={"rollback_to_previous"}), expect=IncidentStatus.aborted
    ),
    "low_severity_automatic": Branch(
        nothing, script=lambda: Script(detectors=[]), input=lambda: harmful_output(severity=SeverityRules(default=Severity.low))
    ),
    "medium_severity_restored": Branch(medium_severity_restored, script=lambda: Script(detectors=[])),
    "critical_severity_restored": Branch(high_severity_restored, first=lambda: alert(labels=CRITICAL)),
    "triaged_false_positive": Branch(
        triaged_false_positive, script=lambda: Script(confirm="inconclusive", detectors=[]), expect=IncidentStatus.false_positive
    ),
    "four_eyes_refused": Branch(four_eyes_refused),
    "contained_when_nobody_decided": Branch(
        contained_when_nobody_decided, input=critical_contain_times_out, first=lambda: alert(labels=CRITICAL)
    ),
    "serious_report_filed": Branch(serious_report_filed, first=lambda: alert(labels={**CRITICAL, "harm": "death"})),
    "triaged_confirmed": Branch(triaged_confirmed, script=lambda: Script(confirm="inconclusive", detectors=[]), input=triage),
    "contained_at_once_reversible": Branch(high_severity_restored, input=contained_at_once),
    "shadow_failed_retried": Branch(shadow_failed_retried, script=lambda: Script(shadow_passes=[False, True]), input=restored_after_shadow),
    "dry_run_rehearsed": Branch(medium_severity_restored, script=lambda: Script(detectors=[]), input=dry_run),
    "failed_containment_retried": Branch(failed_containment_retried, script=lambda: Script(failures_left={"block_prompts": 1})),
    "failed_rollback_skipped": Branch(failed_rollback_skipped, script=lambda: Script(failing_kinds={"rollback_to_previous"})),
    "failed_undo_skipped": Branch(failed_undo_skipped, script=lambda: Script(failing_kinds={"undo:block_outputs"})),
    "failed_verification_retried": Branch(failed_verification_retried, script=lambda: Script(verify_passes=[False, True])),
    "failed_verification_aborted": Branch(
        failed_verification_aborted, script=lambda: Script(verify_passes=[False]), expect=IncidentStatus.aborted
    ),
    "severity_raised_by_new_signal": Branch(severity_raised_by_new_signal, script=lambda: Script(detectors=[])),
    "report_deadline_brought_forward": Branch(
        report_deadline_brought_forward, first=lambda: alert(labels={**CRITICAL, "harm": "health-injury"})
    ),
}
assert not any(ARCHIVE_SEPARATOR in name for name in BRANCHES), "a branch name never holds the archive separator"


# --- where a history goes -------------------------------------------------------------------------


def branch_of(path: Path) -> str:
    """`high_severity_restored--before-patch-2.json` is a history of `high_severity_restored`."""
    return path.stem.split(ARCHIVE_SEPARATOR, 1)[0]


def archive_suffix(path: Path) -> str:
    """The short sha of the commit that last recorded `path`, if it is committed as it stands;
    else the file's modification date."""
    try:

        def git(*args):
            return subprocess.run(["git", *args], cwd=path.parent, capture_output=True, text=True, check=True).stdout.strip()

        sha = git("log", "-1", "--format=%h", "--", path.name)
        if sha and not git("status", "--porcelain", "--", path.name):
            return sha
    except (OSError, subprocess.CalledProcessError):
        pass
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d")


def keep_old(path: Path, suffix: str | None = None) -> Path | None:
    """Rename `<branch>.json` to `<branch>--<suffix>.json` (never over another file); None when
    there is nothing to keep."""
    if not path.exists():
        return None
    base = f"{path.stem}{ARCHIVE_SEPARATOR}{suffix or archive_suffix(path)}"
    kept, n = path.with_name(f"{base}.json"), 1
    while kept.exists():
        n += 1
        kept = path.with_name(f"{base}-{n}.json")
    path.rename(kept)
    return kept


async def record(client: Client, name: str, out: Path, keep: bool = False) -> int:
    branch = BRANCHES[name]
    task_queue = f"histories-{uuid.uuid4()}"
    input = branch.input().model_copy(update={"upsert_search_attributes": True, "incident_id": f"history-{name}"})
    async with Worker(client, task_queue=task_queue, workflows=[IncidentWorkflow], activities=stand_ins(branch.script())):
        handle = await client.start_workflow(
            IncidentWorkflow.run,
            input,
            id=input.incident_id,
            task_queue=task_queue,
            start_signal="add_signal",
            start_signal_args=[branch.first()],
        )
        await branch.drive(handle)
        final = await handle.result()
    if final.status != branch.expect:
        raise SystemExit(f"{name}: ended {final.status}, expected {branch.expect}; not recorded")
    history = await handle.fetch_history()
    path = out / f"{name}.json"
    if keep and (kept := keep_old(path)):  # only once the new history exists: a failed run loses nothing
        print(f"kept {path.name} as {kept.name}")
    path.write_text(history.to_json())
    print(f"recorded {name}: {len(history.events)} events, {final.status}")
    return len(history.events)


async def main(names: list[str], out: Path, keep: bool = False) -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=installed_binary("temporal"),
        search_attributes=search_attributes.ALL,
        data_converter=pydantic_data_converter,
        dev_server_extra_args=["--ui-disable-news-fetch"],
        ui=False,
    )
    try:
        for name in names:
            await record(env.client, name, out, keep)
    finally:
        await env.shutdown()


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.histories.refresh", description="Record the committed workflow histories.")
    parser.add_argument("branches", nargs="*", metavar="BRANCH", help=f"default: all of {', '.join(BRANCHES)}")
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write <branch>.json into (default: tests/histories)")
    parser.add_argument(
        "--keep-old",
        action="store_true",
        help="rename an existing <branch>.json to <branch>--<git short sha or date>.json before writing the new one, "
        "so it stays replayed (do this after a change guarded by workflow.patched)",
    )
    args = parser.parse_args()
    unknown = [name for name in args.branches if name not in BRANCHES]
    if unknown:
        parser.error(f"unknown branches {unknown}; known: {', '.join(BRANCHES)}")
    return args


if __name__ == "__main__":
    args = arguments()
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(args.branches or list(BRANCHES), args.out, args.keep_old))
