"""Several incidents holding one flagd kill switch (issue 11, item 4): restored in any order, the
flag stays off while anyone holds it and comes back as it was before the first."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.unit.test_flagd_file import FLAGS, applied_action, flag_file, flags_in, kill, target

__all__ = ["flag_file"]  # the fixture, imported for pytest

CHAT = "support-bot-chat"


@pytest.mark.parametrize("order", list(itertools.permutations(["inc-1", "inc-2", "inc-3"])), ids="-".join)
async def test_three_incidents_on_one_flag_restored_in_any_order_leave_it_as_before_all(flag_file: Path, order: tuple[str, ...]):
    flags = target(flag_file)
    applied = {}
    for incident in ("inc-1", "inc-2", "inc-3"):
        outcome = await flags.apply("support-bot", kill(), f"{incident}/contain/0", incident, holder=f"{incident}@run1")
        assert outcome.result["holder"] == f"{incident}@run1"
        applied[incident] = applied_action(f"{incident}/contain/0", outcome)
    for released, incident in enumerate(order, start=1):
        await flags.undo(applied[incident], f"{incident}/contain/0/undo")
        if released < len(order):
            assert flags_in(flag_file)["flags"][CHAT]["defaultVariant"] == "off", f"still held after {order[:released]}"
    assert flags_in(flag_file) == FLAGS


async def test_a_hold_planned_but_not_yet_written_keeps_the_flag_for_its_retry(flag_file: Path, monkeypatch: pytest.MonkeyPatch):
    flags = target(flag_file)
    first = await flags.apply("support-bot", kill(), "inc-1/contain/0", "inc-1", holder="inc-1@run1")
    real_write = flags._write
    monkeypatch.setattr(flags, "_write", lambda raw, document: (_ for _ in ()).throw(OSError("disk went away")))
    with pytest.raises(OSError):  # inc-2's plan is recorded, the edit is not made
        await flags.apply("support-bot", kill(), "inc-2/contain/0", "inc-2", holder="inc-2@run1")
    monkeypatch.setattr(flags, "_write", real_write)

    held = await flags.undo(applied_action("inc-1/contain/0", first), "inc-1/contain/0/undo")
    assert held.result["left_in_place"] and held.result["holder"] == "inc-2@run1"
    second = await flags.apply("support-bot", kill(), "inc-2/contain/0", "inc-2", holder="inc-2@run1")  # the retry
    assert flags_in(flag_file)["flags"][CHAT]["defaultVariant"] == "off"
    await flags.undo(applied_action("inc-2/contain/0", second), "inc-2/contain/0/undo")
    assert flags_in(flag_file) == FLAGS, "inc-2's retry does not restore inc-1's kill switch for good"
