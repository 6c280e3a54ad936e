"""What `stanch runbooks plan` does: every call an incident would make, and its undo, before it happens.

The alert file is routed as intake would route it, but to the runbook named on the command line;
each contain, rollback and hotfix step is planned through the same code a dry-run incident uses
(`stanch.targets.steps.plan_step`: same target, same rendered params, same idempotency key) and
through the adapters configured in the targets file. Nothing here calls a control plane.

`--dry-run` goes one step further: it starts a real incident workflow marked `dry_run`, id
`dryrun-<incident id>-<6 hex>`, on the configured Temporal and task queue. Its gates, approvals
and clocks run as in a live incident; each action records the calls it would make instead.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from rich.console import Console
from rich.markup import escape
from temporalio.client import Client, WorkflowHandle

from stanch.config.settings import Settings
from stanch.intake.routing import Route, incident_id_for, render_template, signal_version
from stanch.intake.sources import cloudevents, datadog, grafana, pagerduty, reports, sentry
from stanch.intake.sources.alertmanager import AlertmanagerWebhook, alertmanager_signals
from stanch.intake.start import start_incident, with_reported_hits, without_secrets
from stanch.models.actions import ActionSpec, TargetRef, reversibility
from stanch.models.activity_io import ApplyInput
from stanch.models.incident import TERMINAL_STATUSES, IncidentInput, IncidentState
from stanch.models.signals import Signal
from stanch.runbooks.loader import LoadedRunbook
from stanch.runbooks.schema import Runbook
from stanch.targets.base import PlannedCall, TargetError
from stanch.targets.registry import TargetRegistry
from stanch.targets.steps import StepPlan, plan_step

ALERT_FORMATS = ("auto", "generic", "alertmanager", "grafana", "pagerduty", "datadog", "sentry", "cloudevents", "report", "finding")
ACTION_STAGES = ("contain", "rollback", "hotfix")
RESTORED_STAGES = ("contain", "rollback")
RUN_PLACEHOLDER = "<run>"  # the workflow run is unknown until the incident starts
BODY_PREVIEW = 300


class AlertFileError(Exception):
    pass


# --- the alert file ----------------------------------------------------------------------


def _detect(payload: Any, headers: dict[str, str]) -> str:
    if any(name.startswith("ce-") for name in headers):
        return "cloudevents"
    if "sentry-hook-resource" in headers:
        return "sentry"
    if isinstance(payload, list):
        return "cloudevents" if payload and all(isinstance(p, dict) and "specversion" in p for p in payload) else "generic"
    if not isinstance(payload, dict):
        raise AlertFileError("an alert file holds a JSON or YAML object (or a list of them)")
    if "specversion" in payload:
        return "cloudevents"
    if "signal_id" in payload:
        return "generic"
    if "alerts" in payload:
        return "grafana" if "orgId" in payload else "alertmanager"
    if "event_action" in payload:
        return "pagerduty"
    if sentry.resource_of(payload):
        return "sentry"
    if "alert_transition" in payload:
        return "datadog"
    if "reporter" in payload:
        return "report"
    if "auditor" in payload:
        return "finding"
    raise AlertFileError("cannot tell which sender this payload is from: give --format")


def _signals(payload: Any, kind: str, headers: dict[str, str]) -> list[Signal]:
    if kind == "generic":
        return [Signal.model_validate(item) for item in (payload if isinstance(payload, list) else [payload])]
    if kind == "alertmanager":
        return alertmanager_signals(AlertmanagerWebhook.model_validate(payload))
    if kind == "grafana":
        return grafana.grafana_signals(grafana.GrafanaWebhook.model_validate(payload))
    if kind == "pagerduty":
        return pagerduty.pagerduty_signals(TypeAdapter(pagerduty.PagerDutyEvent).validate_python(payload))
    if kind == "datadog":
        return datadog.datadog_signals(datadog.DatadogWebhook.model_validate(payload))
    if kind == "sentry":
        if (headers.get("sentry-hook-resource") or sentry.resource_of(payload)) == "metric_alert":
            return sentry.metric_alert_signals(sentry.SentryMetricAlertWebhook.model_validate(payload))
        return sentry.issue_alert_signals(sentry.SentryIssueAlertWebhook.model_validate(payload))
    if kind == "cloudevents":
        if not any(name.startswith("ce-") for name in headers):
            batch = isinstance(payload, list)
            headers = {"content-type": cloudevents.BATCH_CONTENT_TYPE if batch else cloudevents.STRUCTURED_CONTENT_TYPE}
        received = cloudevents.parse_http(headers, json.dumps(payload).encode())
        return [cloudevents.cloudevent_signal(event) for event in received]
    if kind == "report":
        return reports.user_report_signals(reports.UserReport.model_validate(payload))
    return reports.audit_finding_signals(reports.AuditFinding.model_validate(payload))


def read_alert(path: Path, kind: str = "auto") -> list[Signal]:
    """The signals intake would make of this file: any payload an intake route accepts, or a
    saved request `{headers: {...}, body: ...}` where the headers matter (CloudEvents binary, Sentry)."""
    try:
        payload = yaml.safe_load(Path(path).read_text(encoding="utf-8"))  # JSON is YAML too
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AlertFileError(f"{path}: cannot read: {exc}") from exc
    headers: dict[str, str] = {}
    if isinstance(payload, dict) and set(payload) == {"headers", "body"} and isinstance(payload["headers"], dict):
        headers = {str(name).lower(): str(value) for name, value in payload["headers"].items()}
        payload = payload["body"]
    if kind not in ALERT_FORMATS:
        raise AlertFileError(f"--format {kind!r}: one of {', '.join(ALERT_FORMATS)}")
    kind = _detect(payload, headers) if kind == "auto" else kind
    try:
        signals = _signals(payload, kind, headers)
    except (ValidationError, cloudevents.InvalidCloudEvent, AttributeError, TypeError) as exc:
        raise AlertFileError(f"{path}: not a valid {kind} payload: {exc}") from exc
    if not signals:
        raise AlertFileError(f"{path}: the {kind} payload carries no alert")
    return signals


def route_to(loaded: LoadedRunbook, signal: Signal) -> Route:
    """Where intake would send this signal if `loaded` were the runbook that matched it."""
    runbook = loaded.runbook
    dedup_key = render_template(runbook.dedup_key, signal, runbook.name)
    model = render_template(runbook.target.model, signal, runbook.name)
    target = TargetRef(adapter=runbook.target.adapter, model=model, version=signal_version(signal))
    return Route(runbook=loaded, incident_id=incident_id_for(runbook.name, model, dedup_key), dedup_key=dedup_key, target=target)


# --- the plan ----------------------------------------------------------------------------


class StepTiming(BaseModel):
    """When a step would run at each severity: its stage's gate, and whether the step is reversible."""

    index: int
    kind: str
    reversible: bool
    why: str
    runs: dict[str, str] = Field(description="severity -> at once | automatically | waits for approval | skipped")


