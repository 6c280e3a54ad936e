"""`stanch gate`: the regression gate, for a CI step or a check before a release.

    stanch gate --model support-bot --candidate 3 [--json]
        replays every active case of support-bot's regression suite against version 3 and exits
        0 pass, 1 fail (each regressing case named with the incident that recorded it),
        2 inconclusive or cannot run (the variable to fix named: STANCH_GATEWAY_URL,
        STANCH_DATABASE_URL).
    stanch gate --model support-bot --candidate 3 --guardrails-file guardrails.yaml
        the same, judged on the answers users would get under that guardrail config (the
        gateway redacts what its patterns match); --system-prompt-file adds a candidate prompt.
    stanch gate cases --model support-bot [--json]
        lists the suite: each case's key, incident, detectors, and its retirement if retired.
    stanch gate retire CASE_KEY --reason "..." --by alice
        retires a case: it no longer guards changes; the reason, who and when are recorded.

It reads the records database and asks the gateway itself (as a worker does), with the same
settings: STANCH_HOME, STANCH_DATABASE_URL, STANCH_GATEWAY_URL, STANCH_GATEWAY_ADMIN_TOKEN.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer
import yaml
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from stanch.cli.output import make_console
from stanch.config.errors import ConfigFileError
from stanch.config.settings import Settings, SettingsError
from stanch.gate.models import GateRequest, GateVerdict
from stanch.gate.run import GateCannotRun, detector_specs, listed, run_gate
from stanch.runbooks.loader import RunbookError, load_catalog
from stanch.stores.records import Records, RecordsError
from stanch.stores.regression import CaseNotFound, RegressionSuite
from stanch.targets.registry import TargetRegistry

console = make_console()
errors = make_console(stderr=True)

EXIT_CANNOT_RUN = 2  # as inconclusive: the gate did not say the candidate is safe

gate_app = typer.Typer(
    help="The regression gate: replay every past incident's repro cases against a candidate.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def cannot_run(message: str) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(EXIT_CANNOT_RUN)


def settings_or_exit() -> Settings:
    """The settings; a bad STANCH_* variable is "cannot run" (2), never "the candidate failed" (1)."""
    try:
        return Settings.from_env()
    except SettingsError as error:
        raise cannot_run(str(error)) from None


def suite_of(settings: Settings) -> RegressionSuite:
    try:
        return RegressionSuite(Records.from_settings(settings), settings.regression_dir)
    except RecordsError as error:
        raise cannot_run(str(error)) from None


@gate_app.callback()
def gate(
    context: typer.Context,
    model: str = typer.Option(None, "--model", "-m", help="the model whose regression suite is replayed"),
    candidate: str = typer.Option(None, "--candidate", "-c", help="the model version to check"),
    system_prompt_file: Path = typer.Option(None, "--system-prompt-file", help="a candidate system prompt, sent first in every case"),
    guardrails_file: Path = typer.Option(
        None,
        "--guardrails-file",
        help="a candidate guardrail config: a YAML (or JSON) list of regex patterns the gateway redacts from answers, "
        "e.g. `- 'sk-live-\\w+'` (single quotes keep backslashes as they are)",
    ),
    target: str = typer.Option("gateway", help="the configured target serving the model (targets.yaml)"),
    detector: list[str] = typer.Option([], "--detector", help="judge every case by this detector (repeat); default: each case's own"),
    samples: int = typer.Option(5, help="answers asked per case"),
    temperature: float = typer.Option(0.7, help="the temperature users get"),
    harmful_at_least: int = typer.Option(1, help="a case regresses when at least this many samples are harmful"),
    as_json: bool = typer.Option(False, "--json", help="print the verdict as JSON"),
) -> None:
    """Replay every active regression case of MODEL against CANDIDATE: exit 0 pass, 1 fail, 2 inconclusive or cannot run."""
    if context.invoked_subcommand is not None:
        return
    if not model or not candidate:
        raise cannot_run("say which model and which candidate: stanch gate --model MODEL --candidate VERSION")
    guardrails = guardrails_from(guardrails_file) if guardrails_file else None
    try:
        request = GateRequest(
            model=model,
            candidate=candidate,
            system_prompt=system_prompt_file.read_text() if system_prompt_file else None,
            guardrails=guardrails,
            target=target,
            detectors=detector,
            samples=samples,
            temperature=temperature,
            harmful_at_least=harmful_at_least,
        )
    except ValidationError as invalid:
        problems = "; ".join(f"{asked_as(e['loc'], guardrails_file)}: {e['msg']}" for e in invalid.errors())
        raise cannot_run(f"the gate cannot run as asked: {problems}") from None
    except OSError as unreadable:
        raise cannot_run(f"--system-prompt-file {system_prompt_file}: {unreadable.strerror}") from None
    settings = settings_or_exit()
    try:
        targets = TargetRegistry(settings)
        specs = detector_specs(load_catalog(settings.runbooks_dir))
    except (ConfigFileError, RunbookError) as broken:
        raise cannot_run(str(broken)) from None
    suite = suite_of(settings)
    try:
        verdict = asyncio.run(run_gate(request, suite=suite, targets=targets, detector_specs=specs))
    except GateCannotRun as failure:
        raise cannot_run(f"the gate could not run: {failure}") from None
    finally:
        suite.records.dispose()
    if as_json:
        print(verdict.model_dump_json(indent=2))
    else:
        print_verdict(verdict)
    raise typer.Exit(verdict.exit_code)


def guardrails_from(path: Path) -> list[str]:
    """The patterns of a --guardrails-file: a YAML (or JSON) list of strings. Exits 2 naming
    the file and what is wrong with it; whether each pattern compiles GateRequest checks."""
    try:
        patterns = yaml.safe_load(path.read_text())
    except OSError as unreadable:
        raise cannot_run(f"--guardrails-file {path}: {unreadable.strerror}") from None
    except yaml.YAMLError as broken:
        where = getattr(broken, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise cannot_run(f"--guardrails-file {path} is not YAML{line}: write a list of regex patterns, e.g. - 'sk-live-\\w+'") from None
    if not isinstance(patterns, list) or not all(isinstance(pattern, str) for pattern in patterns):
        raise cannot_run(f"--guardrails-file {path} must hold a YAML (or JSON) list of regex patterns, each a string")
    if not patterns:
        raise cannot_run(f"--guardrails-file {path} holds no pattern: a guardrail config redacts something")
    return patterns


def asked_as(location: tuple[int | str, ...], guardrails_file: Path | None) -> str:
    """Where a problem is, as the user wrote it: the guardrails are their file."""
    if location and location[0] == "guardrails" and guardrails_file is not None:
        return f"--guardrails-file {guardrails_file}"
    return ".".join(str(part) for part in location) or "request"


def print_verdict(verdict: GateVerdict) -> None:
    colour = {"pass": "green", "fail": "red", "inconclusive": "yellow"}[verdict.verdict]
    if verdict.cases:
        table = Table(title=f"regression gate: {verdict.model} version {verdict.candidate}")
        for column in ("case", "incident", "result", "detectors", "why"):
            table.add_column(column, overflow="fold")
        for case in verdict.cases:
            table.add_row(case.case_key, case.incident_id, case.result, ", ".join(case.detectors), case.reason)
        console.print(table)
    for case in verdict.cases:
        if case.result == "regressed":
            console.print(
                f"[red]regressed:[/] case {case.case_key} (incident {escape(case.incident_id)}): {escape(case.reason)}", highlight=False
            )
    console.print(f"[bold {colour}]{verdict.verdict.upper()}[/]: {escape(verdict.note)}", highlight=False)


@gate_app.command("cases")
def cases(
    model: str = typer.Option(..., "--model", "-m", help="the model whose suite to list"),
    as_json: bool = typer.Option(False, "--json", help="print the cases as JSON"),
) -> None:
    """List a model's regression cases: key, incident, detectors, and the retirement of those retired."""
    suite = suite_of(settings_or_exit())
    try:
        shown = listed(suite.cases(model, include_retired=True))
    except RecordsError as error:
        raise cannot_run(str(error)) from None
    finally:
        suite.records.dispose()
    if as_json:
        print(json.dumps([case.model_dump(mode="json") for case in shown], indent=2))
        return
    table = Table(title=f"regression suite of {model}: {sum(not c.retired for c in shown)} active, {sum(c.retired for c in shown)} retired")
    for column in ("case", "incident", "added", "detectors", "retired"):
        table.add_column(column, overflow="fold")
    for case in shown:
        retired = f"by {case.retired_by} at {case.retired_at:%Y-%m-%d %H:%M}: {case.reason}" if case.retired and case.retired_at else ""
        table.add_row(case.case_key, case.incident_id, f"{case.added_at:%Y-%m-%d %H:%M}", ", ".join(case.detectors), escape(retired))
    console.print(table)


@gate_app.command("retire")
def retire(
    case_key: str = typer.Argument(..., help="the case's key (`stanch gate cases --model M` lists them)"),
    reason: str = typer.Option(..., "--reason", help="why the case no longer guards changes (recorded)"),
    by: str = typer.Option(..., "--by", help="who retires it (recorded)"),
    model: str = typer.Option(None, "--model", "-m", help="the case's model, when its key is in several suites"),
) -> None:
    """Retire a regression case: it stops guarding changes; the reason, who and when are recorded."""
    suite = suite_of(settings_or_exit())
    try:
        case_model, retirement = suite.retire(case_key, reason=reason, by=by, model=model)
    except (CaseNotFound, ValueError) as refused:
        errors.print(f"[bold red]error:[/] {escape(str(refused))}", highlight=False)
        raise typer.Exit(1) from None
    except RecordsError as error:
        raise cannot_run(str(error)) from None
    finally:
        suite.records.dispose()
    console.print(
        f"retired case {case_key} of {escape(case_model)}: by {escape(retirement.retired_by)} at "
        f"{retirement.retired_at:%Y-%m-%d %H:%M:%S} UTC: {escape(retirement.reason)}",
        highlight=False,
    )
