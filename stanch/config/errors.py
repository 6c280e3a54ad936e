"""One way to report a bad configuration file: a line per problem, naming file and field.

Shared by the runbooks and the intake-auth, notification, responders and targets files. Only pydantic's message is
kept, never its `input`: in these files a wrong value may be a pasted secret.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError


class ConfigFileError(Exception):
    """A configuration file cannot be used: one line per problem, each naming the file and field."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def validation_lines(where: object, error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "string_pattern_mismatch" and str(item["loc"][-1]).endswith("_env"):
            message = "must be the name of an environment variable (letters, digits, _), never the secret itself"
        field = ".".join(str(part) for part in item["loc"]) or "(file)"
        lines.append(f"{where}: {field}: {message}")
    return lines


def load_yaml(where: object, text: str | bytes, error: type[ConfigFileError]) -> Any:
    """The file's YAML document; a syntax error is `error` naming the line and column.

    Never the YAML library's whole message: it may quote the line, and the line may be a secret."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise error([f"{where}: {position}: YAML syntax error: {exc.problem or exc.context or 'invalid YAML'}"]) from None
    except yaml.YAMLError as exc:
        raise error([f"{where}: YAML error: {type(exc).__name__}"]) from None
