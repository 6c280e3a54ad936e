"""Responder commands over the HTTP API: `incidents list|show`, `ack`, `approve`, `reject`,
`resolve`, `note`, `correct`.

They speak HTTP rather than Temporal so a responder needs only the API's URL, and every
decision goes through the same validation as the board and the webhooks. `--json` prints the
API's answer exactly as it came.
"""

from __future__ import annotations

import getpass
import os
from typing import Annotated, Any

import httpx
import typer
from rich.panel import Panel
from rich.table import Column, Table

from stanch.cli.output import make_console

console = make_console()
err_console = make_console(stderr=True)

incidents_app = typer.Typer(help="Read incidents.", no_args_is_help=True)

DEFAULT_API = "http://127.0.0.1:8200"
ApiOption = Annotated[str, typer.Option("--api", envvar="STANCH_API_URL", help="the Stanch API's base URL")]
JsonOption = Annotated[bool, typer.Option("--json", help="print the API's JSON answer as is")]
ByOption = Annotated[str | None, typer.Option("--by", envvar="STANCH_RESPONDER", help="who you are (default: your login)")]
RoleOption = Annotated[list[str] | None, typer.Option("--role", help="a role you hold (repeat for several)")]


def _call(api: str, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None) -> httpx.Response:
    url = api.rstrip("/") + path
    # With a token the API decides who you are and which roles you hold; --by and --role
    # only count against a --insecure-dev API (the local demo).
    token = os.environ.get("STANCH_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, url, json=body, params=params, headers=headers, timeout=60.0)
    except httpx.TransportError as exc:
        err_console.print(
            f"[bold red]error:[/] cannot reach the Stanch API at {api} ({exc}); is `stanch up` running? Set --api or STANCH_API_URL."
        )
        raise typer.Exit(2) from exc
    if response.is_error:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        err_console.print(f"[bold red]{response.status_code}:[/] {detail}")
        raise typer.Exit(1)
    return response


def _responder(by: str | None) -> str:
    return by or os.environ.get("USER") or getpass.getuser()


def _decide(api: str, incident_id: str, path: str, body: dict[str, Any], as_json: bool) -> None:
    response = _call(api, "POST", f"/v1/incidents/{incident_id}/{path}", body)
    if as_json:
        typer.echo(response.text)
    else:
        console.print(f"[green]✓[/] {response.json().get('message', 'accepted')}")


# --- reads ---------------------------------------------------------------------------


@incidents_app.command("list")
def list_incidents(
    api: ApiOption = DEFAULT_API,
    status: Annotated[str | None, typer.Option(help="open, containing, closed, ...")] = None,
    severity: Annotated[str | None, typer.Option(help="low, medium, high or critical")] = None,
    runbook: Annotated[str | None, typer.Option(help="runbook name")] = None,
    target: Annotated[str | None, typer.Option(help="adapter:model, e.g. gateway:support-bot")] = None,
    opened_since: Annotated[str | None, typer.Option(help="ISO 8601 time, e.g. 2026-11-26T09:00:00Z")] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 100,
    as_json: JsonOption = False,
) -> None:
    """Incidents, newest first."""
    filters = {"status": status, "severity": severity, "runbook": runbook, "target": target, "opened_since": opened_since}
    params = {k: v for k, v in filters.items() if v}
    response = _call(api, "GET", "/v1/incidents", params={**params, "limit": limit})
    if as_json:
        typer.echo(response.text)
        return
    incidents = response.json()
    if not incidents:
        console.print("no incidents")
        return
    # The id is what a responder copies into the next command: never elide it. It starts
    # with the runbook's name, so the runbook needs no column of its own.
    id_width = max(len(incident["id"]) for incident in incidents)
    table = Table(
        Column("id", no_wrap=True, min_width=id_width),
        Column("status", no_wrap=True),
        Column("severity", no_wrap=True),
        Column("target", overflow="fold"),
        Column("opened (UTC)", overflow="fold"),
    )
    for incident in incidents:
        table.add_row(
            incident["id"],
            incident.get("status") or "?",
            incident.get("severity") or "?",
            incident.get("target") or "?",
            (incident.get("opened_at") or "")[:16].replace("T", " "),
        )
    console.print(table)


@incidents_app.command("show")
def show_incident(
    incident_id: Annotated[str, typer.Argument(help="the incident id")],
    api: ApiOption = DEFAULT_API,
    timeline: Annotated[int, typer.Option(help="how many of the latest timeline entries to show")] = 15,
    as_json: JsonOption = False,
) -> None:
    """One incident: status, stages, what awaits approval, actions and the latest timeline."""
    response = _call(api, "GET", f"/v1/incidents/{incident_id}")
    if as_json:
        typer.echo(response.text)
        return
    _render_incident(response.json(), timeline)


def _render_incident(state: dict[str, Any], timeline_entries: int) -> None:
    target = state.get("target") or {}
    version = f"@{target['version']}" if target.get("version") else ""
    summary = Table.grid(padding=(0, 2))
    summary.add_row("status", f"[bold]{state['status']}[/]")
    summary.add_row("severity", state["severity"])
    summary.add_row("runbook", f"{state['runbook']} (sha256 {state.get('runbook_sha256', '')[:12]})")
    summary.add_row("target", f"{target.get('adapter', '?')}:{target.get('model', '?')}{version}")
    summary.add_row("opened", str(state.get("opened_at")))
    summary.add_row(
        "acknowledged", f"{state.get('acknowledged_by')} at {state.get('acknowledged_at')}" if state.get("acknowledged_by") else "no"
    )
    if state.get("close_reason"):
        summary.add_row("closed", f"{state.get('closed_at')}: {state['close_reason']}")
    console.print(Panel(summary, title=f"incident {state['id']}", expand=False))

    stages = Table("stage", "status", "detail")
    for stage in state.get("stages", []):
        stages.add_row(stage["name"], stage["status"], stage.get("detail", ""))
    console.print(stages)

    pending = state.get("pending_approval")
    if pending:
        console.print(
            f"[bold yellow]awaiting approval:[/] {pending['stage']} needs {pending['count']} of roles "
            f"{', '.join(pending['roles'])}; approved so far by {', '.join(pending.get('approvers', [])) or 'no one'}"
        )
    repro = state.get("repro", [])
    if repro:  # numbered as `stanch correct --case N` names them
        cases = Table("case", "prompt", title="repro cases")
        for number, case in enumerate(repro, 1):
            cases.add_row(str(number), case.get("prompt", ""))
        console.print(cases)
    actions = state.get("actions", [])
    if actions:
        table = Table("stage", "action", "applied", "undone")
        for action in actions:
            table.add_row(action["stage"], action["kind"], str(action.get("applied_at") or ""), str(action.get("undone_at") or ""))
        console.print(table)
    entries = state.get("timeline", [])[-timeline_entries:]
    if entries:
        table = Table("at", "kind", "actor", "what happened", title="timeline (latest)")
        for entry in entries:
            table.add_row(str(entry["at"])[:19].replace("T", " "), entry["kind"], entry.get("actor", ""), entry["message"])
        console.print(table)


# --- decisions -----------------------------------------------------------------------


def ack(
    incident_id: Annotated[str, typer.Argument(help="the incident id")],
    by: ByOption = None,
    note: Annotated[str, typer.Option(help="a note for the timeline")] = "",
    api: ApiOption = DEFAULT_API,
    as_json: JsonOption = False,
) -> None:
    """Acknowledge an incident: you own it now, and escalation stops."""
    _decide(api, incident_id, "ack", {"responder": _responder(by), "note": note}, as_json)


def _pending_stage(api: str, incident_id: str) -> str:
    pending = _call(api, "GET", f"/v1/incidents/{incident_id}").json().get("pending_approval")
    if not pending:
        err_console.print(f"[bold red]error:[/] nothing awaits approval on {incident_id}; name the stage with --stage")
        raise typer.Exit(1)
    return pending["stage"]


def _approval(
    incident_id: str,
    approve: bool,
    stage: str | None,
    by: str | None,
    roles: list[str] | None,
    comment: str,
    decision_id: str,
    api: str,
    as_json: bool,
) -> None:
    body = {
        "stage": stage or _pending_stage(api, incident_id),
        "approver": _responder(by),
        "roles": roles or [],
        "approve": approve,
        "comment": comment,
        "decision_id": decision_id,
    }
    _decide(api, incident_id, "approvals", body, as_json)


StageOption = Annotated[str | None, typer.Option(help="the gated stage (default: the one awaiting approval)")]
DecisionIdOption = Annotated[str, typer.Option(help="repeat a decision safely: the same id is applied once")]


def approve(
    incident_id: Annotated[str, typer.Argument(help="the incident id")],
    stage: StageOption = None,
    by: ByOption = None,
    role: RoleOption = None,
    comment: Annotated[str, typer.Option(help="why")] = "",
    decision_id: DecisionIdOption = "",
    api: ApiOption = DEFAULT_API,
    as_json: JsonOption = False,
) -> None:
    """Approve a gated stage (contain, rollback, hotfix, restore)."""
    _approval(incident_id, True, stage, by, role, comment, decision_id, api, as_json)


def reject(
    incident_id: Annotated[str, typer.Argument(help="the incident id")],
    stage: StageOption = None,
    by: ByOption = None,
    role: RoleOption = None,
    comment: Annotated[str, typer.Option(help="why not")] = "",
    decision_id: DecisionIdOption = "",
    api: ApiOption = DEFAULT_API,
    as_json: JsonOption = False,
) -> None:
    """Reject a gated stage."""
    _approval(incident_id, False, stage, by, role, comment, decision_id, api, as_json)


def severity(
    incident_id: Annotated[str, typer.Argument(help="the incident id")],
    level: Annotated[str, typer.Argument(help="low, medium, high or critical")],
    reason: Annotated[str, typer.Option(help="why (required; lowering needs safety or incident-commander)")],
    by: ByOption = None,
    role: RoleOption = None,
    api: ApiOption = DEFAULT_API,
    as_json: JsonOption = False,
) -> None:
    """Change an incident's severity. The runbook's policy for the new severity applies."""
    _decide(api, incident_id, "severity", {"severity": level, "by": _responder(by), "roles": role or [], "reason": reason}, as_json)


def note(
    incident_id: Annotated[str, typer.Argument(help="the incident id")],
    text: Annotated[str, typer.Argument(help="what to put on the timeline")],
    by: ByOption = None,
    api: ApiOption = DEFAULT_API,
    as_json: JsonOption = False,
) -> None:
    """Add a note to an incident's timeline."""
    _decide(api, incident_id, "notes", {"by": _responder(by), "text": text}, as_json)


def correct(
    incident_id: Annotated[str, typer.Argument(help="the incident id")],
    answer: Annotated[str, typer.Option(help="what the fixed model should answer that repro case")],
    case: Annotated[int | None, typer.Option(min=1, help="the repro case's number, 1 for the first the incident holds")] = None,
    prompt: Annotated[str | None, typer.Option(help="or the repro case's prompt, as the incident holds it")] = None,
    reason: Annotated[str, typer.Option(help="why this answer")] = "",
    by: ByOption = None,
    api: ApiOption = DEFAULT_API,
    as_json: JsonOption = False,
) -> None:
    """Supply the answer a repro case should get: the incident's fine-tune trains that case on it."""
    if (case is None) == (prompt is None):
        console.print("[red]✗[/] name the repro case with --case N or --prompt TEXT (one of them)")
        raise typer.Exit(2)
    body = {"by": _responder(by), "answer": answer, "reason": reason, **({"case": case} if case is not None else {"prompt": prompt})}
    _decide(api, incident_id, "corrections", body, as_json)


def resolve(
    incident_id: Annotated[str, typer.Argument(help="the incident id")],
    reason: Annotated[str, typer.Option(help="why the harm is over")],
    by: ByOption = None,
    api: ApiOption = DEFAULT_API,
    as_json: JsonOption = False,
) -> None:
    """Declare the harm over: remaining work is skipped, then restore and review run."""
    _decide(api, incident_id, "resolve", {"by": _responder(by), "reason": reason}, as_json)


def report_filed(
    incident_id: Annotated[str, typer.Argument(help="the incident id")],
    reference: Annotated[str, typer.Option(help="the authority's reference for the filed report")],
    by: ByOption = None,
    api: ApiOption = DEFAULT_API,
    as_json: JsonOption = False,
) -> None:
    """Record that a serious incident's regulatory report (EU AI Act Art. 73) was filed: its reminders stop."""
    _decide(api, incident_id, "report", {"by": _responder(by), "reference": reference}, as_json)
