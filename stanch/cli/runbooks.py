"""`stanch runbooks validate|list|plan`: check runbooks before they are needed in an incident.

Mounted by `stanch.cli.main` as `app.add_typer(runbooks_app, name="runbooks")`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from temporalio.service import RPCError

from stanch.cli.plan import (
    ACTION_STAGES,
    ALERT_FORMATS,
    AlertFileError,
    IncidentPlan,
    dry_run_input,
    follow,
    plan_incident,
    print_plan,
    print_recorded,
    read_alert,
    route_to,
    stage_actions,
    start_dry_run,
)
from stanch.config.settings import Settings
from stanch.intake.routing import matching_runbook
from stanch.models.actions import TargetRef
from stanch.models.activity_io import ApplyInput
from stanch.models.incident import TERMINAL_STATUSES
from stanch.runbooks.loader import (
    LoadedRunbook,
    RunbookCatalog,
    RunbookError,
    default_runbooks_dir,
    load_catalog,
    load_runbook,
    runbook_files,
)
from stanch.targets.base import TargetError
from stanch.targets.config import TargetsError
from stanch.targets.registry import TargetRegistry

# The activity's own planning code: validate checks each step as the incident would run it.
from stanch.targets.steps import plan_step
from stanch.temporal.client import connect

runbooks_app = typer.Typer(
    help="Validate and list the runbooks that decide how each class of incident is handled.",
    no_args_is_help=True,
)

SHORT_SHA = 12


def _console() -> Console:
    # soft_wrap: an error line names file and field; wrapping it would split that apart for
    # anyone grepping CI logs.
    return Console(soft_wrap=True, highlight=False, emoji=False)


def _print_failure(console: Console, label: str, lines: list[str]) -> None:
    console.print(f"[bold red]FAIL[/] {escape(label)}")
    for line in lines:
        console.print(f"  {escape(line)}")


def _validate_files(console: Console, paths: list[Path]) -> tuple[list[LoadedRunbook], int]:
    loaded: list[LoadedRunbook] = []
    failures = 0
    for path in paths:
        try:
            runbook = load_runbook(path)
        except RunbookError as exc:
            failures += 1
            _print_failure(console, str(path), exc.lines)
            continue
        loaded.append(runbook)
        console.print(f"[bold green]OK[/]   {escape(str(path))}  {escape(runbook.runbook.name)}  sha256 {runbook.sha256[:SHORT_SHA]}")
    return loaded, failures


TargetsOption = Annotated[
    Path | None, typer.Option("--targets", help="Targets file (default: $STANCH_TARGETS, else $STANCH_HOME/targets.yaml if it exists).")
]


def _settings(targets: Path | None) -> Settings:
    settings = Settings.from_env()
    return settings.model_copy(update={"targets": targets}) if targets is not None else settings


def _registry(console: Console, settings: Settings) -> TargetRegistry:
    try:
        return TargetRegistry(settings)
    except TargetsError as exc:
        _print_failure(console, str(settings.targets_path), exc.lines)
        raise typer.Exit(1) from None


STEP_FIELDS = {"contain": "containment", "rollback": "rollback", "hotfix": "hotfix.actions"}  # stage -> runbook field


def _step_fields(loaded: LoadedRunbook):
    for stage in ACTION_STAGES:
        for index, action in enumerate(stage_actions(loaded.runbook, stage)):
            yield stage, f"{STEP_FIELDS[stage]}.{index}", index, action


def target_problems(loaded: LoadedRunbook, registry: TargetRegistry) -> list[str]:
    """Every target a runbook names is configured, and every step plans on its target."""
    path, runbook = loaded.path, loaded.runbook
    if runbook.target.adapter not in registry:
        return [f"{path}: target.adapter: no target named {runbook.target.adapter!r}; configured: {registry.names()}"]
    problems = []
    ref = TargetRef(adapter=runbook.target.adapter, model="<model>", version="<version>")
    for stage, field, index, action in _step_fields(loaded):
        if action.target is not None and action.target not in registry:
            problems.append(f"{path}: {field}.target: no target named {action.target!r}; configured: {registry.names()}")
            continue
        step = ApplyInput(incident_id="<incident>", stage=stage, index=index, target=ref, action=action)
        try:
            plan_step(registry, step)
        except TargetError as error:
            problems.append(f"{path}: {field}: {error}")
    return problems


@runbooks_app.command("validate")
def validate(
    path: Annotated[
        Path | None,
        typer.Argument(help="A runbook file or a folder of them (default: $STANCH_RUNBOOKS or the shipped runbooks/)."),
    ] = None,
    targets: TargetsOption = None,
) -> None:
    """Check runbooks against the schema, and against the targets file when there is one;
    exit 1 if any is invalid, naming file and field."""
    console = _console()
    target = path if path is not None else default_runbooks_dir()
    loaded: list[LoadedRunbook] = []
    if target.is_file():
        loaded, failures = _validate_files(console, [target])
    elif target.is_dir():
        files = runbook_files(target)
        if not files:
            _print_failure(console, str(target), [f"{target}: no *.yaml or *.yml runbooks in this folder"])
            raise typer.Exit(1)
        loaded, failures = _validate_files(console, files)
        if not failures:
            # Folder-wide rules: unique names and the catch-all `triage` runbook.
            try:
                RunbookCatalog(loaded)
            except RunbookError as exc:
                failures += 1
                _print_failure(console, f"{target} (catalog)", exc.lines)
    else:
        _print_failure(console, str(target), [f"{target}: no such file or folder"])
        raise typer.Exit(1)
    settings = _settings(targets)
    if not failures and (targets is not None or settings.targets_path.exists()):
        registry = _registry(console, settings)
        for runbook in loaded:
            problems = target_problems(runbook, registry)
            if problems:
                failures += 1
                _print_failure(console, f"{runbook.path} (targets in {settings.targets_path})", problems)
    if failures:
        console.print(f"[bold red]{failures} problem(s)[/] found")
        raise typer.Exit(1)


@runbooks_app.command("list")
def list_runbooks(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    directory: Annotated[Path | None, typer.Option("--dir", help="Runbook folder (default: $STANCH_RUNBOOKS or runbooks/).")] = None,
) -> None:
    """List the runbooks in match order: name, description, priority and sha256."""
    console = _console()
    folder = directory if directory is not None else default_runbooks_dir()
    try:
        catalog = load_catalog(folder)
    except RunbookError as exc:
        _print_failure(console, str(folder), exc.lines)
        raise typer.Exit(1) from None
    # Highest priority first: the order in which routing considers them.
    ordered = sorted(catalog.all(), key=lambda loaded: (-loaded.runbook.match.priority, loaded.runbook.name))
    rows: list[dict[str, Any]] = [
        {
            "name": loaded.runbook.name,
            "description": loaded.runbook.description,
            "priority": loaded.runbook.match.priority,
            "sha256": loaded.sha256,
            "sha256_short": loaded.sha256[:SHORT_SHA],
            "path": loaded.path,
        }
        for loaded in ordered
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Runbooks in {escape(str(folder))}")
    # Names and hashes are identifiers: never truncate them; let the description wrap.
    table.add_column("name", no_wrap=True, min_width=max((len(row["name"]) for row in rows), default=4))
    table.add_column("priority", justify="right", no_wrap=True)
    table.add_column("sha256", no_wrap=True, min_width=SHORT_SHA)
    table.add_column("description")
    for row in rows:
        table.add_row(row["name"], str(row["priority"]), row["sha256"][:SHORT_SHA], escape(row["description"]))
    console.print(table)


@runbooks_app.command("plan")
def plan(
    runbook: Annotated[str, typer.Argument(help="A runbook file, or the name of a runbook in --dir.")],
    alert: Annotated[Path, typer.Option("--alert", help="An alert payload (JSON or YAML) as any intake route accepts it.")],
    alert_format: Annotated[str, typer.Option("--format", help=f"The payload's sender: {', '.join(ALERT_FORMATS)}.")] = "auto",
    directory: Annotated[Path | None, typer.Option("--dir", help="Runbook folder (default: $STANCH_RUNBOOKS or runbooks/).")] = None,
    targets: TargetsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Run a whole incident (id dryrun-…) on Temporal that records every call and makes none.")
    ] = False,
    wait: Annotated[float, typer.Option("--wait", help="With --dry-run: seconds to follow the rehearsal before leaving it running.")] = 600,
) -> None:
    """Print every call the incident this alert opens would make, and its undo, without making one."""
    console = _console()
    folder = directory if directory is not None else default_runbooks_dir()
    try:
        loaded = load_runbook(Path(runbook)) if Path(runbook).is_file() else _by_name(runbook, folder)
        signals = read_alert(alert, alert_format)
    except (RunbookError, AlertFileError) as exc:
        _print_failure(console, runbook if isinstance(exc, RunbookError) else str(alert), getattr(exc, "lines", [str(exc)]))
        raise typer.Exit(1) from None
    settings = _settings(targets)
    if dry_run:
        _dry_run(console, loaded, signals, settings, wait)
        return
    registry = _registry(console, settings)
    plans: dict[str, IncidentPlan] = {}
    for signal in signals:  # one plan per incident the file would open (repeats join it)
        planned = plan_incident(loaded, signal, registry)
        plans.setdefault(planned.incident_id, planned)
    if as_json:
        typer.echo(json.dumps([planned.model_dump(mode="json") for planned in plans.values()], indent=2))
    else:
        _note_routing(console, loaded, signals, folder)
        for planned in plans.values():
            print_plan(console, planned)
    if any(planned.problems for planned in plans.values()):
        raise typer.Exit(1)


def _by_name(name: str, folder: Path) -> LoadedRunbook:
    found = load_catalog(folder).get(name)
    if found is None:
        raise RunbookError([f"{name}: neither a runbook file nor the name of a runbook in {folder}"])
    return found


def _note_routing(console: Console, loaded: LoadedRunbook, signals, folder: Path) -> None:
    """Say so when intake would hand this alert to another runbook."""
    try:
        catalog = load_catalog(folder)
    except RunbookError:
        return
    elsewhere = {matching_runbook(signal, catalog).runbook.name for signal in signals} - {loaded.runbook.name}
    if elsewhere:
        console.print(
            f"[yellow]note:[/] with the runbooks in {escape(str(folder))} this alert goes to {', '.join(sorted(elsewhere))}; planned with "
            f"{escape(loaded.runbook.name)} as asked"
        )


def _dry_run(console: Console, loaded: LoadedRunbook, signals, settings: Settings, wait: float) -> None:
    incidents = {route_to(loaded, signal).incident_id: signal for signal in signals}
    if len(incidents) != 1:
        _print_failure(
            console, "--dry-run", [f"the alert file opens {len(incidents)} incidents; a dry run rehearses one: keep one alert in it"]
        )
        raise typer.Exit(1)
    signal = next(iter(incidents.values()))
    input = dry_run_input(loaded, signal, settings)

    async def rehearse():
        client = await connect(settings.temporal_address, settings.temporal_namespace, settings)
        handle = await start_dry_run(client, input, signal, settings.task_queue)
        console.print(
            f"dry run [bold]{escape(input.incident_id)}[/] started on task queue {escape(settings.task_queue)}: every action records its "
            "calls, none is made"
        )
        return await follow(handle, console, wait)

    try:
        state = asyncio.run(rehearse())
    except (RPCError, RuntimeError) as exc:  # RuntimeError: the SDK's "Failed client connect"
        _print_failure(console, "--dry-run", [f"Temporal at {settings.temporal_address or 'the SDK default'}: {exc}"])
        raise typer.Exit(1) from None
    if state is not None:
        print_recorded(console, state)
    if state is None or state.status not in TERMINAL_STATUSES:
        console.print(
            f"[yellow]still running after {wait:g}s[/]: follow it with `stanch incidents show {escape(input.incident_id)}` (is a worker "
            "running?)"
        )
        raise typer.Exit(2)
