"""What an incident's record says, in words the review documents share: dates, stages, signals,
versions, evidence and timeline entries. What the record does not hold is said to be unknown.
"""

from __future__ import annotations

from datetime import datetime

from stanch.models.activity_io import ReviewInput

FILL_IN = "— fill in"


def when(at: datetime | str | None) -> str:
    if at is None:
        return "—"
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    return at.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def duration(seconds: float) -> str:
    """4m12s, 15m, 51s, 1h02m, 2h, 0.3s: a span as a responder reads it (and a runbook writes it)."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"


def deadline_of(input: ReviewInput) -> datetime | str | None:
    return input.regulatory.deadline if input.regulatory and input.regulatory.deadline else input.report_deadline


def stage_of(input: ReviewInput, name: str):
    return next((stage for stage in input.stages if stage.name == name), None)


def stage_done_at(input: ReviewInput, name: str) -> datetime | None:
    stage = stage_of(input, name)
    return stage.finished_at if stage and stage.status == "done" else None


def signals_summary(input: ReviewInput) -> str:
    count = input.signal_count or (1 if input.first_signal else 0)
    by_source = ", ".join(f"{n} {source}" for source, n in sorted(input.signal_sources.items()))
    return f"{count}" + (f" ({by_source})" if by_source else "")


def version_lines(input: ReviewInput) -> list[str]:
    reported = (input.first_signal.model_version if input.first_signal else None) or input.target.version
    lines = [f"Version reported: {reported or 'unknown ' + FILL_IN}"]
    if input.evidence:
        served, release = input.evidence.summary.get("served_version"), input.evidence.summary.get("release_version")
        if served or release:
            lines.append(f"At the evidence snapshot ({when(input.evidence.taken_at)}): served {served or '?'}, release {release or '?'}")
    for action in input.actions:
        if action.stage in ("rollback", "hotfix") and action.result.get("version"):
            lines.append(f"After {action.stage} {action.kind} ({when(action.applied_at)}): version {action.result['version']}")
    verify = stage_of(input, "verify")
    if verify and verify.status == "done":
        lines.append(f"Verified: {verify.detail}")
    return lines


def evidence_line(input: ReviewInput) -> str:
    if not input.evidence:
        return "No evidence snapshot was taken: " + (
            "the step was skipped by a responder" if stage_of(input, "evidence") else "none recorded"
        )
    first_change = min((a.applied_at for a in input.actions if a.applied_at), default=None)
    order = (
        "before the first change to the system"
        if first_change is None or input.evidence.taken_at <= first_change
        else "AFTER the first change (check Art. 73(6))"
    )
    return f"Snapshot sha256 {input.evidence.sha256}, taken {when(input.evidence.taken_at)}, {order}; kept at {input.evidence.location}"


def key_dates(input: ReviewInput) -> list[tuple[str, datetime | None]]:
    clock = input.regulatory
    return [
        ("opened", input.opened_at),
        ("aware (serious)", clock.aware_at if clock else None),
        ("acknowledged" + (f" by {input.acknowledged_by}" if input.acknowledged_by else ""), input.acknowledged_at),
        ("evidence taken", input.evidence.taken_at if input.evidence else None),
        ("contained", stage_done_at(input, "contain")),
        ("rolled back", stage_done_at(input, "rollback")),
        ("fix deployed", stage_done_at(input, "hotfix")),
        ("fix verified", stage_done_at(input, "verify")),
        ("restored", stage_done_at(input, "restore")),
        ("review opened", input.reviewed_at),
        ("report due", clock.deadline if clock else None),
    ]


def entries(input: ReviewInput, kinds: tuple[str, ...], *, contains: str = "") -> list[str]:
    """Timeline entries as evidence lines: `<at> [kind] actor: message`."""
    found = []
    for entry in input.timeline:
        if entry.get("kind") not in kinds or contains not in entry.get("message", ""):
            continue
        found.append(f"{entry['at']} [{entry['kind']}] {entry.get('actor', 'stanch')}: {entry['message']}")
    return found


def action_lines(input: ReviewInput, stages: tuple[str, ...]) -> list[str]:
    return [
        f"action {a.stage}:{a.kind} key {a.idempotency_key} applied {when(a.applied_at)}"
        + (f", undone {when(a.undone_at)} (key {a.undo_key})" if a.undone_at else ", still in place")
        for a in input.actions
        if a.stage in stages
    ]


def stage_line(input: ReviewInput, name: str) -> str:
    stage = stage_of(input, name)
    if stage is None:
        return f"stage {name}: not recorded"
    return f"stage {name}: {stage.status}" + (f" — {stage.detail}" if stage.detail else "")


def stage_status(input: ReviewInput, name: str) -> str | None:
    stage = stage_of(input, name)
    return str(stage.status) if stage else None
