"""The incident's record: what its workflow remembers (one IncidentMemory), the bookkeeping every
part shares (timeline notes, stage marks, status and search attributes), and the input each
activity is given, built from what the incident knows.

The lifecycle itself (stages, gates, timers, compensations) reads in `workflows/incident.py`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from temporalio import workflow

from workflows.log import log

with workflow.unsafe.imports_passed_through():
    from stanch.models.actions import ActionSpec, AppliedAction, TargetRef
    from stanch.models.activity_io import (
        ApplyInput,
        ConfirmInput,
        ConfirmResult,
        EvidenceInput,
        GradeInput,
        Notification,
        ReviewInput,
        UndoInput,
        VerifyInput,
    )
    from stanch.models.incident import (
        TERMINAL_STATUSES,
        IncidentInput,
        IncidentState,
        IncidentStatus,
        Recurrence,
        StageStatus,
        TimelineEntry,
        fresh_stages,
    )
    from stanch.models.memory import IncidentMemory
    from stanch.models.signals import ReproCase, Severity
    from stanch.runbooks.schema import SeverityPolicy, Verify
    from stanch.temporal import search_attributes as sa

# What restore undoes; a hotfix is the fix users get back, so it stays.
REVERSIBLE_STAGES = ("contain", "rollback")
# Repro cases kept: each is replayed by confirm and verify, so a storm of reports keeps the first.
REPRO_AT_MOST = 200
FINISHED = (StageStatus.done, StageStatus.skipped, StageStatus.rejected)
# Closing notices kept apart, harm come back opening the next occurrence, re-grading only on
# what could change the grade: each changes the commands an old history recorded.
HARDENING_PATCH = "storms-notices-recurrence"
# The timeline the state (and the review) holds: the first entries and the latest; the rest
# are counted (`timeline_omitted`) and read from history by `stanch audit timeline`.
TIMELINE_AT_MOST = 2_000
TIMELINE_HEAD = 200


class Record:
    """What one incident remembers, and the bookkeeping every part does the same way."""

    def __init__(self, input: IncidentInput) -> None:
        self.input = input
        self.runbook = input.runbook
        if input.carried is not None:  # a continued run remembers what the last one did
            self.memory = IncidentMemory.model_validate(input.carried)
            self.memory.handing_over = False
            self.state.runs += 1
            return
        opened_at = workflow.now()
        # An incident's occurrence is named after its first run; a recurrence opens a new one in this run.
        first_run = workflow.info().run_id if input.recurrence else workflow.info().first_execution_run_id
        state = IncidentState(
            id=input.incident_id,
            status=IncidentStatus.open,
            severity=input.runbook.severity.default,
            runbook=input.runbook.name,
            runbook_sha256=input.runbook_sha256,
            target=input.target,
            dedup_key=input.dedup_key,
            opened_at=opened_at,
            stages=fresh_stages(),
            occurrence=f"{input.incident_id}@{first_run[:8]}",
            drill=input.drill,
        )
        # Incidents begun before these rules replay (and run on) as they were recorded.
        self.memory = IncidentMemory(state=state, last_escalation_at=opened_at, hardened=workflow.patched(HARDENING_PATCH))
        if recurrence := input.recurrence:  # what the previous occurrence left to this one
            state.previous_occurrences = recurrence.previous_occurrences
            state.regulatory = recurrence.regulatory or state.regulatory
            state.actions = list(recurrence.protections)
            self.memory.recent_signal_ids = dict(recurrence.recent_signal_ids)

    @property
    def state(self) -> IncidentState:
        return self.memory.state

    @property
    def policy(self) -> SeverityPolicy:
        return self.runbook.policy_for(self.state.severity)

    @property
    def is_over(self) -> bool:
        return self.state.status in TERMINAL_STATUSES

    @property
    def continued(self) -> bool:
        """This run took over from one whose history grew long: it resumes, never starts again."""
        return self.input.carried is not None

    def history_is_long(self) -> bool:
        """Time to hand over to a new run (continue-as-new) at the next wait: when Temporal
        suggests it (4,096 events by default) or past our own bound. Both leave room under
        Temporal's warning at 10,240 events for the signals that arrive before the next wait."""
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > self.input.events_before_handing_over

    def handed_over(self) -> IncidentInput:
        """The next run's input: the same incident, runbook and target, carrying the memory —
        slimmed first if it would not fit the payload Temporal accepts (everything left out of
        it is in this run's history)."""
        slim_to_fit(self.memory, workflow.now())
        return self.input.model_copy(update={"carried": self.memory.model_dump(mode="json"), "recurrence": None})

    def next_occurrence(self) -> IncidentInput:
        """The next run's input when harm came back: a fresh occurrence of the same incident id,
        handed the protections still in place and a report still owed."""
        state, clock = self.state, self.state.regulatory
        recurrence = Recurrence(
            previous_occurrences=[*state.previous_occurrences, state.occurrence],
            # Their raw payloads stay in this run's history: the next input must fit Temporal's payload limit.
            signals=[signal.model_copy(update={"raw": {}}) for signal in self.memory.recurring],
            signals_not_kept=self.memory.recurring_not_kept,
            recent_signal_ids=dict(list(self.memory.recent_signal_ids.items())[-RECENT_IDS_TO_NEXT_OCCURRENCE:]),
            regulatory=clock if clock.serious and clock.filed is None else None,
            protections=[a for a in state.actions if a.stage in REVERSIBLE_STAGES and a.undone_at is None],
        )
        return self.input.model_copy(update={"carried": None, "recurrence": recurrence})

    @property
    def winding_down(self) -> bool:
        """Protections are being lifted or are gone: a firing signal now is harm come back."""
        state, memory = self.state, self.memory
        if state.status == IncidentStatus.awaiting_decision:
            return memory.failed_stage in ("restore", "review")
        return state.status in (IncidentStatus.restoring, IncidentStatus.reviewing, IncidentStatus.awaiting_report)

    def finished(self, stage: str) -> bool:
        return self.state.stage(stage).status in FINISHED

    def begin(self, stage: str) -> None:
        """Mark a stage running, unless a continued run finds it waiting on a failure decision."""
        if self.memory.failed_stage != stage:
            self.mark(stage, StageStatus.running)

    # --- changing the record ------------------------------------------------------------

    def note(self, kind: str, message: str, actor: str = "stanch", **data: Any) -> None:
        timeline = self.state.timeline
        if self.input.drill and not timeline:  # whoever reads the first line knows no user was harmed
            message, data = f"DRILL (a rehearsal on a drill route): {message}", {**data, "drill": True}
        timeline.append(TimelineEntry(at=workflow.now(), kind=kind, message=message, actor=actor, data=data))
        if len(timeline) > TIMELINE_AT_MOST:  # a very long incident: its history keeps every entry
            del timeline[TIMELINE_HEAD]  # the oldest after the opening ones
            self.state.timeline_omitted += 1

    def set_status(self, status: IncidentStatus) -> None:
        if self.state.status != status:
            self.state.status = status
            self.publish()
            log(self.state, f"status: {status}")

    def change_severity(self, severity: Severity, reasons: list[str], actor: str = "stanch") -> None:
        previous = self.state.severity
        self.state.severity = severity
        self.state.severity_reasons = reasons
        if previous != severity:
            self.note("severity", f"severity {previous} → {severity}: {'; '.join(reasons)}", actor)
            self.publish()

    def mark(self, stage: str, status: StageStatus, detail: str = "") -> None:
        entry = self.state.stage(stage)
        if status == StageStatus.running and entry.started_at is None:
            entry.started_at = workflow.now()
        if status in (StageStatus.done, StageStatus.skipped, StageStatus.rejected):
            entry.finished_at = workflow.now()
        entry.status = status
        entry.detail = detail
        self.note("stage", f"{stage}: {status}" + (f" — {detail}" if detail else ""), stage=stage, status=status.value)
        log(self.state, f"{stage}: {status}" + (f" — {detail}" if detail else ""), stage=stage)

    def publish(self) -> None:
        """Mirror status and severity into search attributes (never anything secret)."""
        if not self.input.upsert_search_attributes:
            return
        workflow.upsert_search_attributes(
            [
                sa.INCIDENT_STATUS.value_set(self.state.status.value),
                sa.INCIDENT_SEVERITY.value_set(self.state.severity.value),
                sa.INCIDENT_RUNBOOK.value_set(self.state.runbook),
                sa.INCIDENT_TARGET.value_set(f"{self.state.target.adapter}:{self.state.target.model}"),
                sa.INCIDENT_OPENED_AT.value_set(self.state.opened_at),
            ]
        )

    def take_confirmation(self, result: ConfirmResult) -> None:
        self.memory.detectors_fired = result.detectors_fired
        self.memory.findings = result.findings
        self.merge_repro(result.reproduced)
        for finding in result.findings:
            self.note("confirm", f"{finding.check}: {finding.outcome} — {finding.detail}")

    def merge_repro(self, cases: list[ReproCase]) -> None:
        """Add new cases (one per prompt or whole conversation); a known case gains what was found."""
        known = {case.key(): case for case in self.state.repro}
        for case in cases:
            existing = known.get(case.key())
            if existing is None and len(known) >= REPRO_AT_MOST:
                continue  # the signal that carried it is in history
            if existing is None:
                known[case.key()] = case.model_copy(update={"output": None})  # outputs may hold the leaked secret
                self.state.repro.append(known[case.key()])
            else:
                existing.detectors = sorted(set(existing.detectors) | set(case.detectors))
                existing.output_hits = list(dict.fromkeys(existing.output_hits + case.output_hits))

    # --- reading the record -------------------------------------------------------------

    def next_tier_recipients(self) -> list[str]:
        tiers = self.policy.escalation
        return tiers[min(self.state.escalation_tier, len(tiers) - 1)].notify if tiers else ["oncall"]

    def applied_summary(self, stage: str) -> str:
        kinds = [a.kind for a in self.state.actions if a.stage == stage]
        return f"applied {', '.join(kinds)}" if kinds else "nothing applied"

    def protections_in_place(self) -> list[AppliedAction]:
        """What restore undoes, newest first: containment and rollback not yet undone."""
        return [a for a in reversed(self.state.actions) if a.stage in REVERSIBLE_STAGES and a.undone_at is None and a.reversible]

    def still_in_place(self) -> list[str]:
        return [a.kind for a in self.state.actions if a.stage in REVERSIBLE_STAGES and a.undone_at is None]

    def step_targets(self) -> list[TargetRef]:
        """The other control planes the runbook's steps act on (a registry, a flag file)."""
        steps = self.runbook.containment + self.runbook.rollback + (self.runbook.hotfix.actions if self.runbook.hotfix else [])
        names = sorted({step.target for step in steps if step.target and step.target != self.state.target.adapter})
        return [self.state.target.model_copy(update={"adapter": name}) for name in names]

    def close_reason_for_false_positive(self) -> str:
        if self.memory.triage_decision:
            return f"not confirmed by {self.memory.triage_decision.by}: {self.memory.triage_decision.reason}"
        return "; ".join(f.detail for f in self.memory.findings) or "checks did not reproduce the harm"

    # --- what each activity is told: what it needs, never the whole state -----------------

    def confirm_input(self) -> ConfirmInput:
        state = self.state
        return ConfirmInput(
            incident_id=state.id,
            target=state.target,
            checks=self.runbook.confirm.checks,
            repro=state.repro,
            detector_specs=self.runbook.detectors,
        )

    def evidence_input(self) -> EvidenceInput:
        state = self.state
        return EvidenceInput(
            incident_id=state.id,
            occurrence=state.occurrence,
            runbook=state.runbook,
            runbook_sha256=state.runbook_sha256,
            target=state.target,
            signals=[signal.model_copy(update={"raw": {}}) for signal in state.signals],  # the raw payloads are in history
            repro=state.repro,
            findings=self.memory.findings,
            step_targets=self.step_targets(),
        )

    def grade_input(self, current: Severity | None) -> GradeInput:
        return GradeInput(
            runbook=self.runbook,
            signals=[signal.model_copy(update={"raw": {}}) for signal in self.state.signals],  # rules never read raw
            signal_count=self.state.signal_count,
            detectors_fired=self.memory.detectors_fired,
            current=current,
            affected_users=self.state.exposure.users_affected if self.state.exposure else None,
        )

    def apply_input(self, stage: str, index: int, action: ActionSpec, captured: dict[str, Any] | None) -> ApplyInput:
        state = self.state
        return ApplyInput(
            incident_id=state.id,
            occurrence=state.occurrence,
            stage=stage,
            index=index,
            target=state.target,
            action=action,
            dry_run=self.input.dry_run,
            captured=captured,
            # A fine-tune trains on the incident's cases; every other step's input stays small.
            repro=state.repro if action.kind == "deploy_finetune" else [],
            corrections=self.memory.corrections if action.kind == "deploy_finetune" else [],
            verify_detectors=self.runbook.hotfix.verify.detectors if action.kind == "deploy_finetune" and self.runbook.hotfix else [],
            detector_specs={name: self.runbook.detectors[name] for name in named_detectors(action) if name in self.runbook.detectors},
            last_good_version=(state.cause.last_good_version or "") if state.cause else "",
        )

    def verify_input(self, verify: Verify) -> VerifyInput:
        return VerifyInput(
            incident_id=self.state.id,
            target=self.state.target,
            detectors=verify.detectors,
            repro=self.state.repro,
            include_regression_suite=verify.include_regression_suite,
            detector_specs=self.runbook.detectors,
            sampling=verify,
            metric_checks=[check for check in self.runbook.confirm.checks if check.kind == "metric"],
            version=self.version_to_verify(),
        )

    def version_to_verify(self) -> str:
        """A hotfix that deployed a version is verified on the release; one that changed the
        guardrails or the system prompt, on the reported version users get back after restore."""
        deployed = any(a.stage == "hotfix" and a.kind in DEPLOYING_KINDS for a in self.state.actions)
        return "release" if deployed or not self.state.target.version else self.state.target.version

    def undo_input(self, applied: AppliedAction) -> UndoInput:
        return UndoInput(incident_id=self.state.id, applied=applied, dry_run=self.input.dry_run)

    def review_input(self, outcome: str) -> ReviewInput:
        state, clock = self.state, self.state.regulatory
        first = state.signals[0] if state.signals else None
        sources: dict[str, int] = {}
        for signal in state.signals:
            sources[signal.source.value] = sources.get(signal.source.value, 0) + 1
        return ReviewInput(
            incident_id=state.id,
            occurrence=state.occurrence,
            dry_run=self.input.dry_run,
            runbook=self.runbook,
            target=state.target,
            severity=state.severity,
            status=outcome,
            repro=state.repro,
            actions=state.actions,
            timeline=[entry.model_dump(mode="json") for entry in state.timeline],
            timeline_omitted=state.timeline_omitted,
            evidence_sha256=state.evidence.sha256 if state.evidence else None,
            serious=clock.serious,
            report_deadline=clock.deadline.isoformat() if clock.deadline else None,
            # For the Art. 73 report draft and the compliance mapping: data only, no new command.
            runbook_sha256=state.runbook_sha256,
            severity_reasons=state.severity_reasons,
            first_signal=first.model_copy(update={"raw": {}}) if first else None,
            signal_count=max(state.signal_count, len(state.signals)),
            signal_sources=sources,
            findings=self.memory.findings,
            detectors_fired=self.memory.detectors_fired,
            evidence=state.evidence,
            regulatory=clock,
            stages=state.stages,
            approvals=state.approvals,
            opened_at=state.opened_at,
            acknowledged_at=state.acknowledged_at,
            acknowledged_by=state.acknowledged_by,
            reviewed_at=workflow.now(),
            objectives=state.objectives,
            gate_waits=state.gate_waits,
            exposure=state.exposure,
            cause=state.cause,
        )

    def notification(self, kind: str, recipients: list[str], message: str, tier: int) -> Notification:
        """The next notification, numbered: delivery is idempotent by that number."""
        self.memory.notifications_sent += 1
        return Notification(
            incident_id=self.state.id,
            kind=kind,
            recipients=recipients,
            # A drill pages the real on-call, and says so first.
            message=f"[DRILL] {message}" if self.input.drill else message,
            severity=self.state.severity,
            tier=tier,
            dedup_id=f"{self.state.occurrence}/notify/{self.memory.notifications_sent}",
            dry_run=self.input.dry_run,
        )


