"""The bad change bisection named, as the postmortem and the Art. 73 draft say it.

Changes are named by number, version and change id; a system prompt only by its sha256.
"""

from __future__ import annotations

from stanch.models.bisection import Cause

VERDICT_WORDS = {"good": "good", "bad": "BAD", "not_judged": "not judged"}


def cause_lines(cause: Cause | None) -> list[str]:
    """A section body: the cause in a sentence, then each change considered and its verdict."""
    if cause is None or not cause.ran:
        return ["- Not bisected: the target has no deployment log, or the incident predates bisection."]
    window = ""
    if cause.window_start and cause.window_end:
        window = f" (exposure window {cause.window_start:%Y-%m-%d %H:%M} to {cause.window_end:%Y-%m-%d %H:%M} UTC)"
    lines = [f"- Bisection{window}: {cause.summary()}."]  # its note included
    for change in cause.considered:
        prompt = f", system prompt sha256 {change.system_prompt_sha256[:12]}…" if change.system_prompt_sha256 else ""
        guardrails = f", {change.guardrails} guardrail patterns" if change.guardrails else ""
        deployed = f" deployed {change.deployed_at:%Y-%m-%d %H:%M} UTC by {change.source}" if change.deployed_at else ""
        lines.append(
            f"  - {change.describe()}{deployed}{prompt}{guardrails}: {VERDICT_WORDS[change.verdict]}"
            + (f" ({change.reason})" if change.reason else "")
        )
    return lines