class StagePlan(BaseModel):
    stage: str
    gates: dict[str, str] = Field(default_factory=dict, description="severity -> auto | skip | approve N (roles)")
    steps: list[StepPlan] = Field(default_factory=list)
    timing: list[StepTiming] = Field(default_factory=list, description="per step, when it would run at each severity")
    problems: list[str] = Field(default_factory=list, description="steps that could not run as written")


class RestoreStep(BaseModel):
    stage: str
    index: int
    kind: str
    target: TargetRef
    undo_key: str
    calls: list[PlannedCall]


class IncidentPlan(BaseModel):
    runbook: str
    runbook_sha256: str
    signal_id: str
    incident_id: str
    dedup_key: str
    target: TargetRef
    stages: list[StagePlan]
    restore: list[RestoreStep] = Field(default_factory=list, description="what restore would undo, in its order")

    @property
    def problems(self) -> list[str]:
        return [problem for stage in self.stages for problem in stage.problems]


def stage_actions(runbook: Runbook, stage: str) -> list[ActionSpec]:
    if stage == "contain":
        return runbook.containment
    if stage == "rollback":
        return runbook.rollback
    return runbook.hotfix.actions if runbook.hotfix else []


def _gate(runbook: Runbook, stage: str) -> dict[str, str]:
    gates = {}
    for severity, policy in runbook.policy.items():
        gate = policy.gate(stage)
        if gate.mode == "approve" and gate.approve is not None:  # StageGate._approval_given: always set for approve
            required = f", incl. {'+'.join(gate.approve.required_roles)}" if gate.approve.required_roles else ""
            at_once = ", reversible steps at once" if gate.reversible_at_once else ""
            gates[severity.value] = f"approve {gate.approve.count} ({'/'.join(gate.approve.roles)}{required}){at_once}"
        else:
            gates[severity.value] = gate.mode
    return gates


