"""`stanch codec-server` and `stanch codec keygen`: payload encryption's two commands.

See `stanch.temporal.codec` for how keys are configured and rotated, `stanch.temporal.codec_server` for who may
decode.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from stanch.cli.output import make_console
from stanch.config.settings import Settings
from stanch.temporal.codec import (
    EncryptionKeyError,
    load_encryption_keys,
    new_key_line,
    parse_encryption_keys,
)

codec_app = typer.Typer(help="Payload encryption: keys for the AES-GCM codec.", no_args_is_help=True)
console = make_console(stderr=True)  # stdout carries only the key line, so it can be piped


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(1)


def codec_server(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind")] = 8400,
    ui_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--ui-origin",
            help="a Temporal UI origin the browser may call from (repeat; default http://127.0.0.1:8233, http://localhost:8233)",
        ),
    ] = None,
    insecure_dev: Annotated[
        bool,
        typer.Option("--insecure-dev", help="local demos only: without a responders file, decode for anyone who can reach the port"),
    ] = False,
) -> None:
    """Run the codec server: the Temporal UI and CLI decrypt payloads through it, with a responder's token.

    Needs the encryption keys (STANCH_ENCRYPTION_KEYS or HOME/encryption-keys) and the
    responders file (any responder may decode); --insecure-dev runs without one.
    """
    from stanch.temporal.codec import EncryptionCodec
    from stanch.temporal.codec_server import DEFAULT_UI_ORIGINS, create_codec_app, serve
    from stanch.trust.responders import load_responder_auth

    settings = Settings.from_env()
    try:
        keys = load_encryption_keys(settings)
    except EncryptionKeyError as err:
        raise _fail(str(err)) from err
    if keys is None:
        raise _fail(
            f"encryption is not configured: set STANCH_ENCRYPTION_KEYS or create {settings.encryption_keys_path} "
            "(`stanch codec keygen --write`)"
        )
    try:
        # As for the API: once a responders file exists it is enforced, --insecure-dev or not.
        auth = load_responder_auth(settings.responders_path, insecure_dev=insecure_dev and not settings.responders_path.exists())
    except ValueError as err:
        raise _fail(f"refusing to start: {err}") from err
    if auth.insecure_dev:
        console.print("[bold yellow]INSECURE (--insecure-dev):[/] no responders file; anyone who reaches this port can decrypt payloads.")
    app = create_codec_app(EncryptionCodec(keys), auth, ui_origin or list(DEFAULT_UI_ORIGINS))
    serve(host, port, app)


@codec_app.command("keygen")
def keygen(
    kid: Annotated[str | None, typer.Option("--kid", help="the key's id (default: a random k-xxxxxxxx)")] = None,
    write: Annotated[
        bool,
        typer.Option(
            "--write",
            help="put the key first in the keys file (HOME/encryption-keys or STANCH_ENCRYPTION_KEYS_FILE), keeping the others to decrypt",
        ),
    ] = False,
) -> None:
    """Make a fresh AES-256 key and print it as `kid:base64key` (or, with --write, add it to the keys file)."""
    try:
        line = new_key_line(kid)
    except EncryptionKeyError as err:
        raise _fail(str(err)) from err
    if not write:
        print(line)
        return
    settings = Settings.from_env()
    path = settings.encryption_keys_path
    _write_first(path, line)
    new_kid = line.partition(":")[0]
    console.print(f"{new_kid} now encrypts; {path} keeps the older keys for reading old histories.")
    if settings.encryption_keys is not None and settings.encryption_keys_file is not None:
        console.print("[yellow]note:[/] STANCH_ENCRYPTION_KEYS is set too, and both together are refused: unset it.")
    elif settings.encryption_keys is not None:
        console.print("[yellow]note:[/] STANCH_ENCRYPTION_KEYS is set and wins over the file; update it instead.")
    console.print("Restart the worker, the API and the codec server so they all use it.")


def _write_first(path: Path, line: str) -> None:
    """Prepend `line` to the keys file (created 0600), refusing to touch a file that does not parse."""
    old = path.read_text() if path.exists() else ""
    new_kid = line.partition(":")[0]
    if old.strip():
        try:
            existing = parse_encryption_keys(old, str(path))
        except EncryptionKeyError as err:
            raise _fail(f"not changing it: {err}") from err
        if new_kid in (kid for kid, _ in existing):
            raise _fail(f"{path} already has a key with id {new_kid!r}; pick another --kid")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name beside the file (mkstemp: created 0600, never an existing file or a planted link).
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(descriptor, "w") as out:
        out.write(f"{line}\n{old}")
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
