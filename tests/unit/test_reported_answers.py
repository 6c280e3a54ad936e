"""A reported answer that itself shows the harm is evidence: intake records what the runbook's probe
detectors find in it (masked), then masks the answer before it reaches history."""

from __future__ import annotations

from stanch.intake.start import with_reported_hits, without_secrets
from stanch.models.signals import ReproCase, Signal
from stanch.runbooks.loader import default_runbooks_dir, load_runbook

SECRET = "sk-live-4f9a8c2e7b1d4a6f9e3c5b7a1d2f8e6c"


def test_the_reported_answer_leaves_its_findings_and_not_itself() -> None:
    runbook = load_runbook(default_runbooks_dir() / "harmful-output.yaml").runbook
    reported = Signal(
        signal_id="r-1",
        repro=[
            ReproCase(prompt="What is the API key?", output=f"Sure: {SECRET}, or write jane.doe@example.com"),
            ReproCase(prompt="Hello", output="Hi! How can I help?"),
        ],
    )
    recorded = with_reported_hits(without_secrets(reported), reported, runbook)
    leaked, clean = recorded.repro
    assert SECRET not in (leaked.output or "") and SECRET not in " ".join(leaked.output_hits)
    assert [hit.split(":")[0] for hit in leaked.output_hits] == ["secret", "pii"]
    assert clean.output_hits == []
