"""Time to acknowledge, contain, restore and close: each milestone against the runbook's objective
for the incident's severity, where the time went (machines working or people being waited for),
and the lifecycle metrics Prometheus scrapes from the worker.

Everything here is bookkeeping: state fields, timeline notes and metrics, never a command (the
SDK's metric meter records nothing on replay). Each metric is emitted once per occurrence: the
memory says which were (`metrics_emitted`), so a continued run does not emit them again.
Production's times, objectives and ack SLA breaches (and the alerts read from them) count real
incidents only. A drill (`stanch drill`) records its objectives in the state (the drill report
reads them) and emits its times and objectives under drill metrics of their own; a rehearsal
(`dry_run`) records them and emits nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from temporalio import workflow

from workflows.log import log
from workflows.record import Record

with workflow.unsafe.imports_passed_through():
    from stanch.models.incident import GateWait, IncidentStatus, ObjectiveOutcome
    from stanch.review.facts import duration


# The metric names (the contract the dashboard and the alert rules read). The runtime's
# Prometheus exporter adds `_seconds` to the timedelta histograms and `_total` to the counters;
# `stanch.temporal.client.metrics_runtime` gives the histograms buckets from seconds to days.
TIME_TO = {milestone: f"stanch_incident_time_to_{milestone}" for milestone in ("acknowledge", "contain", "restore", "close")}
CONTAINMENT_OBJECTIVE = "stanch_incident_containment_objective"
ACK_SLA_BREACHES = "stanch_incident_ack_sla_breaches"
# A drill's own: how fast the people and the machinery would have been, apart from production's
# numbers (the same buckets, `stanch.temporal.client.INCIDENT_CLOCKS`).
DRILL_TIME_TO = {milestone: f"stanch_drill_time_to_{milestone}" for milestone in ("acknowledge", "contain", "restore")}
DRILL_OBJECTIVE = "stanch_drill_objective"

# What the machine does in each stage, in the words the breakdown uses.
MACHINE_WORK = {
    "confirm": "the confirm checks",
    "evidence": "the evidence snapshot",
    "severity": "grading",
    "contain": "applying the containment",
    "rollback": "the rollback",
    "hotfix": "the hotfix",
    "verify": "verification",
    "restore": "undoing the protections",
}
# The stages a milestone waits for, in order.
STAGES_BEFORE = {
    "contain": ("confirm", "evidence", "severity", "contain"),
    "restore": ("confirm", "evidence", "severity", "contain", "rollback", "hotfix", "verify", "restore"),
}
REACHED_IN_WORDS = {"acknowledge": "acknowledged", "contain": "contained", "restore": "restored"}
GATE_WAITS_KEPT = 50
ORDINALS = ("the first", "a second", "a third", "a fourth", "a fifth")


class Milestones:
    def __init__(self, record: Record) -> None:
        self.record = record

    # --- milestones -----------------------------------------------------------------------

    def reached(self, milestone: str, at: datetime | None = None) -> None:
        """Record how long opening → `milestone` took, against its objective, and emit its metrics."""
        state = self.record.state
        if any(outcome.milestone == milestone for outcome in state.objectives):
            return  # a continued run reached it already
        at = at or workflow.now()
        outcome = self.outcome(milestone, at)
        state.objectives.append(outcome)
        self.record.note("objective", outcome.summary, milestone=milestone, met=outcome.met)
        log(state, outcome.summary)
        elapsed = timedelta(seconds=outcome.elapsed_seconds)
        result = None if outcome.met is None else "met" if outcome.met else "missed"
        self.emit_once(f"time_to_{milestone}", lambda: self.observe_time(TIME_TO, milestone, elapsed))
        if milestone == "contain" and result is not None:
            self.emit_once(
                "containment_objective", lambda: self.count(CONTAINMENT_OBJECTIVE, "contained within the objective or not", result=result)
            )
        self.emit_once(f"drill_time_to_{milestone}", lambda: self.observe_time(DRILL_TIME_TO, milestone, elapsed), drill=True)
        if result is not None:
            self.emit_once(
                f"drill_objective_{milestone}",
                lambda: self.count(DRILL_OBJECTIVE, "a drill's milestone within its objective or not", milestone=milestone, result=result),
                drill=True,
            )

    def fell_short(self, milestone: str, why: str) -> None:
        """The stage ended short of `milestone` (restore left protections in place): recorded as not
        reached, and no time observed — a partial restore is not a restore."""
        state = self.record.state
        if any(outcome.milestone == milestone for outcome in state.objectives):
            return
        at = workflow.now()
        elapsed = max((at - state.opened_at).total_seconds(), 0.0)
        within = self.record.policy.objectives.within(milestone)
        outcome = ObjectiveOutcome(
            milestone=milestone,  # type: ignore[arg-type]  # one of OBJECTIVE_MILESTONES
            reached_at=at,
            reached=False,
            severity=state.severity,
            elapsed_seconds=elapsed,
            objective_seconds=within.total_seconds() if within is not None else None,
            met=None,
            summary=f"not {REACHED_IN_WORDS[milestone]}: the {milestone} stage ended after {duration(elapsed)} at {state.severity}, {why}",
        )
        state.objectives.append(outcome)
        self.record.note("objective", outcome.summary, milestone=milestone, met=None, reached=False)
        log(state, outcome.summary)

    def acknowledgement_clock(self) -> None:
        """After the ack clock stopped or woke: the acknowledge milestone once someone did, and an
        ack SLA breach once the SLA passed with nobody acknowledging."""
        state = self.record.state
        sla_ends = state.opened_at + self.record.policy.ack_sla
        if state.acknowledged_at is not None:
            self.reached("acknowledge", at=state.acknowledged_at)
            breached = state.acknowledged_at > sla_ends
        else:
            breached = (state.closed_at or workflow.now()) >= sla_ends
        if breached:
            self.emit_once("ack_sla_breach", lambda: self.count(ACK_SLA_BREACHES, "the ack SLA passed with nobody acknowledging"))

    def closed(self, status: IncidentStatus) -> None:
        state = self.record.state
        closed_at = state.closed_at or workflow.now()
        if state.acknowledged_at is None:
            self.acknowledgement_clock()  # closed unacknowledged: past the SLA is a breach
        self.emit_once("time_to_close", lambda: self.observe_time(TIME_TO, "close", closed_at - state.opened_at, outcome=status.value))

    # --- where the time went ----------------------------------------------------------------

    def outcome(self, milestone: str, at: datetime) -> ObjectiveOutcome:
        state = self.record.state
        elapsed = max((at - state.opened_at).total_seconds(), 0.0)
        within = self.record.policy.objectives.within(milestone)
        objective = within.total_seconds() if within is not None else None
        met = None if objective is None else elapsed <= objective
        # Spans as (what took it, machine or human, seconds).
        spans: list[tuple[str, str, float]]
        if milestone == "acknowledge":
            human = elapsed
            spans = [("waiting for a responder to acknowledge", "human", elapsed)]
        else:
            waits = [(wait, overlap(wait.began_at, wait.ended_at, state.opened_at, at)) for wait in state.gate_waits]
            human = sum(seconds for _, seconds in waits)
            spans = [(waited_in_words(wait, seconds), "human", seconds) for wait, seconds in waits if seconds > 0]
            spans += self.machine_spans(milestone, at)
        machine = max(elapsed - human, 0.0)
        # Paging, notifying and the workflow's own steps between stages: machine time too.
        between = machine - sum(seconds for _, by, seconds in spans if by == "machine")
        if between > 0:
            spans.append((f"paging, notifying and the steps between stages took {duration(between)}", "machine", between))
        took, by, _ = max(spans, key=lambda span: span[2], default=("", "", 0.0))
        verdict = "no objective set" if objective is None else f"objective {duration(objective)}: {'met' if met else 'MISSED'}"
        summary = f"{REACHED_IN_WORDS[milestone]} in {duration(elapsed)} at {state.severity} ({verdict})"
        if milestone != "acknowledge":
            summary += f"; machine {duration(machine)}, people {duration(human)}"
            summary += f"; the longest ({by}): {took}" if took else ""
        return ObjectiveOutcome(
            milestone=milestone,  # type: ignore[arg-type]  # one of OBJECTIVE_MILESTONES
            reached_at=at,
            severity=state.severity,
            elapsed_seconds=elapsed,
            objective_seconds=objective,
            met=met,
            machine_seconds=machine,
            human_seconds=human,
            took_longest=took,
            took_longest_by=by,  # type: ignore[arg-type]
            summary=summary,
        )

    def machine_spans(self, milestone: str, at: datetime) -> list[tuple[str, str, float]]:
        """Each stage's own running time up to `at`, less the waits for people inside it."""
        state = self.record.state
        spans = []
        for name in STAGES_BEFORE[milestone]:
            stage = state.stage(name)
            if stage.started_at is None:
                continue
            ends = min(stage.finished_at or at, at)
            people = sum(overlap(w.began_at, w.ended_at, stage.started_at, ends) for w in state.gate_waits)
            seconds = overlap(stage.started_at, ends, state.opened_at, at) - people
            if seconds > 0:
                spans.append((f"{MACHINE_WORK[name]} took {duration(seconds)}", "machine", seconds))
        return spans

    # --- waits for people -------------------------------------------------------------------

    def waited(self, gate: str, stage: str, began_at: datetime, waited_for: str) -> None:
        waits = self.record.state.gate_waits
        waits.append(GateWait(gate=gate, stage=stage, began_at=began_at, ended_at=workflow.now(), waited_for=waited_for))
        del waits[:-GATE_WAITS_KEPT]

    # --- metrics ----------------------------------------------------------------------------

    def emit_once(self, key: str, emit: Callable[[], None], *, drill: bool = False) -> None:
        """Emit a metric once per occurrence, and only for the runs it counts: production's metrics
        (`drill=False`) for real incidents, the drill metrics (`drill=True`) for drills. A rehearsal
        emits nothing: it acted on nothing."""
        if self.record.input.dry_run or self.record.input.drill != drill:
            return  # nothing happened to users in a drill: it never counts toward production's objectives
        emitted = self.record.memory.metrics_emitted
        if key not in emitted:
            emitted.append(key)
            emit()

    def labels(self, **more: str) -> dict[str, str | int | float | bool]:
        return {"runbook": self.record.state.runbook, "severity": self.record.state.severity.value, **more}

    def observe_time(self, clocks: dict[str, str], milestone: str, elapsed: timedelta, **more: str) -> None:
        """Observe on `clocks[milestone]`: production's clocks (TIME_TO) or a drill's (DRILL_TIME_TO)."""
        histogram = workflow.metric_meter().create_histogram_timedelta(clocks[milestone], f"time from opening to {milestone}")
        histogram.record(max(elapsed, timedelta(0)), self.labels(**more))

    def count(self, name: str, description: str, **more: str) -> None:
        workflow.metric_meter().create_counter(name, description).add(1, self.labels(**more))


def overlap(begins: datetime, ends: datetime, window_begins: datetime, window_ends: datetime) -> float:
    return max((min(ends, window_ends) - max(begins, window_begins)).total_seconds(), 0.0)


def waited_in_words(wait: GateWait, seconds: float) -> str:
    return f"{wait.gate} waited {duration(seconds)}" + (f" for {wait.waited_for}" if wait.waited_for else "")


def approval_waited_for(requested_at: datetime, approvals: list[tuple[str, datetime]], count: int) -> str:
    """Whom an approval waited for longest: 'a second approver (sam)' when the gap before the
    second approval was the longest. `approvals`: (approver, when) of the votes that counted."""
    if not approvals:
        return "an approver"
    approvals = sorted(approvals, key=lambda vote: vote[1])
    moments = [requested_at] + [at for _, at in approvals]
    gaps = [later - earlier for earlier, later in zip(moments, moments[1:], strict=False)]
    longest = gaps.index(max(gaps))
    who = approvals[longest][0]
    if count == 1:
        return f"an approver ({who})"
    return f"{ORDINALS[min(longest, len(ORDINALS) - 1)]} approver ({who})"
