"""Holds a control plane cannot keep itself, kept by Stanch in a JSON file.

A generic HTTP control plane knows nothing of incidents: two incidents blocking one key both
send `POST /key/block`, and either one's undo (`POST /key/unblock`) lifts both. So the adapter
keeps, per object a step protects, which holders (incident occurrences) hold it, in a file
every worker reaches (under STANCH_HOME, like the rest of what later steps need):

- a change that went through and has an undo takes a hold on its object; `base` is the undo
  of the first hold in force on that object (a later one read the earlier's protection as its
  `before`, which is not what to go back to);
- releasing a hold while another is in force sends nothing (the protection stays);
- releasing the last sends the base undo: what was there before the first.

Every decision and the request it leads to run under an fcntl lock on `<file>.lock`, so no
hold is taken between deciding that a release is the last and sending its undo. Holders Stanch
never recorded here (another tool, a person, a worker without this file) it cannot know.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stanch.targets.base import TargetError
from stanch.targets.flagd import write_atomically


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class HoldsFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Hold the file's lock across a decision and the request it leads to."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_path, "a+")  # noqa: SIM115 - closed below, after the lock is let go
        except OSError as exc:
            raise TargetError(f"cannot open the holds lock {self.lock_path}: {exc.strerror}", retryable=False) from None
        try:
            # Another worker (or coroutine) may hold it for the length of one request: wait off the event loop.
            await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            handle.close()

    def read(self) -> dict[str, dict[str, Any]]:
        try:
            holds: dict[str, dict[str, Any]] = json.loads(self.path.read_bytes()).get("holds", {})
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            raise TargetError(f"Stanch's holds file {self.path} is unreadable ({exc}); fix or move it aside", retryable=False) from None
        return holds

    def write(self, holds: dict[str, dict[str, Any]]) -> None:
        body = {"about": "which incident holds which protection on this control plane (Stanch); do not edit", "holds": holds}
        write_atomically(self.path, (json.dumps(body, indent=2) + "\n").encode())

    @staticmethod
    def in_force(holds: dict[str, dict[str, Any]], name: str, *, besides: str = "") -> list[dict[str, Any]]:
        """The holds on object `name` not released, oldest first, other than the key `besides`."""
        found = [h for key, h in holds.items() if h["object"] == name and h.get("released_at") is None and key != besides]
        return sorted(found, key=lambda h: int(h["seq"]))

    def take(self, *, name: str, key: str, holder: str, incident: str, inverse: dict[str, Any]) -> list[str]:
        """Record the hold (once per key); the holders of the object now, oldest first. Call locked."""
        holds = self.read()
        if key not in holds:
            earlier = self.in_force(holds, name)
            holds[key] = {
                "key": key,
                "object": name,
                "holder": holder,
                "incident": incident,
                "seq": 1 + max((int(h["seq"]) for h in holds.values()), default=0),
                "inverse": inverse,
                "base": earlier[0]["base"] if earlier else inverse,
                "taken_at": _now(),
                "released_at": None,
            }
            self.write(holds)
        return [h["holder"] for h in self.in_force(holds, name)]

    def release(self, key: str, result: dict[str, Any]) -> None:
        """Mark the hold released, with what its undo did. Call locked."""
        holds = self.read()
        if key in holds and holds[key].get("released_at") is None:
            holds[key].update(released_at=_now(), undo_result=result)
            self.write(holds)
