"""One way to report a bad configuration file: a line per problem, naming file and field.

Shared by the runbooks and the intake-auth, notification, responders and targets files. Only pydantic's message is
kept, never its `input`: in these files a wrong value may be a pasted secret.
"""

from __future__ import annotations

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
