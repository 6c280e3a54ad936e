"""Replay incident histories with today's workflow code: does it still reproduce each one?

The replayer runs the worker's own workflows (`workers.main.WORKFLOWS`) with the worker's data
converter over each recorded history and fails where today's code would issue different
commands than the ones recorded. For a divergence we name the run and the event: from the
SDK's message when it names one, else by replaying ever longer prefixes of the history until
one fails — the workflow task whose commands differ — and, within it, the event the message
points at (an activity type or timer id it mentions).

A run is not replayed when this machine lacks an encryption key any payload of the history is
under (`unreadable`): the replay would report a configuration problem as a code change. Decision
keys are not needed: each decision's verdict is recorded in history (stanch.trust.assertions).
Only a run begun before that (no verdict patch marker) whose replay diverges, and whose decisions
name a key not configured here, is reported `unverifiable` rather than as a divergence: the old
handler checked assertions on replay, and replays one it cannot check as it counted. Dry runs
(rehearsals) are replayed like any other run and marked `dry_run`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager

from google.protobuf.message import Message
from pydantic import BaseModel, Field
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.worker import Replayer

from stanch.audit.history import event_name
from stanch.temporal import client as temporal_client
from stanch.temporal.codec import KEY_ID_METADATA, EncryptionCodec, is_encrypted
from stanch.trust import assertions

_quiet_runtime: Runtime | None = None


class Divergence(BaseModel):
    event_id: int | None = Field(None, description="the event today's code does not reproduce, when it can be named")
    event_type: str = ""
    workflow_task: int | None = Field(None, description="WorkflowTaskCompleted event whose commands differ")
    window: tuple[int, int] | None = Field(None, description="first and last event id of that workflow task's commands")
    message: str


class ReplayOutcome(BaseModel):
    workflow_id: str
    run_id: str
    source: str = Field(description="the file or 'temporal' the history came from")
    events: int
    reproduced: bool
    divergence: Divergence | None = None
    unreadable: str | None = Field(None, description="why the history could not be replayed at all (its encryption key is missing)")
    unverifiable: str | None = Field(
        None,
        description="why its divergence proves nothing: a run from before verdicts were recorded in history, with a decision "
        "signed with a key not configured here",
    )
    dry_run: bool = Field(False, description="the run was a dry run (a rehearsal): replayed like any other, labelled")

    @property
    def not_replayed(self) -> str | None:
        """Why nothing is known about this run (a configuration problem, exit 2), or None."""
        return self.unreadable or self.unverifiable

    def describe(self) -> str:
        run = f"{self.workflow_id} run {self.run_id}" + (" [dry run]" if self.dry_run else "")
        if self.unreadable:
            return f"{run}: CANNOT READ: {self.unreadable}"
        if self.unverifiable:
            return f"{run}: CANNOT VERIFY: {self.unverifiable}"
        if self.reproduced:
            return f"{run}: reproduced ({self.events} events)"
        d = self.divergence
        if d is None:  # replay_histories locates a divergence for every run it did not reproduce
            return f"{run}: DIVERGES at an event it cannot name"
        where = f"event {d.event_id} ({d.event_type})" if d.event_id else "an event it cannot name"
        if d.window:
            where += f", in the commands of the workflow task completed at event {d.workflow_task} (events {d.window[0]}–{d.window[1]})"
        return f"{run}: DIVERGES at {where}: {d.message}"


def replayer(workflows: list[type], converter: DataConverter) -> Replayer:
    global _quiet_runtime
    # The SDK core logs every failed replay task as a WARN line on stderr; the report says it better.
    _quiet_runtime = _quiet_runtime or Runtime(telemetry=TelemetryConfig(logging=None))
    # Its threads can crash CPython's finalization as a client's do (a replay of files crashed at
    # exit with "PyGILState_Release", once in about 20 runs on a loaded machine).
    temporal_client.note_sdk_runtime_started()
    return Replayer(workflows=workflows, data_converter=converter, runtime=_quiet_runtime)


async def replay_histories(
    histories: AsyncIterator[WorkflowHistory],
    workflows: list[type],
    converter: DataConverter,
    sources: dict[int, str] | None = None,
    trusted_keys: Iterable[str] | None = None,
) -> list[ReplayOutcome]:
    """Replay each history; a divergence is located by replaying prefixes of that history.

    A history this installation cannot read (an encryption key is missing) is not replayed: the
    outcome says why. A run from before verdicts were recorded whose decisions name a key not in
    `trusted_keys` is replayed all the same, and only if it diverges is it reported as CANNOT
    VERIFY rather than as a divergence. `trusted_keys` None skips that check."""
    sources = sources or {}
    trusted = None if trusted_keys is None else set(trusted_keys)
    tool = replayer(workflows, converter)
    outcomes = []
    dry_runs: dict[int, bool] = {}
    missing_keys: dict[int, str] = {}

    async def readable() -> AsyncIterator[WorkflowHistory]:
        async for history in histories:
            dry_runs[id(history)] = await is_dry_run(history, converter)
            reason = unreadable_reason(history, converter)
            if reason is None:
                if trusted is not None and (unverifiable := unverifiable_reason(await decision_key_ids(history, converter), trusted)):
                    missing_keys[id(history)] = unverifiable
                yield history
                continue
            outcomes.append(
                ReplayOutcome(
                    workflow_id=history.workflow_id,
                    run_id=history.run_id,
                    source=sources.get(id(history), "temporal"),
                    events=len(history.events),
                    reproduced=False,
                    unreadable=reason,
                    dry_run=dry_runs[id(history)],
                )
            )

    with _sdk_warnings_silenced():
        async with tool.workflow_replay_iterator(readable()) as results:
            async for result in results:
                history = result.history
                outcome = ReplayOutcome(
                    workflow_id=history.workflow_id,
                    run_id=history.run_id,
                    source=sources.get(id(history), "temporal"),
                    events=len(history.events),
                    reproduced=result.replay_failure is None,
                    dry_run=dry_runs.get(id(history), False),
                )
                if result.replay_failure is not None:
                    # A legacy run's decision under a key not configured here: maybe not a code change.
                    outcome.unverifiable = missing_keys.get(id(history))
                    outcome.divergence = await locate(tool, history, result.replay_failure)
                outcomes.append(outcome)
    return outcomes


def unreadable_reason(history: WorkflowHistory, converter: DataConverter) -> str | None:
    """Why this history cannot be decoded here (an encryption key this installation lacks), or None.

    Without the key every payload under it fails to decode, which the replayer would report as a
    divergence: a configuration problem, not a code change. Every payload of every event is
    checked: a key rotated mid-incident leaves the later payloads under another key."""
    used = {
        payload.metadata.get(KEY_ID_METADATA, b"").decode("utf-8", "replace")
        for payload in history_payloads(history)
        if is_encrypted(payload)
    }
    codec = converter.payload_codec
    known = set(codec.key_ids) if isinstance(codec, EncryptionCodec) else set()
    missing = sorted(used - known)
    if not missing:
        return None
    have = f"the configured keys are {', '.join(sorted(known))}" if known else "no encryption key is configured"
    return (
        f"encrypted with key id {', '.join(missing)}, and {have}: set STANCH_ENCRYPTION_KEYS "
        "(or STANCH_HOME/encryption-keys) to the installation's keys, retired ones included"
    )


def history_payloads(history: WorkflowHistory) -> Iterator[Payload]:
    """Every payload in the history: inputs, results, signals, updates, failures, memos, headers."""
    for event in history.events:
        yield from _payloads_in(event)


def _payloads_in(message: Message) -> Iterator[Payload]:
    if isinstance(message, Payload):
        yield message
        return
    for field, value in message.ListFields():
        message_type = field.message_type  # set for every message field
        if field.type != field.TYPE_MESSAGE or message_type is None:
            continue
        if field.is_repeated:
            is_map = message_type.GetOptions().map_entry
            items = value.values() if is_map else value
            if is_map and message_type.fields_by_name["value"].type != field.TYPE_MESSAGE:
                continue
            for item in items:
                yield from _payloads_in(item)
        else:
            yield from _payloads_in(value)


async def decision_key_ids(history: WorkflowHistory, converter: DataConverter) -> set[str]:
    """The ids of the decision keys a legacy run's decisions were signed with; none for a run
    that records its verdicts (its patch marker), whose replay needs no key.

    A decision (an update's or a signal's input) carries `assertion: "<kid>:<hex>"` (HMAC) or
    `"ed25519:<kid>:<signature>"` (stanch.trust.assertions); a decision without one names none."""
    kids: set[str] = set()
    if any(
        event.HasField("marker_recorded_event_attributes")
        and assertions.DECISION_VERDICT_PATCH.encode() in event.marker_recorded_event_attributes.SerializeToString()
        for event in history.events
    ):
        return kids
    for event in history.events:
        for payload in _decision_payloads(event):
            try:
                [value] = await converter.decode([payload], None)
            except Exception:  # unreadable payloads are unreadable_reason's business
                continue
            assertion = value.get("assertion") if isinstance(value, dict) else None
            if isinstance(assertion, str) and ":" in assertion:
                kids.add(assertions.key_of(assertion)[1])
    return kids


def _decision_payloads(event: HistoryEvent) -> list[Payload]:
    if event.HasField("workflow_execution_update_accepted_event_attributes"):
        return list(event.workflow_execution_update_accepted_event_attributes.accepted_request.input.args.payloads)
    if event.HasField("workflow_execution_update_admitted_event_attributes"):
        return list(event.workflow_execution_update_admitted_event_attributes.request.input.args.payloads)
    if event.HasField("workflow_execution_signaled_event_attributes"):
        return list(event.workflow_execution_signaled_event_attributes.input.payloads)
    return []


def unverifiable_reason(used: Iterable[str], trusted: Iterable[str]) -> str | None:
    """Why a legacy run's divergence may say nothing (a decision key it used is not configured), or None.

    Its handler checked assertions on replay, and replays one under a key it lacks as counted:
    when the run did not count it, the replay diverges for want of the key, not for a code change."""
    trusted = set(trusted)
    missing = sorted(set(used) - trusted)
    if not missing:
        return None
    which = f"key id {missing[0]}, which is" if len(missing) == 1 else f"key ids {', '.join(missing)}, which are"
    have = f"configured: {', '.join(sorted(trusted))}" if trusted else "no decision key is configured"
    return (
        f"a run from before verdicts were recorded in history, with decisions signed with {which} not configured "
        f"(STANCH_DECISION_KEYS or STANCH_HOME/decision-keys for HMAC keys, STANCH_DECISION_PUBLIC_KEYS for Ed25519; "
        f"keep retired keys listed; {have})"
    )


async def is_dry_run(history: WorkflowHistory, converter: DataConverter) -> bool:
    """Whether the run was a dry run, from its start input (IncidentInput.dry_run)."""
    if not history.events or not history.events[0].HasField("workflow_execution_started_event_attributes"):
        return False
    payloads = history.events[0].workflow_execution_started_event_attributes.input.payloads
    if not payloads:
        return False
    try:
        [value] = await converter.decode([payloads[0]], None)
    except Exception:
        return False
    return isinstance(value, dict) and value.get("dry_run") is True


async def from_list(histories: Iterable[WorkflowHistory]) -> AsyncIterator[WorkflowHistory]:
    for history in histories:
        yield history


# --- naming the event -------------------------------------------------------------------

# What the SDK core's messages say, e.g. "History is out of order. Last processed event: 13,
# event id: 15" or "No command scheduled for event HistoryEvent(id: 87, ActivityTaskScheduled)".
EVENT_ID_PATTERNS = [r"HistoryEvent\(\s*id:\s*(\d+)", r"\bevent id:?\s*(\d+)", r"\bevent_id[=:]\s*(\d+)"]
# "Activity type of scheduled event 'X' does not match ...", "Timer id of scheduled event 'X' ..."
NAMED_IN_EVENT = re.compile(r"(Activity type|Timer id) of scheduled event '([^']*)'")


async def locate(tool: Replayer, history: WorkflowHistory, failure: BaseException) -> Divergence:
    message = _core_message(failure)
    events = list(history.events)
    by_id = {event.event_id: event for event in events}
    for pattern in EVENT_ID_PATTERNS:
        if (found := re.search(pattern, message)) and int(found.group(1)) in by_id:
            event = by_id[int(found.group(1))]
            return Divergence(event_id=event.event_id, event_type=event_name(event), message=message)
    task, window = await _first_divergent_task(tool, history)
    named = _event_named_in(message, events, window)
    if named is not None:
        return Divergence(event_id=named.event_id, event_type=event_name(named), workflow_task=task, window=window, message=message)
    if task is not None:
        return Divergence(event_id=task, event_type="WorkflowTaskCompleted", workflow_task=task, window=window, message=message)
    last = events[-1]
    return Divergence(event_id=last.event_id, event_type=event_name(last), message=message)


async def _first_divergent_task(tool: Replayer, history: WorkflowHistory) -> tuple[int | None, tuple[int, int] | None]:
    """Binary search over workflow-task boundaries for the shortest prefix that fails to replay.

    A prefix that ends at a WorkflowTaskStarted event replays every command up to it; the first
    failing one means the commands of the task before it differ from today's code.
    """
    events = list(history.events)
    cuts = [i for i, event in enumerate(events) if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED]
    cuts.append(len(events) - 1)  # the whole history: the last task's commands
    low, high = 0, len(cuts) - 1  # invariant: the prefix at cuts[high] fails
    while low < high:
        middle = (low + high) // 2
        prefix = WorkflowHistory(history.workflow_id, events[: cuts[middle] + 1])
        result = await tool.replay_workflow(prefix, raise_on_replay_failure=False)
        if result.replay_failure is None:
            low = middle + 1
        else:
            high = middle
    if high == 0:
        return None, None
    start = cuts[high - 1] + 1  # the task's WorkflowTaskCompleted follows its WorkflowTaskStarted
    completed = next((e for e in events[start : cuts[high] + 1] if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED), None)
    if completed is None:
        return None, (events[start].event_id, events[cuts[high]].event_id)
    first = completed.event_id + 1
    return completed.event_id, (first, max(first, events[cuts[high]].event_id))


def _event_named_in(message: str, events: list[HistoryEvent], window: tuple[int, int] | None) -> HistoryEvent | None:
    found = NAMED_IN_EVENT.search(message)
    if not found:
        return None
    what, name = found.groups()
    if what == "Activity type":
        matches = [
            e
            for e in events
            if e.HasField("activity_task_scheduled_event_attributes")
            and e.activity_task_scheduled_event_attributes.activity_type.name == name
        ]
    else:
        matches = [e for e in events if e.HasField("timer_started_event_attributes") and e.timer_started_event_attributes.timer_id == name]
    inside = [e for e in matches if window and window[0] <= e.event_id <= window[1]]
    candidates = inside or matches
    return candidates[0] if candidates else None


def _core_message(failure: BaseException) -> str:
    """The core's own message, without the Rust debug wrapping around it."""
    text = str(failure)
    found = re.search(r'message: "((?:[^"\\]|\\.)*)"', text)
    return (found.group(1).replace('\\"', '"').replace("\\'", "'") if found else text).strip()


@contextmanager
def _sdk_warnings_silenced():
    """The SDK logs each failed activation with a traceback; the outcome carries the message."""
    loggers = [
        logging.getLogger(name)
        for name in (
            "temporalio.worker._workflow",
            "temporalio.worker._workflow_instance",
            "temporalio.worker._replayer",
            "temporalio.workflow",
        )
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
