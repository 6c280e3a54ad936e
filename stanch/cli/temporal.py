"""`stanch temporal setup`: prepare an existing Temporal cluster or Temporal Cloud namespace for Stanch.

It connects the way every Stanch process does (Temporal's environment configuration:
TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_PROFILE and temporal.toml, TLS, API key),
registers Stanch's search attributes, and with --create-namespace the namespace first.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from stanch.cli.output import make_console

if TYPE_CHECKING:
    from stanch.temporal.setup import SetupReport

temporal_app = typer.Typer(help="Prepare a Temporal cluster or Temporal Cloud namespace for Stanch.", no_args_is_help=True)
console = make_console()
err_console = make_console(stderr=True)

CONNECT_TIMEOUT_S = 15.0


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(1)


@temporal_app.command("setup")
def setup_command(
    address: Annotated[
        str | None, typer.Option("--address", help="Temporal's host:port (default: TEMPORAL_ADDRESS or your temporal.toml profile)")
    ] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", help="the namespace to prepare (default: TEMPORAL_NAMESPACE or your profile's)")
    ] = None,
    create_namespace: Annotated[
        bool,
        typer.Option("--create-namespace", help="register the namespace first when it does not exist (not allowed on Temporal Cloud)"),
    ] = False,
    retention: Annotated[
        str, typer.Option("--retention", help="with --create-namespace: how long closed incidents' histories are kept (30d, 72h)")
    ] = "30d",
    as_json: Annotated[bool, typer.Option("--json", help="print what was done as JSON")] = False,
) -> None:
    """Register Stanch's search attributes (and, with --create-namespace, the namespace) on an
    existing Temporal; says what it did for each. Safe to run again: what is there is kept.

    Refuses when an attribute exists with another type. Workers refuse to start, and the API
    is not ready, until this has run against their namespace.
    """
    # Here, not at the top: `stanch --help` need not load the Temporal SDK.
    from stanch.temporal.setup import SetupError, parse_retention

    try:
        retention_period = parse_retention(retention)
    except SetupError as exc:
        raise _fail(str(exc)) from exc
    report = asyncio.run(_run_setup(address, namespace, create_namespace, retention_period))
    if as_json:
        print(json.dumps(report.model_dump(mode="json"), indent=2))
        return
    if report.namespace_outcome != "not checked":
        console.print(f"namespace {report.namespace}: {report.namespace_outcome}")
    for attribute in report.attributes:
        mark = "[green]+[/]" if attribute.outcome == "added" else "[dim]=[/]"
        console.print(f"{mark} search attribute {attribute.name} ({attribute.type}): {attribute.outcome}")
    console.print(f"[green]✓[/] namespace {report.namespace!r} is ready for Stanch")


async def _run_setup(address: str | None, namespace: str | None, create_namespace: bool, retention: timedelta) -> SetupReport:
    from temporalio.service import RPCError

    from stanch.temporal.client import TemporalConfigError, configured_address, configured_namespace, connect
    from stanch.temporal.setup import SetupError, setup

    where = f"{configured_address(address)} (namespace {configured_namespace(namespace)})"
    try:
        client = await asyncio.wait_for(connect(address, namespace), CONNECT_TIMEOUT_S)
    except TemporalConfigError as exc:
        raise _fail(str(exc)) from exc
    except (TimeoutError, RuntimeError, OSError) as exc:
        raise _fail(
            f"cannot reach Temporal at {where}: {exc or 'timed out'}. Check TEMPORAL_ADDRESS (or --address), and for a cluster "
            "with TLS or an API key TEMPORAL_TLS_* / TEMPORAL_API_KEY or your TEMPORAL_PROFILE in temporal.toml"
        ) from exc
    try:
        return await setup(client, create_namespace=create_namespace, retention=retention)
    except SetupError as exc:
        raise _fail(str(exc)) from exc
    except RPCError as exc:
        raise _fail(
            f"Temporal at {where} refused: {exc.status.name}: {exc.message}. Registering search attributes needs "
            "an identity allowed to use the operator service (a namespace admin; on Temporal Cloud an API key with that role)"
        ) from exc
