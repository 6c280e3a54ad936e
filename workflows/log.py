"""The incident's own log lines, each naming the stage it is at.

Temporal's `workflow.logger` already puts the incident id on every record (its
`temporal_workflow` extra, the workflow id) and writes nothing while a task replays history;
Stanch adds `stage`, which the JSON log format (stanch.telemetry.logs) lifts into its own field.
Only what the timeline says goes into a line: never a prompt, an answer or a secret.
"""

from __future__ import annotations

import logging

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from stanch.models.incident import IncidentState, StageStatus

UNDER_WAY = (StageStatus.running, StageStatus.awaiting_approval, StageStatus.failed)


def current_stage(state: IncidentState) -> str | None:
    """The stage under way (running, waiting for approval, or failed and waiting for a decision),
    else the last one that finished; None before the first stage begins."""
    under_way = next((stage.name for stage in state.stages if stage.status in UNDER_WAY), None)
    if under_way:
        return under_way
    begun = [stage.name for stage in state.stages if stage.status != StageStatus.pending]
    return begun[-1] if begun else None


def log(state: IncidentState, message: str, *args: object, stage: str | None = None, level: int = logging.INFO) -> None:
    """One line on the workflow logger; `stage` when the caller knows it, else the current one."""
    stage = stage or current_stage(state)
    workflow.logger.log(level, message, *args, extra={"stage": stage} if stage else {})
