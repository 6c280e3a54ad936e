"""Record the committed workflow histories that the replay test guards.

    .venv/bin/python -m tests.histories.refresh                 # every branch below
    .venv/bin/python -m tests.histories.refresh serious_report_filed --out /tmp/h   # some, elsewhere

Runs each lifecycle branch on a local dev server (custom search attributes registered) with
the activity stand-ins, and writes `tests/histories/<branch>.json` in the format
`temporal workflow show --output json` uses. Refresh after an intended change to the
workflow's command sequence — and only after guarding old histories with `workflow.patched`.

The branches: false positive, triage to false positive, each severity (low, medium, high,
critical), four-eyes refusal, containment rejected, containment going ahead when nobody
decides in time, failed rollback aborted (fail-safe), and a serious incident whose report is
filed. Decisions are vouched for with the tests' decision key (tests/workflow/conftest.py),
which the replay test trusts too.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from stanch import search_attributes
from stanch.incident import (
    Acknowledgement,
    ApprovalDecision,
    FailureDecision,
    IncidentInput,
    IncidentStatus,
    ReportFiled,
    TriageDecision,
)
from stanch.models import Severity, Signal
from stanch.runbooks.schema import SeverityRules
from tests.conftest import installed_binary
from tests.workflow.conftest import alert, incident_input
from tests.workflow.helpers import (
    AsTheApi,
    approve,
    approve_four_eyes,
    until,
    vouched_signal,
    waiting_on,
)
from tests.workflow.standins import Script, stand_ins
from workflows.incident import IncidentWorkflow

HERE = Path(__file__).parent
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
    await AsTheApi(handle).execute_update(IncidentWorkflow.triage, TriageDecision(by="alice", outcome="false_positive", reason="a test prompt"))


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
    await AsTheApi(handle).execute_update(IncidentWorkflow.reject, ApprovalDecision(approve=False, stage="contain", approver="sam", roles=["safety"], comment="too broad"))
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
    await AsTheApi(handle).execute_update(IncidentWorkflow.decide, FailureDecision(stage="rollback", by="alice", choice="abort", reason="manual"))


async def serious_report_filed(handle: WorkflowHandle) -> None:
    """A death: the 10-day report clock runs; the incident waits for the filing, then closes."""
    await AsTheApi(handle).execute_update(IncidentWorkflow.acknowledge, Acknowledgement(responder="alice"))
    await approve_four_eyes(handle, "contain")
    await approve_four_eyes(handle, "rollback")
    await restore_by_alice(handle)
    await until(handle, lambda s: s.status == IncidentStatus.awaiting_report)
    await AsTheApi(handle).execute_update(IncidentWorkflow.record_report_filed, ReportFiled(by="sam", reference="EU-2026-0042"))


# --- the branches ---------------------------------------------------------------------------------


def harmful_output(**changes) -> IncidentInput:
    return incident_input("harmful-output", **changes)


def critical_contain_times_out() -> IncidentInput:
    book = harmful_output().runbook
    critical = book.policy[Severity.critical].model_copy(update={"approval_timeout": timedelta(seconds=2)})
    return harmful_output(policy={**book.policy, Severity.critical: critical})


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
    "failed_rollback_aborted": Branch(failed_rollback_aborted, script=lambda: Script(failing_kinds={"rollback_to_previous"}), expect=IncidentStatus.aborted),
    "low_severity_automatic": Branch(
        nothing, script=lambda: Script(detectors=[]), input=lambda: harmful_output(severity=SeverityRules(default=Severity.low))
    ),
    "medium_severity_restored": Branch(medium_severity_restored, script=lambda: Script(detectors=[])),
    "critical_severity_restored": Branch(high_severity_restored, first=lambda: alert(labels=CRITICAL)),
    "triaged_false_positive": Branch(
        triaged_false_positive, script=lambda: Script(confirm="inconclusive", detectors=[]), expect=IncidentStatus.false_positive
    ),
    "four_eyes_refused": Branch(four_eyes_refused),
    "contained_when_nobody_decided": Branch(contained_when_nobody_decided, input=critical_contain_times_out, first=lambda: alert(labels=CRITICAL)),
    "serious_report_filed": Branch(serious_report_filed, first=lambda: alert(labels={**CRITICAL, "harm": "death"})),
}


async def record(client: Client, name: str, out: Path) -> int:
    branch = BRANCHES[name]
    task_queue = f"histories-{uuid.uuid4()}"
    input = branch.input().model_copy(update={"upsert_search_attributes": True, "incident_id": f"history-{name}"})
    async with Worker(client, task_queue=task_queue, workflows=[IncidentWorkflow], activities=stand_ins(branch.script())):
        handle = await client.start_workflow(
            IncidentWorkflow.run, input, id=input.incident_id, task_queue=task_queue, start_signal="add_signal", start_signal_args=[branch.first()]
        )
        await branch.drive(handle)
        final = await handle.result()
    if final.status != branch.expect:
        raise SystemExit(f"{name}: ended {final.status}, expected {branch.expect}; not recorded")
    history = await handle.fetch_history()
    (out / f"{name}.json").write_text(history.to_json())
    print(f"recorded {name}: {len(history.events)} events, {final.status}")
    return len(history.events)


async def main(names: list[str], out: Path) -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=installed_binary("temporal"),
        search_attributes=search_attributes.ALL,
        data_converter=pydantic_data_converter,
        dev_server_extra_args=["--ui-disable-news-fetch"],
        ui=False,
    )
    try:
        for name in names:
            await record(env.client, name, out)
    finally:
        await env.shutdown()


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.histories.refresh", description="Record the committed workflow histories.")
    parser.add_argument("branches", nargs="*", metavar="BRANCH", help=f"default: all of {', '.join(BRANCHES)}")
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write <branch>.json into (default: tests/histories)")
    args = parser.parse_args()
    unknown = [name for name in args.branches if name not in BRANCHES]
    if unknown:
        parser.error(f"unknown branches {unknown}; known: {', '.join(BRANCHES)}")
    return args


if __name__ == "__main__":
    args = arguments()
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(args.branches or list(BRANCHES), args.out))
