"""A timeline as Markdown (for a person, or a postmortem) or as one self-contained HTML page.

Both come from the same sections (`sections()`), so they always say the same thing. Every text
that came from outside — signal titles, comments, messages — is escaped: a `<script>` in an
alert title is shown, never run.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import UTC, datetime

from stanch.audit.derived import MILESTONES
from stanch.audit.models import Timeline

# A cell is text, or (text, css class) where HTML may colour it.
Cell = str | tuple[str, str]


@dataclass
class Section:
    title: str
    headers: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    note: str = ""
    empty: str = "none"


def sections(t: Timeline) -> list[Section]:
    """The timeline, section by section, in the order an auditor reads it."""
    start = t.first_signal_at or t.started_at
    reached = {m.name: m for m in t.milestones if m.reached}
    running = t.ended_at is None
    note = f"from the first signal at {when(start)}" + ("; the run is still running: what it has reached so far" if running else "")
    durations = Section("Durations", ["milestone", "after", "at", "how"], note=note)
    for name in MILESTONES:
        m = reached.get(name)
        durations.rows.append(
            [name, span(m.seconds), when(m.at), m.how] if m else [name, "not reached yet" if running else "not reached", "", ""]
        )

    signals = Section("Signals", ["at", "event", "sender", "signal id", "title", "source", "status"])
    for s in t.signals:
        signals.rows.append(
            [
                when(s.at),
                str(s.event_id),
                s.sender,
                s.signal_id + (" (redelivery, ignored)" if s.redelivery else ""),
                s.title,
                s.source,
                s.status,
            ]
        )

    approvals = Section("Approvals by stage", ["stage", "approvers", "rejected by"], note="verified decisions only count toward a gate")
    for stage in dict.fromkeys(d.stage for d in t.decisions if d.name in ("approve", "reject", "approve_signal") and d.stage):
        votes = [d for d in t.decisions if d.stage == stage and d.name in ("approve", "reject", "approve_signal")]
        yes = [vote(d) for d in votes if d.fields.get("approve")]
        no = [vote(d) for d in votes if not d.fields.get("approve")]
        approvals.rows.append([stage, ", ".join(yes) or "nobody", ", ".join(no)])

    decisions = Section("Decisions", ["at", "event", "decision", "who", "roles", "via", "assertion", "outcome", "message"])
    for d in t.decisions:
        mark = ("✔ verified", "ok") if d.verified else ("✘ not verified", "bad")
        outcome: Cell = (d.outcome, "bad" if d.outcome in ("refused", "not acted on") else "")
        decisions.rows.append([when(d.at), str(d.event_id), d.what, d.who, ", ".join(d.roles), d.via, mark, outcome, d.message])

    actions = Section("Actions", ["at", "event", "stage", "kind", "target", "idempotency key", "attempts", "outcome", "result"])
    for a in t.actions:
        key = a.idempotency_key + (" (rebuilt from the input)" if a.key_source == "computed" else "")
        result = a.failure or (f"undoes {a.undoes}" if a.undoes else "") or compact(a.result)
        outcome = (a.outcome, "" if a.outcome == "completed" else "bad")
        actions.rows.append([when(a.at), str(a.event_id), a.stage, a.kind, a.target, key, str(a.attempts), outcome, result])

    steps = Section("Checks and records", ["at", "event", "activity", "outcome", "summary"])
    for step in t.steps:
        steps.rows.append(
            [
                when(step.at),
                str(step.event_id),
                step.activity,
                (step.outcome, "" if step.outcome == "completed" else "bad"),
                step.failure or step.summary,
            ]
        )

    notifications = Section("Notifications and escalations", ["at", "event", "kind", "to", "tier", "delivered by", "failed", "message"])
    for n in t.notifications:
        kind = (n.kind, "bad" if n.kind in ("escalation", "action_failed") else "")
        notifications.rows.append(
            [
                when(n.at),
                str(n.event_id),
                kind,
                ", ".join(n.recipients),
                str(n.tier),
                ", ".join(n.delivered),
                "; ".join(n.failed),
                n.message,
            ]
        )

    timers = Section("Timers", ["started", "event", "timer", "set for", "outcome", "ended"])
    for tm in t.timers:
        ended = f"{when(tm.ended_at)} (event {tm.ended_event_id})" if tm.ended_at else ""
        timers.rows.append([when(tm.at), str(tm.event_id), tm.timer_id, span(tm.seconds), tm.outcome, ended])

    statuses = Section("Status and severity", ["at", "event", "status", "severity"])
    for c in t.status_changes:
        statuses.rows.append([when(c.at), str(c.event_id), c.status or "", c.severity or ""])

    evidence = Section("Evidence", ["at", "event", "sha256", "location"])
    for e in t.evidence:
        evidence.rows.append([when(e.at), str(e.event_id), e.sha256, e.location])

    no_stages = (
        "the run is still running: see Durations and Actions for how far it got"
        if t.ended_at is None
        else (f"the run {t.execution}, so it recorded no final state: see Durations and Actions for how far it got")
    )
    stages = Section("Stages at the end", ["stage", "status", "started", "finished", "detail"], empty=no_stages)
    for stage_end in t.stages:
        stages.rows.append([stage_end.name, stage_end.status, when(stage_end.started_at), when(stage_end.finished_at), stage_end.detail])

    warnings = Section("Warnings", ["warning"], rows=[[w] for w in t.warnings])
    return [durations, signals, approvals, decisions, actions, steps, notifications, timers, statuses, evidence, stages, warnings]


DRY_RUN_BANNER = (
    "DRY RUN — a rehearsal, not an incident (`stanch runbooks plan --dry-run`): every action was only recorded, "
    "nothing was changed on the target and nobody was paged."
)


DRILL_BANNER = (
    "DRILL — a rehearsal, not an incident (`stanch drill`): the pages and approvals were real, the actions changed only a "
    "drill route (a copy of the model no user is served)."
)


def title(t: Timeline) -> str:
    kind = "Dry run" if t.dry_run else "Drill" if t.drill else "Incident"
    return f"{kind} {t.incident_id or t.workflow_id} — timeline"


def banner(t: Timeline) -> str | None:
    return DRY_RUN_BANNER if t.dry_run else DRILL_BANNER if t.drill else None


def summary(t: Timeline) -> list[tuple[str, str]]:
    outcome = t.execution + (f": {t.final_status}" if t.final_status else "") + (f" — {t.close_reason}" if t.close_reason else "")
    return [
        ("dry run", "yes: a rehearsal, nothing was changed" if t.dry_run else "no"),
        ("drill", "yes: a drill on a drill route, not an incident" if t.drill else "no"),
        ("incident", t.incident_id),
        ("occurrence", t.occurrence),
        ("workflow", f"{t.workflow_id} run {t.run_id}" + (f" (continues run {t.continued_from})" if t.continued_from else "")),
        ("runbook", f"{t.runbook} (sha256 {t.runbook_sha256})" if t.runbook_sha256 else t.runbook),
        ("target", t.target),
        ("started", when(t.started_at)),
        ("outcome", outcome),
        ("severity", t.final_severity or (t.status_changes[-1].severity if t.status_changes else "") or ""),
        ("events", str(t.events)),
        ("decision keys", ", ".join(t.trusted_keys) or "none configured: each decision's verdict as the workflow recorded it"),
    ]


# --- Markdown ---------------------------------------------------------------------------


def to_markdown(t: Timeline) -> str:
    lines = [f"# {md(title(t))}", ""]
    if (said := banner(t)) is not None:
        lines += [f"> **{md(said)}**", ""]
    lines += ["Derived from the workflow history alone; every row names its event.", ""]
    lines += ["| | |", "|---|---|"] + [f"| {key} | {md(value)} |" for key, value in summary(t)] + [""]
    for section in sections(t):
        lines += [f"## {section.title}", ""]
        if section.note:
            lines += [f"_{md(section.note)}_", ""]
        if not section.rows:
            lines += [f"_{section.empty}_", ""]
            continue
        lines.append("| " + " | ".join(section.headers) + " |")
        lines.append("|" + "---|" * len(section.headers))
        lines += ["| " + " | ".join(md(text_of(cell)) for cell in row) + " |" for row in section.rows]
        lines.append("")
    return "\n".join(lines)


def md(text: str) -> str:
    """One table cell: no line breaks, no pipes, and no raw HTML for a Markdown viewer to run."""
    return " ".join(str(text).split()).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")


# --- HTML -------------------------------------------------------------------------------

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1d2329}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;width:100%}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f6f8}td{word-break:break-word}
.ok{color:#137333}.bad{color:#b3261e;font-weight:600}.note,.empty{color:#5f6b76;font-style:italic}
table.summary{width:auto}table.summary th{width:10rem}
.banner{background:#fdecea;border:2px solid #b3261e;color:#b3261e;padding:.5rem 1rem;font-weight:700}
"""


