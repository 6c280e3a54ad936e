"""Reading a secret that a configuration file names but never holds: an environment variable
or a file. Shared by every file that points at secrets (intake auth, notification channels,
and the HTTP actions of runbook targets)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


class SecretUnavailable(Exception):
    """The named variable or file gives no secret; the message names the field and why, never a value."""


def read_secret(variable: str | None, file: Path | None, base: Path, env: Mapping[str, str], field: str) -> str:
    """The secret from `<field>_env` (a variable's name) or `<field>_file` (relative to `base`).

    Surrounding whitespace is dropped: secret files usually end in a newline nobody signs with.
    """
    if variable is not None:
        value = env.get(variable, "").strip()
        if not value:
            raise SecretUnavailable(f"{field}_env: environment variable {variable} is not set or empty")
        return value
    if file is None:
        raise SecretUnavailable(f"{field}: give {field}_env or {field}_file")
    secret_path = (file if file.is_absolute() else base / file).expanduser()
    try:
        value = secret_path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not readable as UTF-8 text"
        raise SecretUnavailable(f"{field}_file: cannot read {secret_path}: {reason}") from None
    if not value:
        raise SecretUnavailable(f"{field}_file: {secret_path} is empty")
    return value
