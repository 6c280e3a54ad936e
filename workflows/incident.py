"""IncidentWorkflow: one durable workflow per incident, reading like the runbook it executes.

    OPEN → CONFIRM → EVIDENCE → SEVERITY → CONTAIN → ROLLBACK → HOTFIX → VERIFY → RESTORE → REVIEW → CLOSED

Every stage is one method below. Gated stages wait for approvals (four eyes where the
runbook's policy says so); a failed action keeps every protection in place and waits for a
human to choose retry, skip or abort; restore undoes containment and rollback in reverse
order and only on an explicit step.

Where the rest lives: the gate and the fail-safe in `workflows/gates.py`; the clocks
(escalation, severity rising with new signals, the report deadline) in `workflows/clocks.py`;
what responders send in `workflows/handlers.py`; the record it keeps in `workflows/record.py`.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

from workflows.clocks import cause_of
from workflows.gates import (
    ACTION_RETRY,
    ACTION_TIMEOUT,
    REVERSIBLE_STAGES,
    IncidentAborted,
    IncidentGates,
)

with workflow.unsafe.imports_passed_through():
    from activities.confirm import ConfirmActivities
    from activities.contain import ContainActivities
    from activities.evidence import EvidenceActivities
    from activities.hotfix import HotfixActivities
    from stanch.models.activity_io import (
        ConfirmInput,
        ConfirmResult,
        EvidenceInput,
        Finding,
        UndoInput,
        ReviewInput,
        ReviewResult,
        VerifyInput,
    )
    from activities.restore import RestoreActivities
    from activities.review import ReviewActivities
    from activities.rollback import RollbackActivities
    from activities.verify import VerifyActivities
    from stanch.models.incident import EvidenceRecord, IncidentInput, IncidentState, IncidentStatus, StageStatus
    from stanch.models.actions import TargetRef

# Reads and probes retry a few times; what cannot be decided goes to a human, never silently on.
READ_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=20), maximum_attempts=5)
PROBE_TIMEOUT = timedelta(minutes=2)
FINETUNE_TIMEOUT = timedelta(minutes=30)
VERIFY_TIMEOUT = timedelta(minutes=30)  # the regression suite grows with every incident
VERIFY_HEARTBEAT = timedelta(seconds=60)


@workflow.defn(name="IncidentWorkflow")
class IncidentWorkflow(IncidentGates):
    @workflow.init
    def __init__(self, input: IncidentInput) -> None:
        super().__init__(input)
        self.background: list[asyncio.Task] = []

    @workflow.run
    async def run(self, input: IncidentInput) -> IncidentState:
        await self.open()
        try:
            if await self.confirm():
                await self.collect_evidence()
                await self.grade_severity()
                await self.contain()
                await self.roll_back()
                await self.hotfix()
                await self.verify()
                await self.restore()
                await self.review()
                await self.wait_for_regulatory_report()
                self.close(IncidentStatus.closed, "restored and reviewed")
        except IncidentAborted as aborted:
            self.note("decision", f"aborted: protections stay in place ({aborted})", aborted.by)
            await self.review(outcome=f"aborted by {aborted.by}: {aborted}")
            await self.wait_for_regulatory_report()  # an abort ends the response, not the duty to report
            self.close(IncidentStatus.aborted, str(aborted))
        for task in self.background:
            task.cancel()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.state

    # --- the stages ---------------------------------------------------------------------

    async def open(self) -> None:
        """The first signal opens the incident; on-call is paged and the ack clock starts."""
        await workflow.wait_condition(lambda: bool(self.state.signals))
        self.publish()
        first = self.state.signals[0]
        self.note("stage", f"opened by {first.sender} signal {first.signal_id!r}: {first.title}", first.sender)
        await self.notify("page", ["oncall"], f"new incident {self.state.id}: {first.title or self.runbook.description}")
        self.background.append(asyncio.create_task(self.escalate_until_acknowledged()))

    async def confirm(self) -> bool:
        """Re-check before acting: replay the reported prompts, re-query the metric."""
        self.mark("confirm", StageStatus.running)
        try:
            result = await workflow.execute_activity_method(
                ConfirmActivities.confirm_incident,
                ConfirmInput(
                    incident_id=self.state.id, target=self.state.target, checks=self.runbook.confirm.checks, repro=self.state.repro
                ),
                start_to_close_timeout=PROBE_TIMEOUT,
                retry_policy=READ_RETRY,
            )
        except ActivityError as failure:  # checks that cannot run decide nothing: a human triages
            finding = Finding(check="confirm", outcome="inconclusive", detail=f"checks could not run: {cause_of(failure)}")
            result = ConfirmResult(outcome="inconclusive", findings=[finding])
        self.detectors_fired = result.detectors_fired
        self.findings = result.findings
        self.merge_repro(result.reproduced)
        for finding in result.findings:
            self.note("confirm", f"{finding.check}: {finding.outcome} — {finding.detail}")
        outcome = result.outcome
        if outcome == "inconclusive":
            outcome = await self.triage_by_a_human()
        if outcome == "not_confirmed":
            self.mark("confirm", StageStatus.done, "not confirmed: false positive")
            for stage in self.state.stages[1:]:
                self.mark(stage.name, StageStatus.skipped, "false positive")
            self.close(IncidentStatus.false_positive, self.close_reason_for_false_positive())
            return False
        self.mark("confirm", StageStatus.done, "confirmed")
        self.set_status(IncidentStatus.confirmed)
        return True

    async def triage_by_a_human(self) -> str:
        """Checks could not decide: a responder triages; reminders escalate until they do."""
        self.set_status(IncidentStatus.triage)
        self.mark("confirm", StageStatus.running, "inconclusive: waiting for a responder to triage")
        await self.notify("approval_needed", ["oncall"], f"{self.state.id}: confirmation inconclusive, please triage")
        while self.triage_decision is None:
            try:
                await workflow.wait_condition(lambda: self.triage_decision is not None, timeout=self.runbook.confirm.triage_timeout)
            except TimeoutError:
                await self.notify("escalation", self.next_tier_recipients(), f"{self.state.id}: triage overdue")
        return "not_confirmed" if self.triage_decision.outcome == "false_positive" else "confirmed"

    async def collect_evidence(self) -> None:
        """Snapshot what an investigation needs before the first change (EU AI Act Art. 73(6))."""
        self.mark("evidence", StageStatus.running)
        while True:
            try:
                snapshot = await workflow.execute_activity_method(
                    EvidenceActivities.snapshot_evidence,
                    EvidenceInput(
                        incident_id=self.state.id,
                        occurrence=self.state.occurrence,
                        runbook=self.state.runbook,
                        runbook_sha256=self.state.runbook_sha256,
                        target=self.state.target,
                        signals=self.state.signals,
                        repro=self.state.repro,
                        findings=self.findings,
                        step_targets=self.step_targets(),
                    ),
                    start_to_close_timeout=ACTION_TIMEOUT,
                    retry_policy=READ_RETRY,
                )
                break
            except ActivityError as failure:
                if await self.ask_a_human("evidence", f"snapshot failed: {cause_of(failure)}") == "skip":
                    return self.mark("evidence", StageStatus.skipped, "skipped by a responder")
        self.state.evidence = EvidenceRecord(
            sha256=snapshot.sha256, location=snapshot.location, taken_at=workflow.now(), summary=snapshot.summary
        )
        self.mark("evidence", StageStatus.done, f"sha256 {snapshot.sha256}")

    def step_targets(self) -> list[TargetRef]:
        """The other control planes the runbook's steps act on (a registry, a flag file)."""
        steps = self.runbook.containment + self.runbook.rollback + (self.runbook.hotfix.actions if self.runbook.hotfix else [])
        names = sorted({step.target for step in steps if step.target and step.target != self.state.target.adapter})
        return [self.state.target.model_copy(update={"adapter": name}) for name in names]

    async def grade_severity(self) -> None:
        """Runbook rules grade the incident; new signals may raise it later, never lower it."""
        self.mark("severity", StageStatus.running)
        while True:
            try:
                self.apply_grade(await self.run_grading())
                break
            except ActivityError as failure:
                if await self.ask_a_human("severity", f"grading failed: {cause_of(failure)}") == "skip":
                    self.note("severity", f"grading skipped by a responder: severity stays {self.state.severity}")
                    break
        self.mark("severity", StageStatus.done, "; ".join(self.state.severity_reasons))
        self.background.append(asyncio.create_task(self.regrade_on_new_signals()))

    async def contain(self) -> None:
        """Limit harm now: kill switches, blocked prompts and outputs, restricted endpoints."""
        if not await self.gate("contain", self.runbook.containment):
            return
        self.set_status(IncidentStatus.containing)
        await self.apply_actions("contain", self.runbook.containment, ContainActivities.apply_containment)
        self.mark("contain", StageStatus.done, self.applied_summary("contain"))

    async def roll_back(self) -> None:
        """Previous good version, disable the new update, or switch to the fallback model."""
        if not await self.gate("rollback", self.runbook.rollback):
            return
        self.set_status(IncidentStatus.rolling_back)
        await self.apply_actions("rollback", self.runbook.rollback, RollbackActivities.apply_rollback)
        self.mark("rollback", StageStatus.done, self.applied_summary("rollback"))

    async def hotfix(self) -> None:
        """Guardrails, system prompt or a fine-tuned version: the fix users will get back."""
        actions = self.runbook.hotfix.actions if self.runbook.hotfix else []
        if not await self.gate("hotfix", actions):
            return
        self.set_status(IncidentStatus.hotfixing)
        await self.apply_actions("hotfix", actions, HotfixActivities.apply_hotfix, timeout=FINETUNE_TIMEOUT)
        self.mark("hotfix", StageStatus.done, self.applied_summary("hotfix"))

    async def verify(self) -> None:
        """Replay the repro cases and the regression suite; only a pass moves the incident on."""
        if self.state.stage("hotfix").status != StageStatus.done:
            return self.mark("verify", StageStatus.skipped, "no hotfix was applied")
        if self.input.dry_run:  # nothing was fixed: rehearse the rest as if verification passed
            suite = " and the regression suite" if self.runbook.hotfix.verify.include_regression_suite else ""
            return self.mark("verify", StageStatus.done, f"dry run: would replay {len(self.state.repro)} repro cases{suite} on the fixed version")
        self.set_status(IncidentStatus.verifying)
        self.mark("verify", StageStatus.running)
        while True:
            try:
                result = await workflow.execute_activity_method(
                    VerifyActivities.verify_fix,
                    VerifyInput(
                        incident_id=self.state.id,
                        target=self.state.target,
                        detectors=self.runbook.hotfix.verify.detectors,
                        repro=self.state.repro,
                        include_regression_suite=self.runbook.hotfix.verify.include_regression_suite,
                    ),
                    start_to_close_timeout=VERIFY_TIMEOUT,
                    heartbeat_timeout=VERIFY_HEARTBEAT,
                    retry_policy=READ_RETRY,
                )
            except ActivityError as failure:
                await self.ask_a_human("verify", f"verification could not run: {cause_of(failure)}")
                continue
            summary = f"{len(result.cases) - len(result.failures)}/{len(result.cases)} cases pass on version {result.version}"
            self.note("verify", summary, cases=[case.model_dump() for case in result.failures])
            if result.passed:
                return self.mark("verify", StageStatus.done, summary)
            await self.ask_a_human("verify", f"verification failed: {summary}")

    async def restore(self) -> None:
        """Lift containment and rollback in reverse order, each through the inverse it recorded."""
        to_lift = [a for a in reversed(self.state.actions) if a.stage in REVERSIBLE_STAGES and a.undone_at is None and a.reversible]
        requested_by = self.resolve_request.by if self.resolve_request else "stanch"
        if not await self.gate("restore", to_lift, requested_by=requested_by):
            if to_lift:
                self.note("restore", f"protections left in place: {[a.kind for a in to_lift]}")
            return
        self.set_status(IncidentStatus.restoring)
        for applied in to_lift:
            while True:
                try:
                    lifted = await workflow.execute_activity_method(
                        RestoreActivities.undo_action,
                        UndoInput(incident_id=self.state.id, applied=applied, dry_run=self.input.dry_run),
                        start_to_close_timeout=ACTION_TIMEOUT,
                        retry_policy=ACTION_RETRY,
                    )
                except ActivityError as failure:
                    if await self.ask_a_human("restore", f"undo of {applied.kind} failed: {cause_of(failure)}") == "retry":
                        continue
                    self.note("restore", f"{applied.kind} stays in place (skipped by a responder)")
                    break
                self.state.actions[self.state.actions.index(applied)] = lifted
                self.note("action", f"lifted {applied.kind}", key=lifted.undo_key)
                break
        still = [a.kind for a in self.state.actions if a.stage in REVERSIBLE_STAGES and a.undone_at is None]
        self.mark("restore", StageStatus.done, f"still in place: {', '.join(still)}" if still else "every protection lifted")

    async def review(self, outcome: str = "restored") -> None:
        """Review tasks, the postmortem draft, repro cases into the regression suite, report draft."""
        self.set_status(IncidentStatus.reviewing)
        self.mark("review", StageStatus.running)
        while True:
            try:
                result = await self.open_review(outcome)
                break
            except ActivityError as failure:
                if await self.ask_a_human("review", f"opening the review failed: {cause_of(failure)}") == "skip":
                    return self.mark("review", StageStatus.skipped, "skipped by a responder: open the review by hand")
        self.state.review = result.model_dump()
        self.mark("review", StageStatus.done, f"{len(result.tasks)} tasks, {result.regression_cases_added} regression cases added")

    async def open_review(self, outcome: str) -> ReviewResult:
        clock = self.state.regulatory
        first = self.state.signals[0] if self.state.signals else None
        sources: dict[str, int] = {}
        for signal in self.state.signals:
            sources[signal.source.value] = sources.get(signal.source.value, 0) + 1
        return await workflow.execute_activity_method(
            ReviewActivities.write_review,
            ReviewInput(
                incident_id=self.state.id,
                occurrence=self.state.occurrence,
                dry_run=self.input.dry_run,
                runbook=self.runbook,
                target=self.state.target,
                severity=self.state.severity,
                status=outcome,
                repro=self.state.repro,
                actions=self.state.actions,
                timeline=[entry.model_dump(mode="json") for entry in self.state.timeline],
                evidence_sha256=self.state.evidence.sha256 if self.state.evidence else None,
                serious=clock.serious,
                report_deadline=clock.deadline.isoformat() if clock.deadline else None,
                # For the Art. 73 report draft and the compliance mapping: data only, no new command.
                runbook_sha256=self.state.runbook_sha256,
                severity_reasons=self.state.severity_reasons,
                first_signal=first.model_copy(update={"raw": {}}) if first else None,
                signal_count=len(self.state.signals),
                signal_sources=sources,
                findings=self.findings,
                detectors_fired=self.detectors_fired,
                evidence=self.state.evidence,
                regulatory=clock,
                stages=self.state.stages,
                approvals=self.state.approvals,
                opened_at=self.state.opened_at,
                acknowledged_at=self.state.acknowledged_at,
                acknowledged_by=self.state.acknowledged_by,
                reviewed_at=workflow.now(),
            ),
            start_to_close_timeout=ACTION_TIMEOUT,
            retry_policy=ACTION_RETRY,
        )

    async def wait_for_regulatory_report(self) -> None:
        """A serious incident stays open until a responder records its report as filed."""
        if self.state.regulatory.serious and self.state.regulatory.filed is None:
            self.set_status(IncidentStatus.awaiting_report)
            await workflow.wait_condition(lambda: self.state.regulatory.filed is not None)

    def close(self, status: IncidentStatus, reason: str) -> None:
        self.state.closed_at = workflow.now()
        self.state.close_reason = reason
        self.note("stage", f"{status}: {reason}")
        self.set_status(status)