# Temporal refuses a payload over 2 MiB and ends the workflow that sent it: keep well under.
CARRIED_AT_MOST = 1_500_000
# The newest signal ids the next occurrence knows already (a repeat of an old alert is not harm).
RECENT_IDS_TO_NEXT_OCCURRENCE = 5_000


def slim_to_fit(memory: IncidentMemory, at: datetime) -> None:
    """Leave out, step by step, what the incident can do without until the memory fits: the raw
    payloads and long descriptions of the signals kept, then the older half of the dedup ids,
    the middle of the timeline, the later signals kept. Each step is noted on the timeline."""
    state = memory.state

    def size() -> int:
        return len(memory.model_dump_json())

    steps = [
        ("raw payloads and long descriptions of the signals kept", lambda: slim_signals(state.signals)),
        ("the older half of the signal ids remembered for deduplication", lambda: drop_oldest(memory.recent_signal_ids)),
        ("the middle of the timeline", lambda: drop_middle(state)),
        ("the signals kept past the first 20", lambda: keep_first(state.signals, 20)),
    ]
    for what, step in steps:
        if size() <= CARRIED_AT_MOST:
            return
        step()
        state.timeline.append(TimelineEntry(at=at, kind="stage", message=f"handing over: left out {what} (all in history)", actor="stanch"))


def slim_signals(signals: list) -> None:
    for index, signal in enumerate(signals):
        signals[index] = signal.model_copy(update={"raw": {}, "description": signal.description[:1_000]})


def keep_first(signals: list, count: int) -> None:
    del signals[count:]


def drop_oldest(ids: dict[str, None]) -> None:
    for digest in list(ids)[: len(ids) // 2]:
        del ids[digest]


def drop_middle(state: IncidentState) -> None:
    keep_head, keep_tail = 100, 400
    if len(state.timeline) > keep_head + keep_tail:
        state.timeline_omitted += len(state.timeline) - keep_head - keep_tail
        del state.timeline[keep_head:-keep_tail]


DEPLOYING_KINDS = ("deploy_finetune", "deploy_version")


def named_detectors(action: ActionSpec) -> list[str]:
    """The detector ids a step names (`params.detectors` of a block), as written in the runbook."""
    names = action.params.get("detectors") if isinstance(action.params, dict) else None
    return [str(name) for name in names] if isinstance(names, list) else []
