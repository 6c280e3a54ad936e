"""Incidents begun before the rules for storms, closing notices and harm come back (the
`storms-notices-recurrence` patch) run on under the new code as they began: their recorded
histories replay unchanged.

tests/histories/before-hardening/ holds two recorded with the code of commit 2af58b9, each
with what the new rules would handle differently:
- `resolved_notice.json`: a resolved notice reached the open incident and was graded as a signal;
- `late_signal_awaiting_report.json`: a firing alert came while the report was awaited, and was
  graded there (today it would open the next occurrence).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.workflow.test_replay import replay
from workflows.incident import IncidentWorkflow

BEFORE = sorted((Path(__file__).parent.parent / "histories" / "before-hardening").glob("*.json"))


def test_the_histories_from_before_are_there():
    assert {path.stem for path in BEFORE} == {"resolved_notice", "late_signal_awaiting_report"}


@pytest.mark.parametrize("path", BEFORE, ids=[path.stem for path in BEFORE])
async def test_an_incident_begun_before_the_new_rules_replays_as_it_was_recorded(path: Path):
    failure = await replay(IncidentWorkflow, path)
    assert failure is None, f"{path.name} no longer replays: {failure}"