def step_timing(runbook: Runbook, stage: str, index: int, action: ActionSpec) -> StepTiming:
    """When the step would run at each severity: skipped, automatically, at once (a reversible step
    under `reversible: auto`), or once the stage's approval is given."""
    reversible = reversibility(action)
    runs = {}
    for severity, policy in runbook.policy.items():
        gate = policy.gate(stage)
        if gate.mode == "skip":
            runs[severity.value] = "skipped"
        elif gate.mode == "auto":
            runs[severity.value] = "automatically"
        else:
            runs[severity.value] = "at once" if gate.reversible_at_once and reversible.reversible else "waits for approval"
    return StepTiming(index=index, kind=action.kind, reversible=reversible.reversible, why=reversible.why, runs=runs)


def plan_incident(loaded: LoadedRunbook, signal: Signal, targets: TargetRegistry) -> IncidentPlan:
    """Every step of every action stage, planned exactly as the incident would run it."""
    route = route_to(loaded, signal)
    runbook = loaded.runbook
    stages = []
    for stage in ACTION_STAGES:
        planned = StagePlan(stage=stage, gates=_gate(runbook, stage))
        for index, action in enumerate(stage_actions(runbook, stage)):
            planned.timing.append(step_timing(runbook, stage, index, action))
            input = ApplyInput(
                incident_id=route.incident_id,
                occurrence=f"{route.incident_id}@{RUN_PLACEHOLDER}",
                stage=stage,
                index=index,
                target=route.target,
                action=action,
            )
            try:
                planned.steps.append(plan_step(targets, input))
            except TargetError as error:
                planned.problems.append(f"{stage} step {index} ({action.kind}): {error}")
        stages.append(planned)
    restore = [
        RestoreStep(
            stage=step.stage,
            index=step.index,
            kind=step.kind,
            target=step.target,
            undo_key=f"{step.idempotency_key}/undo",
            calls=[undo for call in step.calls for undo in call.undo],
        )
        for stage in reversed([s for s in stages if s.stage in RESTORED_STAGES])
        for step in reversed(stage.steps)
        if any(call.undo for call in step.calls)
    ]
    return IncidentPlan(
        runbook=runbook.name,
        runbook_sha256=loaded.sha256,
        signal_id=signal.signal_id,
        incident_id=route.incident_id,
        dedup_key=route.dedup_key,
        target=route.target,
        stages=stages,
        restore=restore,
    )


def _body(body: Any) -> str:
    if body is None:
        return ""
    text = json.dumps(body, separators=(",", ":"))
    return " " + (text if len(text) <= BODY_PREVIEW else text[:BODY_PREVIEW] + "…")


def _call_line(call: PlannedCall, *, say_what: bool = False) -> str:
    if not call.method:
        return call.operation
    return f"{call.method} {call.url}{_body(call.body)}" + (f"  ({call.operation})" if say_what else "")


def when_it_runs(timed: StepTiming) -> str:
    """`runs automatically at low; waits for approval at medium, high, critical (not reversible: …)`."""
    by_outcome: dict[str, list[str]] = {}
    for severity, outcome in timed.runs.items():
        by_outcome.setdefault(outcome, []).append(severity)
    runs = {"at once": "runs at once", "automatically": "runs automatically"}
    said = "; ".join(f"{runs.get(outcome, outcome)} at {', '.join(severities)}" for outcome, severities in by_outcome.items())
    return f"{said} ({'reversible' if timed.reversible else 'not reversible'}: {timed.why})"


