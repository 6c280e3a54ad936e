"""`stanch responders token`: mint an API token for a responder; only its sha256 is stored."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer
import yaml

from stanch.cli.output import make_console
from stanch.config.settings import Settings
from stanch.trust.responders import RespondersFile, token_sha256

responders_app = typer.Typer(help="Responders who may act on incidents, and their tokens.", no_args_is_help=True)
console = make_console()


@responders_app.command("token")
def mint_token(
    user: Annotated[str, typer.Option(help="the responder's name, as it appears in the timeline")],
    role: Annotated[list[str], typer.Option(help="a role they hold (repeat): oncall, safety, incident-commander, auditor, viewer")],
    file: Annotated[Path | None, typer.Option(help="the responders file (default STANCH_HOME/responders.yaml)")] = None,
) -> None:
    """Add a token for USER to the responders file and print the token, once."""
    path = file or Settings.from_env().responders_path
    document = yaml.safe_load(path.read_text()) if path.exists() else {}
    token = "stk_" + secrets.token_urlsafe(32)
    document = {
        **(document or {}),
        "tokens": [*((document or {}).get("tokens") or []), {"user": user, "roles": role, "token_sha256": token_sha256(token)}],
    }
    RespondersFile.model_validate(document)  # refuse to write a file the API would refuse
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    path.chmod(0o600)
    console.print(f"Added {user} ({', '.join(role)}) to {path}. Their token — shown once, stored only as its sha256:")
    print(token)
