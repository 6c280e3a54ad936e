"""Where the CLI writes: rich output that word-wraps for a person at a terminal, and never wraps
when piped or captured, so a script (or a test) reads each of Stanch's messages on one line."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console


def make_console(*, stderr: bool = False, **options: Any) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    at_a_terminal = stream is not None and hasattr(stream, "isatty") and stream.isatty()
    options.setdefault("soft_wrap", not at_a_terminal)
    return Console(stderr=stderr, **options)