def to_html(t: Timeline) -> str:
    """One file, no scripts, no external resources: it opens the same on an air-gapped laptop."""
    heading = title(t)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>{esc(heading)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(heading)}</h1>",
        *([f'<p class="banner">{esc(said)}</p>'] if (said := banner(t)) is not None else []),
        '<p class="note">Derived from the workflow history alone; every row names its event.</p>',
        '<table class="summary">' + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in summary(t)) + "</table>",
    ]
    for section in sections(t):
        parts.append(f"<h2>{esc(section.title)}</h2>")
        if section.note:
            parts.append(f'<p class="note">{esc(section.note)}</p>')
        if not section.rows:
            parts.append(f'<p class="empty">{esc(section.empty)}</p>')
            continue
        head = "".join(f"<th>{esc(h)}</th>" for h in section.headers)
        body = "".join("<tr>" + "".join(html_cell(cell) for cell in row) + "</tr>" for row in section.rows)
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def html_cell(cell: Cell) -> str:
    if isinstance(cell, tuple):
        text, css = cell
        return f'<td class="{esc(css)}">{esc(text)}</td>' if css else f"<td>{esc(text)}</td>"
    return f"<td>{esc(cell)}</td>"


def esc(text: str) -> str:
    return html.escape(str(text), quote=True)


# --- small formats ----------------------------------------------------------------------


def text_of(cell: Cell) -> str:
    return cell[0] if isinstance(cell, tuple) else cell


def vote(d) -> str:
    roles = f" ({', '.join(d.roles)})" if d.roles else ""
    counted = "" if d.outcome in ("accepted", "delivered") else f" [{d.outcome}]"
    return f"{d.who or 'unknown'}{roles} {'✔' if d.verified else '✘ unverified'}{counted}"


def when(moment: datetime | None) -> str:
    if moment is None:
        return ""
    moment = moment.astimezone(UTC) if moment.tzinfo else moment
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def span(seconds: float | None) -> str:
    """3.2 s, 4 min 5 s, 2 h 10 min, 3 d 4 h."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s"


def compact(result: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in result.items())
