"""`stanch up`: everything on one machine — Temporal, the demo models, the gateway, worker and API —
started in dependency order, watched, and stopped together."""

from __future__ import annotations

import getpass
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.panel import Panel
from rich.table import Table

from stanch.cli.processes import DEFAULT_HOME, LOOPBACK, HomeOption, console, encryption_configured, err_console, fail
from stanch.cli.supervisor import ChildDied, Supervisor, http_ok
from stanch.config.settings import DEFAULT_TASK_QUEUE, Settings
from stanch.gateway.samples import KEY_FILE_VARIABLE, RETENTION_VARIABLE, SAMPLES_VARIABLE, ensure_key_file
from stanch.temporal.devserver import BinaryNotFound, dev_server_command, port_open

# --- everything at once ------------------------------------------------------------------


def up(
    home: HomeOption = DEFAULT_HOME,
    temporal_port: Annotated[int, typer.Option(help="embedded Temporal's gRPC port")] = 7233,
    ui_port: Annotated[int, typer.Option(help="embedded Temporal's UI port")] = 8233,
    api_port: Annotated[int, typer.Option(help="the Stanch API's port")] = 8200,
    gateway_port: Annotated[int, typer.Option(help="the reference gateway's port")] = 8300,
    codec_port: Annotated[int, typer.Option(help="the codec server's port, when payload encryption is configured")] = 8400,
    demo_upstream_port: Annotated[int, typer.Option(help="the demo models' port (`stanch demo-upstream`, the gateway's upstream)")] = 8500,
    temporal_address: Annotated[
        str | None,
        typer.Option(
            help="join this Temporal (host:port) instead of starting the embedded dev server: on a task queue and with "
            "incident ids of this home's own (stanch-dev-<user>-<random>), never the production queue"
        ),
    ] = None,
    startup_timeout: Annotated[float, typer.Option(help="seconds each part may take to come up")] = 90.0,
    intake_auth: Annotated[
        Path | None,
        typer.Option(
            "--intake-auth",
            metavar="FILE",
            help="intake credentials file for the API; sources it leaves without one stay open (the API runs --insecure-dev)",
        ),
    ] = None,
) -> None:
    """Run everything on this machine: Temporal, the demo models, the gateway, worker and API.

    The gateway forwards to the demo models (`stanch demo-upstream`) like to any upstream; they
    train the fine-tunes too. When payload encryption is configured (STANCH_ENCRYPTION_KEYS or
    HOME/encryption-keys), the codec server the Temporal UI decrypts through runs as well.

    Ctrl-C stops them all. Restarting with the same --home continues open incidents.
    The API runs with --insecure-dev: this is the local demo, so intake sources without a
    credential accept anyone (it binds 127.0.0.1 only).

    With --temporal-address (a cluster others use too) the worker polls a task queue of this
    home's own and every incident id starts with the same name (`stanch-dev-<user>-<random>`,
    kept in HOME/dev-prefix): never the production queue, and never a production incident.
    """
    home = home.expanduser().resolve()
    if intake_auth is not None and not intake_auth.expanduser().is_file():
        raise fail(f"--intake-auth {intake_auth}: no such file")
    from_env = Settings.from_env().model_copy(update={"home": home})
    encrypted = encryption_configured(from_env)
    if temporal_address:
        from_env = on_shared_cluster(from_env)
    plan = UpPlan(
        settings=from_env.model_copy(
            update={
                "home": home,
                "temporal_address": temporal_address or f"{LOOPBACK}:{temporal_port}",
                "gateway_url": f"http://{LOOPBACK}:{gateway_port}",
                # The demo upstream trains fine-tunes too (the OpenAI fine-tuning API).
                "trainer_url": from_env.trainer_url or f"http://{LOOPBACK}:{demo_upstream_port}/v1",
                "api_url": f"http://{LOOPBACK}:{api_port}",
                "ui_url": from_env.ui_url if temporal_address else f"http://{LOOPBACK}:{ui_port}",
            }
        ),
        embedded_temporal=temporal_address is None,
        temporal_port=temporal_port,
        ui_port=ui_port,
        api_port=api_port,
        gateway_port=gateway_port,
        demo_upstream_port=demo_upstream_port,
        startup_timeout=startup_timeout,
        intake_auth=intake_auth.expanduser().resolve() if intake_auth else None,
        codec_port=codec_port,
        encrypted=encrypted,
    )
    ports = plan.ports()
    clashes = [f"{what} ({port})" for what, port in ports.items() if list(ports.values()).count(port) > 1]
    if clashes:
        raise fail(f"two parts on one port: {', '.join(clashes)}; give each its own with the flags")
    taken = [f"{what} ({port})" for what, port in plan.ports().items() if port_open(LOOPBACK, port)]
    if taken:
        raise fail(f"ports already in use for {', '.join(taken)}: is another `stanch up` running? Pick other ports with the flags.")

    settings = plan.settings
    if not plan.embedded_temporal:
        from stanch.temporal.client import configured_namespace  # the Temporal SDK: only when needed

        namespace = configured_namespace(settings.temporal_namespace)
        console.print(
            f"Joining Temporal at {settings.temporal_address} (namespace {namespace}) on task queue "
            f"[bold]{settings.task_queue}[/], not the production queue {DEFAULT_TASK_QUEUE!r}; incident ids start with "
            f"[bold]{settings.incident_prefix}[/]."
        )
    # The demo runbooks' LLM-as-judge asks the demo upstream's guard model, unless told otherwise.
    judge = {"STANCH_GUARD_URL": os.environ.get("STANCH_GUARD_URL") or f"{plan.demo_upstream_url}/v1"}
    sampling = demo_sampling(settings.home)
    plan.sample_key = Path(sampling[KEY_FILE_VARIABLE]) if sampling else None
    supervisor = Supervisor(
        env={**os.environ, **settings.child_env(), **judge, **sampling, "PYTHONUNBUFFERED": "1"}, logs_dir=settings.logs_dir
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    code = 0
    try:
        code = _start_and_watch(supervisor, plan, stop)
    finally:
        supervisor.stop_all(report=lambda line: console.print(f"[dim]{line}[/]"))
    if code:
        raise typer.Exit(code)
    console.print("[green]stopped cleanly[/]")


SAMPLE_KEY_FILE = "gateway-sample.key"


def demo_sampling(home: Path) -> dict[str, str]:
    """The one-machine demo's gateway keeps sealed samples of what it served, so an incident can
    count who got the harm (blast radius); its key is made once under the home folder. A
    production gateway keeps counts only unless the team turns content on; so does this one when
    STANCH_GATEWAY_SAMPLES says anything."""
    if os.environ.get(SAMPLES_VARIABLE):
        return {}
    return {SAMPLES_VARIABLE: "content", KEY_FILE_VARIABLE: str(ensure_key_file(home / SAMPLE_KEY_FILE))}


DEV_PREFIX_FILE = "dev-prefix"
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def dev_prefix(home: Path) -> str:
    """This home's name on a shared cluster, `stanch-dev-<user>-<4 hex>`: made once and kept
    in HOME/dev-prefix, so a restart finds its open incidents and its queue again, while two
    homes (or two people called alice) never share either."""
    path = home / DEV_PREFIX_FILE
    if path.is_file() and re.fullmatch(r"[a-z0-9-]+", kept := path.read_text().strip()):
        return kept
    try:
        user = _NOT_SLUG.sub("-", getpass.getuser().lower()).strip("-")[:20] or "user"
    except (KeyError, OSError):  # no name for this uid (a container): the random part is enough
        user = "user"
    prefix = f"stanch-dev-{user}-{secrets.token_hex(2)}"
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(prefix + "\n")
    return prefix


def on_shared_cluster(settings: Settings) -> Settings:
    """Settings for `stanch up` against a Temporal others use: a task queue of this home's own
    (whatever STANCH_TASK_QUEUE says: that may well be production's) and the same name before
    every incident id, so its alerts never join, and its worker never runs, a production incident."""
    prefix = dev_prefix(settings.home)
    return settings.model_copy(update={"task_queue": prefix, "incident_prefix": f"{prefix}-"})


@dataclass
class UpPlan:
    settings: Settings
    embedded_temporal: bool
    temporal_port: int
    ui_port: int
    api_port: int
    gateway_port: int
    startup_timeout: float
    intake_auth: Path | None = None
    codec_port: int = 8400
    encrypted: bool = False  # payload encryption configured: run the codec server too
    demo_upstream_port: int = 8500
    sample_key: Path | None = None  # the gateway samples content, sealed with this key

    @property
    def demo_upstream_url(self) -> str:
        return f"http://{LOOPBACK}:{self.demo_upstream_port}"

    @property
    def codec_url(self) -> str:
        return f"http://{LOOPBACK}:{self.codec_port}"

    def dev_server_command(self) -> list[str]:
        codec = self.codec_url if self.encrypted else None
        return dev_server_command(self.settings.home, self.temporal_port, self.ui_port, ui_codec_endpoint=codec)

    def codec_command(self, python: list[str]) -> list[str]:
        """The codec server as `up` runs it: loopback, --insecure-dev like the API (a responders
        file is still enforced), and CORS open to the UI's origin."""
        ui = urlsplit(self.settings.ui_url)
        origins = [f"{ui.scheme}://{ui.netloc}"]
        if ui.hostname == LOOPBACK:  # the browser may call the UI either name
            origins.append(f"{ui.scheme}://localhost:{ui.port}")
        command = [*python, "codec-server", "--host", LOOPBACK, "--port", str(self.codec_port), "--insecure-dev"]
        return [*command, *(arg for origin in origins for arg in ("--ui-origin", origin))]

    def api_command(self, python: list[str]) -> list[str]:
        """The API as `up` runs it: loopback only, --insecure-dev (the local demo)."""
        command = [*python, "api", "--host", LOOPBACK, "--port", str(self.api_port), "--insecure-dev"]
        return [*command, "--intake-auth", str(self.intake_auth)] if self.intake_auth else command

    def ports(self) -> dict[str, int]:
        ports = {"the API": self.api_port, "the gateway": self.gateway_port, "the demo upstream": self.demo_upstream_port}
        if self.encrypted:
            ports["the codec server"] = self.codec_port
        if self.embedded_temporal:
            ports |= {"Temporal": self.temporal_port, "the Temporal UI": self.ui_port}
        return ports


def _start_and_watch(supervisor: Supervisor, plan: UpPlan, stop: threading.Event) -> int:
    """Start the parts in dependency order, then watch them. Returns the exit code."""
    settings, timeout = plan.settings, plan.startup_timeout
    python = [sys.executable, "-m", "stanch"]
    try:
        if plan.embedded_temporal:
            with console.status("starting Temporal dev server"):
                supervisor.start("temporal", plan.dev_server_command())
                if not supervisor.wait_until(lambda: port_open(LOOPBACK, plan.temporal_port), "Temporal", timeout, stop.is_set):
                    return 0
        if not plan.embedded_temporal and not _prepare_cluster(
            supervisor, python, upsert_search_attributes=settings.upsert_search_attributes
        ):
            return 1
        with console.status("starting the demo models, gateway, worker and API"):
            if plan.encrypted:
                supervisor.start("codec-server", plan.codec_command(python))
            upstreams = str(settings.home / "upstreams.yaml")
            supervisor.start(
                "demo-upstream",
                [*python, "demo-upstream", "--host", LOOPBACK, "--port", str(plan.demo_upstream_port), "--write-upstreams", upstreams],
            )
            if not supervisor.wait_until(partial(http_ok, f"{plan.demo_upstream_url}/healthz"), "the demo upstream", timeout, stop.is_set):
                return 0
            gateway_db = str(settings.home / "gateway.db")
            # The local demo's gateway: its admin API open on loopback, unless a token is set for it.
            admin = [] if settings.gateway_admin_token else ["--dev"]
            gateway = [
                *python,
                "gateway",
                "--host",
                LOOPBACK,
                "--port",
                str(plan.gateway_port),
                "--db",
                gateway_db,
                "--upstreams",
                upstreams,
            ]
            supervisor.start("gateway", [*gateway, *admin])
            supervisor.start("worker", [*python, "worker"])
            supervisor.start("api", plan.api_command(python))
            # The API is ready once it reaches Temporal (/readyz); the others once they serve.
            ready = [("the gateway", f"{settings.gateway_url}/healthz"), ("the API", f"{settings.api_url}/readyz")]
            ready += [("the codec server", f"{plan.codec_url}/healthz")] if plan.encrypted else []
            for name, url in ready:
                if not supervisor.wait_until(partial(http_ok, url), name, timeout, stop.is_set):
                    return 0
    except BinaryNotFound as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        return 1
    except (ChildDied, TimeoutError) as exc:
        _report_failure(supervisor, str(exc))
        return 1

    _print_urls(plan)
    while not stop.wait(0.5):
        dead = supervisor.first_dead()
        if dead:
            _report_failure(supervisor, str(ChildDied(dead)))
            return 1
    console.print("\nstopping (Ctrl-C / SIGTERM received)")
    return 0


def _prepare_cluster(supervisor: Supervisor, python: list[str], *, upsert_search_attributes: bool = True) -> bool:
    """`stanch temporal setup` against the cluster joined: the embedded dev server registers
    Stanch's search attributes by flags, a cluster does not, and the worker refuses to start
    without them. Idempotent: what is there is kept. False (said why) when it could not.
    Skipped with STANCH_UPSERT_SEARCH_ATTRIBUTES=false: incidents then carry none, for
    clusters where this identity may not register them."""
    if not upsert_search_attributes:
        console.print("STANCH_UPSERT_SEARCH_ATTRIBUTES=false: incidents carry no search attributes; not running `stanch temporal setup`")
        return True
    with console.status("checking Stanch's search attributes on the cluster (stanch temporal setup)"):
        done = subprocess.run([*python, "temporal", "setup"], env=supervisor.env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        err_console.print(done.stderr.strip() or done.stdout.strip())
        err_console.print("[bold red]error:[/] the cluster is not prepared for Stanch; ask its operator to run `stanch temporal setup`")
        return False
    added = [line for line in done.stdout.splitlines() if line.endswith(": added")]
    console.print("\n".join(added) if added else "Stanch's search attributes: already present")
    return True


def _report_failure(supervisor: Supervisor, message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}; stopping everything")
    dead = supervisor.first_dead()
    if dead and dead.log_tail():
        err_console.print(Panel(dead.log_tail(), title=f"last lines of {dead.log_path}", border_style="red"))


def _print_urls(plan: UpPlan) -> None:
    settings = plan.settings
    table = Table.grid(padding=(0, 2))
    table.add_row("API", f"{settings.api_url}  (docs: {settings.api_url}/docs)")
    table.add_row("Board", f"{settings.api_url}/board")
    table.add_row("Gateway", f"{settings.gateway_url}/v1  (OpenAI-compatible; its upstreams: {settings.home / 'upstreams.yaml'})")
    table.add_row("Demo models", f"{plan.demo_upstream_url}/v1  (stanch demo-upstream: not a real model)")
    table.add_row("Temporal UI", settings.ui_url)
    table.add_row("Temporal", str(settings.temporal_address))
    if not plan.embedded_temporal:
        table.add_row("Task queue", f"{settings.task_queue}  (this home's own; incident ids start with {settings.incident_prefix})")
    if plan.encrypted:
        table.add_row("Codec server", f"{plan.codec_url}  (payloads encrypted; CLI: --codec-endpoint {plan.codec_url})")
    if plan.sample_key:
        table.add_row(
            "Samples",
            f"the gateway keeps what it served, sealed with {plan.sample_key}, "
            f"for {os.environ.get(RETENTION_VARIABLE, '7d')} (blast radius; "
            f"{SAMPLES_VARIABLE}=counts keeps counts only, as a production gateway does by default)",
        )
    table.add_row("Home", f"{settings.home}  (logs in {settings.logs_dir})")
    console.print(Panel(table, title="[bold green]Stanch is up", expand=False))
    console.print(f"Try it: [bold]stanch demo --api {settings.api_url}[/]    Ctrl-C stops everything.")
