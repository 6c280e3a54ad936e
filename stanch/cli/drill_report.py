"""The drill report: how long the people and the machinery took to acknowledge, contain and
restore, against the runbook's objectives, and which gate took the time.

Built from the incident's own record (the `objectives` and `gate_waits` its workflow keeps, see
workflows/objectives.py), so `stanch drill` and `stanch drill report ID` say the same thing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stanch.models.incident import IncidentState
from stanch.review.facts import duration

MILESTONES = ("acknowledge", "contain", "restore")


class MilestoneTime(BaseModel):
    milestone: str
    reached: bool = Field(description="False: not reached (the drill ended first, or restore left protections in place)")
    seconds: float | None = Field(None, description="from opening to the milestone")
    objective_seconds: float | None = Field(None, description="the runbook's objective at the drill's severity; None when it sets none")
    met: bool | None = Field(None, description="within the objective; None without one or when not reached")
    took_longest: str = Field("", description="the single wait or step that took the most of it")
    took_longest_by: str = Field("", description="machine or human")


class GateTime(BaseModel):
    gate: str = Field(description="'the contain approval', 'triage', ...")
    stage: str
    seconds: float
    waited_for: str = ""


class DrillReport(BaseModel):
    incident_id: str
    drill_route: str = Field(description="the gateway's drill route the drill acted on (never the production model)")
    runbook: str
    severity: str
    status: str
    finished: bool
    milestones: list[MilestoneTime]
    objectives_met: bool | None = Field(description="every milestone with an objective met; None when the runbook sets none")
    slowest_gate: GateTime | None = Field(None, description="the wait for people that took longest")
    gates: list[GateTime] = Field(default_factory=list, description="every wait for people, longest first")


def drill_report(state: IncidentState) -> DrillReport:
    outcomes = {outcome.milestone: outcome for outcome in state.objectives}
    milestones = []
    for name in MILESTONES:
        outcome = outcomes.get(name)  # type: ignore[call-overload]
        if outcome is None:
            milestones.append(MilestoneTime(milestone=name, reached=False))
            continue
        milestones.append(
            MilestoneTime(
                milestone=name,
                reached=outcome.reached,
                seconds=outcome.elapsed_seconds if outcome.reached else None,
                objective_seconds=outcome.objective_seconds,
                met=outcome.met if outcome.reached else None,
                took_longest=outcome.took_longest,
                took_longest_by=outcome.took_longest_by,
            )
        )
    judged = [m for m in milestones if m.objective_seconds is not None]
    gates = sorted(
        (
            GateTime(gate=w.gate, stage=w.stage, seconds=(w.ended_at - w.began_at).total_seconds(), waited_for=w.waited_for)
            for w in state.gate_waits
        ),
        key=lambda gate: -gate.seconds,
    )
    return DrillReport(
        incident_id=state.id,
        drill_route=state.target.model,
        runbook=state.runbook,
        severity=state.severity.value,
        status=state.status.value,
        finished=state.closed_at is not None,
        milestones=milestones,
        objectives_met=all(m.met is True for m in judged) if judged else None,
        slowest_gate=gates[0] if gates else None,
        gates=gates,
    )


def _verdict(milestone: MilestoneTime) -> str:
    if not milestone.reached:
        return "[yellow]not reached[/]"
    if milestone.objective_seconds is None:
        return "no objective set"
    return "[green]met[/]" if milestone.met else "[red]MISSED[/]"


def print_report(console: Console, report: DrillReport) -> None:
    table = Table(title=f"DRILL report — {report.incident_id} ({report.runbook}, {report.severity}, {report.status})")
    for column in ("time to", "took", "objective", "verdict", "the longest part"):
        table.add_column(column, overflow="fold")
    for m in report.milestones:
        took = duration(m.seconds) if m.seconds is not None else "—"
        objective = duration(m.objective_seconds) if m.objective_seconds is not None else "—"
        longest = f"{escape(m.took_longest)} ({m.took_longest_by})" if m.took_longest else ""
        table.add_row(m.milestone, took, objective, _verdict(m), longest)
    console.print(table)
    if report.slowest_gate is not None:
        gate = report.slowest_gate
        waited = f" for {gate.waited_for}" if gate.waited_for else ""
        console.print(f"The gate that took the time: {escape(gate.gate)} ({gate.stage}) waited {duration(gate.seconds)}{escape(waited)}")
    else:
        console.print("No gate waited for a person.")
    verdict: dict[Any, str] = {True: "[green]every objective met[/]", False: "[red]an objective was missed[/]", None: "no objective set"}
    console.print(f"Objectives: {verdict[report.objectives_met]}. Drill route: {escape(report.drill_route)}")
