"""`stanch runbooks validate|list`: check runbooks before they are needed in an incident.

Mounted by `stanch.cli.main` as `app.add_typer(runbooks_app, name="runbooks")`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stanch.runbooks.loader import (
    LoadedRunbook,
    RunbookCatalog,
    RunbookError,
    default_runbooks_dir,
    load_catalog,
    load_runbook,
    runbook_files,
)

runbooks_app = typer.Typer(
    help="Validate and list the runbooks that decide how each class of incident is handled.",
    no_args_is_help=True,
)

SHORT_SHA = 12


def _console() -> Console:
    # soft_wrap: an error line names file and field; wrapping it would split that apart for
    # anyone grepping CI logs.
    return Console(soft_wrap=True, highlight=False)


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
        console.print(
            f"[bold green]OK[/]   {escape(str(path))}  {escape(runbook.runbook.name)}  sha256 {runbook.sha256[:SHORT_SHA]}"
        )
    return loaded, failures


@runbooks_app.command("validate")
def validate(
    path: Annotated[
        Optional[Path],
        typer.Argument(help="A runbook file or a folder of them (default: $STANCH_RUNBOOKS or the shipped runbooks/)."),
    ] = None,
) -> None:
    """Check runbooks against the schema; exit 1 if any is invalid, naming file and field."""
    console = _console()
    target = path if path is not None else default_runbooks_dir()
    if target.is_file():
        _, failures = _validate_files(console, [target])
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
    if failures:
        console.print(f"[bold red]{failures} problem(s)[/] found")
        raise typer.Exit(1)


@runbooks_app.command("list")
def list_runbooks(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    directory: Annotated[
        Optional[Path], typer.Option("--dir", help="Runbook folder (default: $STANCH_RUNBOOKS or runbooks/).")
    ] = None,
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
    rows = [
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