def print_plan(console: Console, plan: IncidentPlan) -> None:
    console.print(
        f"[bold]{escape(plan.runbook)}[/] (sha256 {plan.runbook_sha256[:12]}) for signal {escape(plan.signal_id)}\n"
        f"  incident {escape(plan.incident_id)} on {escape(str(plan.target))}; keys show its run as {RUN_PLACEHOLDER}\n"
        f"  [dim]plan only: nothing has been called[/]"
    )
    for stage in plan.stages:
        gates = ", ".join(f"{severity} {gate}" for severity, gate in stage.gates.items())
        note = "  [dim](restore keeps it)[/]" if stage.stage == "hotfix" else ""
        console.print(f"\n[bold cyan]{stage.stage}[/]  [dim]{escape(gates)}[/]{note}")
        if not stage.steps and not stage.problems:
            console.print("  nothing to do")
        timing = {timed.index: timed for timed in stage.timing}
        for step in stage.steps:
            console.print(f"  {step.index}. [bold]{escape(step.kind)}[/]" + (f" — {escape(step.description)}" if step.description else ""))
            console.print(f"     target {escape(step.target.adapter)}  key {escape(step.idempotency_key)}")
            if step.index in timing:
                console.print(f"     {escape(when_it_runs(timing[step.index]))}")
            for number, call in enumerate(step.calls, start=1):
                # The step's last call is the one its description describes; say what the others are for.
                console.print(f"     → {escape(_call_line(call, say_what=number < len(step.calls)))}")
                for undo in call.undo if stage.stage in RESTORED_STAGES else []:
                    console.print(f"       undo ← {escape(_call_line(undo))}")
        for problem in stage.problems:
            console.print(f"  [bold red]cannot run:[/] {escape(problem)}")
    console.print("\n[bold cyan]restore[/]  [dim]undoes in this order, each under its undo key[/]")
    if not plan.restore:
        console.print("  nothing to undo")
    for undo_step in plan.restore:
        console.print(
            f"  {undo_step.stage} {undo_step.index}. {escape(undo_step.kind)} on {escape(undo_step.target.adapter)}"
            f"  key {escape(undo_step.undo_key)}"
        )
        for call in undo_step.calls:
            console.print(f"     ← {escape(_call_line(call))}")


# --- the dry run -------------------------------------------------------------------------


def dry_run_input(loaded: LoadedRunbook, signal: Signal, settings: Settings) -> IncidentInput:
    route = route_to(loaded, signal)
    return IncidentInput(
        incident_id=f"dryrun-{route.incident_id}-{secrets.token_hex(3)}",  # never a live incident's id
        runbook=loaded.runbook,
        runbook_sha256=loaded.sha256,
        target=route.target,
        dedup_key=f"dryrun/{route.dedup_key}",
        upsert_search_attributes=settings.upsert_search_attributes,
        dry_run=True,
    )


async def start_dry_run(client: Client, input: IncidentInput, signal: Signal, task_queue: str) -> WorkflowHandle:
    """Starts the rehearsal as intake starts an incident; its id is fresh, so it always opens."""
    started = await start_incident(
        client, input, with_reported_hits(without_secrets(signal), signal, input.runbook), task_queue=task_queue,
        summary=f"DRY RUN of {input.runbook.name} on {input.target}: records calls, makes none",
    )  # fmt: skip
    return started.handle


async def follow(handle, console: Console, wait_seconds: float, poll_seconds: float = 0.5) -> IncidentState | None:
    """Print the rehearsal's timeline as it grows, until it ends or `wait_seconds` pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    shown, state, asked = 0, None, None
    while loop.time() < deadline:
        state = await handle.query("state", result_type=IncidentState)
        for entry in state.timeline[shown:]:
            console.print(f"  [dim]{entry.at:%H:%M:%S}[/] {escape(entry.kind)}: {escape(entry.message)}")
        shown = len(state.timeline)
        pending = state.pending_approval
        if pending is not None and pending.stage != asked:
            asked = pending.stage
            console.print(
                f"  [yellow]waiting:[/] approve with `stanch approve {escape(state.id)} --stage {pending.stage}`, as in a live incident"
            )
        if state.status in TERMINAL_STATUSES:
            return state
        await asyncio.sleep(poll_seconds)
    return state


def print_recorded(console: Console, state: IncidentState) -> None:
    console.print(f"\n[bold]{escape(state.id)}[/] {state.status}: what the incident would have called")
    if not state.actions:
        console.print("  no action was reached")
    for action in state.actions:
        undone = "  [dim](undone)[/]" if action.undone_at else ""
        console.print(f"  {action.stage} {action.index}. [bold]{escape(action.kind)}[/] on {escape(action.target.adapter)}{undone}")
        for call in action.result.get("would_call", []):
            console.print(f"     → {escape(_call_line(PlannedCall.model_validate(call)))}")
        for call in action.result.get("undo_would_call", []):
            console.print(f"     ← {escape(_call_line(PlannedCall.model_validate(call)))}")
