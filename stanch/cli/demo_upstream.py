"""`stanch demo-upstream`: run the DEMO model server (OpenAI-compatible, no real model).

The gateway forwards to it like to any upstream; `--write-upstreams` writes the gateway's
upstreams file pointing at it. The server itself is `stanch.demo_upstream`, imported inside
the command so `stanch --help` stays quick.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from stanch.cli.output import make_console

console = make_console()
err_console = make_console(stderr=True)
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def default_state_dir() -> Path:
    home = os.environ.get("STANCH_HOME")
    return (Path(home).expanduser() if home else Path("~/.stanch").expanduser()) / "demo-upstream"


def demo_upstream(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind")] = 8400,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="where files, fine-tuning jobs and fine-tuned models are kept (default HOME/demo-upstream)"),
    ] = None,
    finetune_seconds: Annotated[float, typer.Option("--finetune-seconds", help="how long a fine-tuning job runs")] = 3.0,
    api_key_env: Annotated[
        str | None, typer.Option("--api-key-env", help="name of an environment variable holding the API key every /v1 call must send")
    ] = None,
    write_upstreams: Annotated[
        Path | None, typer.Option("--write-upstreams", help="write the gateway's upstreams file pointing at this server, then serve")
    ] = None,
) -> None:
    """Run the demo model server: support-bot and the other scenarios' models behind the OpenAI API.

    Not a real model: deterministic templates that misbehave like the bad updates Stanch's runbooks
    handle, plus an OpenAI fine-tuning API whose result depends only on the training file."""
    if finetune_seconds < 0:
        err_console.print(f"[red]error:[/] --finetune-seconds must be 0 or more, not {finetune_seconds}")
        raise typer.Exit(2)
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env) or None
        if api_key is None:
            err_console.print(f"[yellow]warning:[/] {api_key_env} is not set: /v1 is open to anyone who reaches {host}:{port}")
    folder = state_dir or default_state_dir()
    if write_upstreams is not None:
        from stanch.demo_upstream.upstreams_file import write_upstreams_file

        # A wildcard bind is reached through loopback from this machine.
        reachable = "127.0.0.1" if host in WILDCARD_HOSTS else host
        url_host = f"[{reachable}]" if ":" in reachable else reachable
        write_upstreams_file(write_upstreams, f"http://{url_host}:{port}/v1", api_key_env)
        console.print(f"wrote the gateway's upstreams file {write_upstreams}")
    from stanch.demo_upstream.app import serve

    console.print(f"demo upstream (not a real model) on http://{host}:{port}/v1, state in {folder}")
    serve(host, port, folder, finetune_seconds=finetune_seconds, api_key=api_key)
