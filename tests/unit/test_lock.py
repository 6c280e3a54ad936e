"""The environment the tests run in is the committed lock: every pinned package that applies to
this machine is installed at exactly the locked version, and the run lock agrees with the test
lock. A venv that drifted (installed by hand, or from an older lock) fails here by name;
`make install` puts it right.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.\-\[\]]+)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]+?))?\s*\\?$")


def pins(lock: Path) -> dict[str, str]:
    """name -> version for every entry of `lock` whose environment marker holds here."""
    found = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match and (match["marker"] is None or Marker(match["marker"]).evaluate()):
            found[canonicalize_name(match["name"].split("[")[0])] = match["version"]
    return found


def installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def test_every_locked_package_is_installed_at_its_locked_version() -> None:
    locked = pins(REPO / "requirements-test.txt")
    assert len(locked) > 100, "the test lock holds the whole tree"
    drifted = {name: (pinned, installed(name)) for name, pinned in locked.items() if installed(name) != pinned}
    assert not drifted, f"installed versions differ from requirements-test.txt (locked, installed): {drifted}; run `make install`"


def test_the_run_lock_is_the_test_lock_without_the_test_tools() -> None:
    run, test = pins(REPO / "requirements.txt"), pins(REPO / "requirements-test.txt")
    assert {"temporalio", "fastapi", "pydantic"} <= set(run)
    assert {name: test.get(name) for name in run} == run, "make lock compiles requirements.txt under requirements-test.txt"
    assert "pytest" in test and "pytest" not in run


def test_pylock_is_the_same_resolution_as_the_test_lock() -> None:
    import tomllib

    lock = tomllib.loads((REPO / "pylock.toml").read_text())
    standard = {
        canonicalize_name(package["name"]): package["version"]
        for package in lock["packages"]
        if "marker" not in package or Marker(package["marker"]).evaluate()
    }
    assert standard == pins(REPO / "requirements-test.txt"), "make lock writes pylock.toml under requirements-test.txt"
    assert all(wheel["hashes"]["sha256"] for package in lock["packages"] for wheel in package.get("wheels", []))
