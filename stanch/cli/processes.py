"""The parts `stanch up` runs, each of which also runs alone: `dev-server`, `worker`, `api`,
`gateway` (`stanch demo-upstream` is in demo_upstream.py, `stanch up` itself in up.py).

Heavy imports (FastAPI, the worker, the gateway) happen inside the commands, so `stanch
--help` stays quick and a part that is not installed only fails the command that needs it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from stanch.cli.output import make_console
from stanch.config.network import is_loopback
from stanch.config.settings import Settings
from stanch.temporal.codec import EncryptionKeyError, load_encryption_keys
from stanch.temporal.devserver import BinaryNotFound, dev_server_command

console = make_console()
err_console = make_console(stderr=True)

LOOPBACK = "127.0.0.1"
DEFAULT_HOME = Path("~/.stanch")
HomeOption = Annotated[Path, typer.Option("--home", envvar="STANCH_HOME", help="where Stanch keeps its databases, evidence and logs")]


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


# --- the parts, one at a time ------------------------------------------------------------


def dev_server(
    home: HomeOption = DEFAULT_HOME,
    port: Annotated[int, typer.Option(help="Temporal frontend (gRPC) port")] = 7233,
    ui_port: Annotated[int, typer.Option(help="Temporal UI port")] = 8233,
    ip: Annotated[str, typer.Option(help="address to bind")] = LOOPBACK,
    ui_codec_endpoint: Annotated[
        str | None, typer.Option("--ui-codec-endpoint", help="the codec server the UI decrypts payloads through (`stanch codec-server`)")
    ] = None,
) -> None:
    """Run the embedded Temporal dev server in the foreground, persisted under HOME."""
    home = home.expanduser()
    home.mkdir(parents=True, exist_ok=True)
    try:
        command = dev_server_command(home, port, ui_port, ip, ui_codec_endpoint)
    except BinaryNotFound as exc:
        raise fail(str(exc)) from exc
    sys.stdout.flush()
    os.execv(command[0], command)  # the server itself handles Ctrl-C and SIGTERM


def encryption_configured(settings: Settings) -> bool:
    """Whether payload encryption is configured. Malformed keys stop a part at start-up with
    their problem named, rather than with a traceback at its first connection."""
    try:
        return load_encryption_keys(settings) is not None
    except EncryptionKeyError as exc:
        raise fail(f"payload encryption: {exc}") from exc


def worker(
    insecure_dev: Annotated[
        bool,
        typer.Option(
            "--insecure-dev",
            help="local demos only: when the decision keys configured in the environment cannot verify what the API signs, "
            "use the home folder's keys instead of refusing to start",
        ),
    ] = False,
    health_port: Annotated[
        int | None,
        typer.Option(
            "--health-port",
            envvar="STANCH_WORKER_HEALTH_PORT",
            help="serve GET /healthz (liveness) and /readyz (readiness) on this port, for Kubernetes probes; default: none",
        ),
    ] = None,
    health_host: Annotated[str, typer.Option("--health-host", help="address the health port binds (probes come from outside the pod)")] = (
        "0.0.0.0"
    ),
) -> None:
    """Run a worker: polls the incident task queue, runs workflows and activities.

    Refuses to start when it cannot get the public keys decisions are verified with (unless
    --insecure-dev), or when its Temporal namespace lacks Stanch's search attributes (run
    `stanch temporal setup`). SIGTERM drains it: polling stops, running activities get
    STANCH_WORKER_SHUTDOWN_SECONDS (default 30) to finish, then it exits 0.
    """
    from stanch.stores.artefacts import ArtefactError, store_from_settings
    from stanch.stores.records import RecordsError
    from stanch.temporal.client import TemporalConfigError, TemporalConnectError, configured_address, load_connect_config
    from stanch.temporal.setup import AttributesNotListed, SearchAttributesMissing
    from stanch.trust.assertions import DecisionKeyError
    from workers.main import VersioningConfigError, deployment_config, trust_decision_keys

    settings = Settings.from_env()
    if health_port is not None:
        settings = settings.model_copy(update={"worker_health_port": health_port})
    encryption_configured(settings)
    try:
        trust_decision_keys(settings, insecure_dev=insecure_dev)  # named here, before anything connects
        deployment_config(settings)
        store_from_settings(settings)
        load_connect_config()  # a profile naming a certificate that is not there: said as such, not as an address
    except DecisionKeyError as exc:
        raise fail(f"refusing to start: decision keys: {exc}") from exc
    except (VersioningConfigError, ArtefactError, TemporalConfigError) as exc:
        raise fail(f"refusing to start: {exc}") from exc
    address = configured_address(settings.temporal_address)
    console.print(f"stanch worker: task queue {settings.task_queue!r}, Temporal at {address}")
    try:
        asyncio.run(_worker_until_signalled(settings, insecure_dev, health_host))
    except (SearchAttributesMissing, AttributesNotListed, RecordsError, ArtefactError, TemporalConfigError) as exc:
        raise fail(f"refusing to start: {exc}") from exc
    except TemporalConnectError as exc:
        raise fail(
            f"cannot reach Temporal at {exc.address}: {exc}. "
            "Check TEMPORAL_ADDRESS (or your TEMPORAL_PROFILE in temporal.toml), TLS and API key"
        ) from exc
    except (RuntimeError, OSError) as exc:  # after connecting: not a reachability problem
        raise fail(f"the worker stopped (Temporal at {address}): {type(exc).__name__}: {exc}") from exc


async def _worker_until_signalled(settings: Settings, insecure_dev: bool, health_host: str) -> None:
    """The worker, with SIGTERM and SIGINT draining it (see `workers.main.run_worker`), and its
    health endpoints when a port is configured."""
    from workers.health import WorkerHealth, serve_health
    from workers.main import run_worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    health = WorkerHealth()
    server = await serve_health(health, health_host, settings.worker_health_port) if settings.worker_health_port else None
    try:
        await run_worker(settings, insecure_dev=insecure_dev, stop=stop, health=health)
    finally:
        if server is not None:
            server.close()


def api(
    host: Annotated[str, typer.Option(help="address to bind")] = LOOPBACK,
    port: Annotated[int, typer.Option(help="port to bind")] = 8200,
    intake_auth: Annotated[
        Path | None,
        typer.Option(
            "--intake-auth",
            metavar="FILE",
            help="who may send signals: credentials per intake source (default: $STANCH_INTAKE_AUTH, else HOME/intake-auth.yaml)",
        ),
    ] = None,
    insecure_dev: Annotated[
        bool,
        typer.Option(
            "--insecure-dev",
            help="local demos on a loopback address only: intake sources without a credential accept anyone, and "
            "responders are who they claim to be. Refused with any other --host",
        ),
    ] = False,
) -> None:
    """Run the intake and responder HTTP API (OpenAPI docs at /docs).

    Refuses to start while an enabled intake source has no credential, unless --insecure-dev.
    Bound to any address but loopback it is production: authentication is always on, so it
    needs its responders file and intake auth file, and --insecure-dev is refused.
    """
    from stanch.api.app import serve

    settings = Settings.from_env()
    if intake_auth is not None:
        settings = settings.model_copy(update={"intake_auth": intake_auth.expanduser()})
    if not is_loopback(host):
        if insecure_dev:
            raise fail(
                f"--insecure-dev is for a loopback address only: on {host} anyone on the network could send alerts and "
                "approve rollbacks as whoever they claim to be. Drop --insecure-dev and give the API "
                f"{_missing_for_production(settings) or 'its responders and intake auth files'}, or bind {LOOPBACK}."
            )
        if missing := _missing_for_production(settings):
            raise fail(f"refusing to serve {host} (not loopback) without authentication; missing: {missing}.")
    encryption_configured(settings)
    serve(host, port, settings, insecure_dev=insecure_dev)


def _missing_for_production(settings: Settings) -> str:
    """What an API serving the network lacks to authenticate everyone, one clause each; ""
    when nothing is. Their contents are checked as for any start (`serve`)."""
    missing = []
    if not settings.responders_path.is_file():
        missing.append(f"the responders file {settings.responders_path} (STANCH_RESPONDERS; `stanch responders token` prints its lines)")
    if not settings.intake_auth_path.is_file():
        missing.append(f"the intake auth file {settings.intake_auth_path} (STANCH_INTAKE_AUTH or --intake-auth FILE)")
    return " and ".join(missing)


def gateway(
    host: Annotated[str, typer.Option(help="address to bind")] = LOOPBACK,
    port: Annotated[int, typer.Option(help="port to bind")] = 8300,
    db: Annotated[Path | None, typer.Option("--db", help="SQLite file (default HOME/gateway.db)")] = None,
    upstreams: Annotated[
        Path | None,
        typer.Option(
            "--upstreams",
            envvar="STANCH_GATEWAY_UPSTREAMS",
            help="the upstreams file: each model's versions and the OpenAI-compatible servers answering them (default HOME/upstreams.yaml)",
        ),
    ] = None,
    action_delay: Annotated[float, typer.Option("--action-delay", help="seconds each admin action takes (demos)")] = 0.0,
    dev: Annotated[
        bool, typer.Option("--dev", help="admin API open to whoever reaches it: the local demo only (`stanch up` runs it so)")
    ] = False,
) -> None:
    """Run the gateway: an OpenAI-compatible proxy in front of the upstreams in its upstreams file,
    enforcing what incidents put in place, plus the admin API Stanch drives.

    The admin API (/admin/*) lifts blocks and pins models, so it needs a token
    (STANCH_GATEWAY_ADMIN_TOKEN, which the worker sends too) unless --dev."""
    from stanch.gateway.app import ADMIN_TOKEN_VARIABLE, serve
    from stanch.gateway.upstreams import UpstreamsError, load_upstreams

    settings = Settings.from_env()
    upstreams_path = upstreams or settings.home / "upstreams.yaml"
    try:
        models = load_upstreams(upstreams_path)
    except UpstreamsError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        err_console.print(
            "The gateway holds no model of its own: name the upstreams that answer "
            "(`stanch demo-upstream --write-upstreams FILE` writes one for the demo models)."
        )
        raise typer.Exit(2) from exc
    token = settings.gateway_admin_token.get_secret_value() if settings.gateway_admin_token else None
    if token is None and not dev:
        err_console.print(
            f"[red]error:[/] refusing to start: the admin API would let anyone who reaches it lift a block or pin a model. "
            f"Set {ADMIN_TOKEN_VARIABLE} (for the gateway and the worker), or pass --dev for a local demo."
        )
        raise typer.Exit(2)
    db_path = db or settings.home / "gateway.db"
    db_path.parent.mkdir(parents=True, exist_ok=True)
    from stanch.gateway.samples import SampleSettingsError

    try:
        serve(host, port, db_path, models, action_delay_s=action_delay, admin_token=None if dev else token)
    except SampleSettingsError as exc:  # STANCH_GATEWAY_SAMPLE*: the message names the variable to fix
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
