"""`stanch`: run Stanch, respond to incidents, manage runbooks.

Each group lives in its own module; this one only assembles them.
"""

from __future__ import annotations

import os
import sys

import typer

from stanch.cli import codec, incidents, processes, up
from stanch.cli.audit import audit_app
from stanch.cli.db import db_app
from stanch.cli.demo import demo
from stanch.cli.demo_upstream import demo_upstream
from stanch.cli.drill import drill
from stanch.cli.gate import gate_app
from stanch.cli.responders import responders_app
from stanch.cli.runbooks import runbooks_app
from stanch.cli.temporal import temporal_app
from stanch.config.settings import SettingsError

app = typer.Typer(
    name="stanch",
    help="Incident response and rollback for AI models in production.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Running Stanch: everything at once, or each part alone.
app.command("up")(up.up)
app.command("dev-server")(processes.dev_server)
app.command("worker")(processes.worker)
app.command("api")(processes.api)
app.command("gateway")(processes.gateway)
app.command("demo-upstream")(demo_upstream)
app.command("codec-server")(codec.codec_server)
app.command("demo")(demo)
app.command("drill")(drill)

# Responding to incidents, over the HTTP API.
app.add_typer(incidents.incidents_app, name="incidents")
app.command("ack")(incidents.ack)
app.command("approve")(incidents.approve)
app.command("reject")(incidents.reject)
app.command("resolve")(incidents.resolve)
app.command("severity")(incidents.severity)
app.command("note")(incidents.note)
app.command("correct")(incidents.correct)
app.command("report-filed")(incidents.report_filed)

app.add_typer(runbooks_app, name="runbooks", help="Validate, list and plan runbooks.")
app.add_typer(responders_app, name="responders", help="Responders who may act on incidents, and their tokens.")
app.add_typer(audit_app, name="audit", help="Replay incident histories, read timelines, export and verify audit bundles.")
app.add_typer(codec.codec_app, name="codec", help="Payload encryption: keys for the AES-GCM codec.")
app.add_typer(gate_app, name="gate", help="The regression gate: replay every past incident's repro cases against a candidate.")
app.add_typer(db_app, name="db", help="The records database (regression suite, notification deliveries): schema migrations.")
app.add_typer(temporal_app, name="temporal", help="Prepare a Temporal cluster or Temporal Cloud namespace for Stanch.")


def run() -> None:
    """The `stanch` entry point. A command that opened a Temporal client or replayed histories
    leaves without the interpreter's teardown: the SDK's Rust threads can crash CPython's finalization of a
    short-lived client process (temporalio/sdk-python#300), turning a finished command's exit
    code into a segfault."""
    try:
        app(prog_name="stanch")
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        if isinstance(exit.code, str):
            print(exit.code, file=sys.stderr)
    except SettingsError as problem:  # a STANCH_* variable Stanch cannot use: named, no traceback
        print(f"error: {problem}", file=sys.stderr)
        code = 1
    from stanch.temporal import client as temporal

    if not temporal.clients_opened:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a closed pipe (`stanch audit timeline … | head`): nothing more to say
            pass
    os._exit(code)
