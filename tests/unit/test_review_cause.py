"""The postmortem and the Art. 73 draft name the bad change bisection found, the last good one,
and each change's verdict; a system prompt only by its hash; and say so when nothing was named."""

from __future__ import annotations

from datetime import UTC, datetime

from stanch.models.bisection import Cause, ChangeVerdict
from stanch.review.art73 import report_draft
from stanch.review.postmortem import postmortem
from tests.unit.test_review import restored

CAUSE = Cause(
    ran=True,
    considered=[
        ChangeVerdict(sequence=1, release_version="1", verdict="good", reason="no harm found by secret", source="admin deploy"),
        ChangeVerdict(sequence=2, release_version="2", change_id="PR-42", verdict="bad", reason="3/3 samples harmful: secret found harm"),
        ChangeVerdict(sequence=3, release_version="2", system_prompt_sha256="ab" * 32, verdict="bad", reason="3/3 samples harmful"),
    ],
    first_bad=2,
    last_good=1,
    last_good_version="1",
    window_start=datetime(2026, 11, 29, 10, 0, tzinfo=UTC),
    window_end=datetime(2026, 12, 6, 10, 0, tzinfo=UTC),
)


def test_the_postmortem_and_the_report_draft_name_the_first_bad_change_and_the_last_good_one() -> None:
    input = restored(cause=CAUSE, serious=True)
    named = "the first bad change is change #2 (PR-42), version 2; the last good one before it is change #1, version 1"
    written = postmortem(input, [], 1)
    assert "## Cause: the bad change" in written and named in written
    assert "change #3, version 2" in written and "system prompt sha256 abababababab…" in written and ": BAD (3/3" in written
    draft = report_draft(input)
    causal = draft.split("## 5.")[1].split("## 6.")[0]
    assert named in causal


def test_nothing_named_is_said_with_its_reason_and_an_incident_without_bisection_says_not_bisected() -> None:
    nothing = Cause(ran=True, note="no deployment log: the target (mlflow) is not the gateway")
    assert "no change named as the cause: no deployment log" in postmortem(restored(cause=nothing), [], 1)
    assert "Not bisected" in postmortem(restored(), [], 1)
