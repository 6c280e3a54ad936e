"""Tracing changes nothing a replay sees: committed histories (recorded without tracing) replay
with Temporal's tracing interceptor on the worker. That replay makes no span is checked where a
history carries a trace: tests/e2e/test_traces.py records one with tracing on and replays it, with
and without the interceptor, counting the spans the replay made."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from temporalio.client import WorkflowHistory
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.incident import IncidentWorkflow

# Branches that between them run every stage, every kind of gate and a failure: replaying all
# of them again (tests/workflow does) would add seconds and no new path through the interceptor.
BRANCHES = ("critical_severity_restored", "four_eyes_refused", "failed_rollback_aborted", "severity_raised_by_new_signal")
HISTORIES = [Path(__file__).parents[1] / "histories" / f"{branch}.json" for branch in BRANCHES]


def test_committed_histories_replay_with_the_tracing_interceptor():
    provider = TracerProvider()
    replayer = Replayer(
        workflows=[IncidentWorkflow],
        data_converter=pydantic_data_converter,
        interceptors=[TracingInterceptor(provider.get_tracer("replay"))],
    )

    async def replay_all() -> list[Exception | None]:
        async def histories():
            for path in HISTORIES:
                yield WorkflowHistory.from_json(path.stem, path.read_text())

        async with replayer.workflow_replay_iterator(histories()) as results:
            return [result.replay_failure async for result in results]

    failures = asyncio.run(replay_all())
    assert len(failures) == len(HISTORIES)
    assert [(path.name, failure) for path, failure in zip(HISTORIES, failures, strict=True) if failure] == []
