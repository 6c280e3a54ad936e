"""IncidentWorkflow: one durable workflow per incident, reading like the runbook it executes.

    OPEN → CONFIRM → EVIDENCE → SEVERITY → CONTAIN → ROLLBACK → HOTFIX → VERIFY → RESTORE → REVIEW → CLOSED

Every stage is one method below. Gated stages wait for approvals (four eyes where the
runbook's policy says so); a failed step keeps every protection in place and waits for a
human to choose retry, skip or abort (`gates.attempt`); restore undoes containment and
rollback in reverse order, each through the undo it recorded.

The parts, each over the one record of what the incident remembers (`workflows/record.py`):
the gate and the fail-safe in `gates.py`; applying a runbook's steps in `steps.py`; the clocks
(escalation, the report deadline, waiting for a person) in `clocks.py`; grading in
`severity.py`; notifications in `notifications.py`; what monitoring sends in `monitoring.py`
and what responders send in `handlers.py`, their Temporal handlers declared in `messages.py`;
timeouts and retries in `policies.py`.

A long history hands the memory over to a new run at a wait (`hand_over`); harm reported again
after containment was lifted opens the next occurrence (`open_next_occurrence`).
"""

from __future__ import annotations

import asyncio
from typing import cast

from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows.bisection import Bisection
from workflows.clocks import Clocks
from workflows.exposure import BlastRadius
from workflows.failures import HandOver, HarmIsBack, IncidentAborted, StepFailed, cause_of
from workflows.gates import Gates
from workflows.handlers import ResponderHandlers
from workflows.messages import IncidentMessages
from workflows.monitoring import Monitoring
from workflows.notifications import Notifier
from workflows.policies import (
    ACTION_RETRY,
    ACTION_TIMEOUT,
    FINETUNE_TIMEOUT,
    PROBE_TIMEOUT,
    READ_RETRY,
    VERIFY_HEARTBEAT,
    VERIFY_TIMEOUT,
)
from workflows.record import Record
from workflows.severity import Grading
from workflows.shadow import PATCH as SHADOW_RESTORE
from workflows.shadow import ShadowCheck
from workflows.steps import Steps

with workflow.unsafe.imports_passed_through():
    from activities.confirm import ConfirmActivities
    from activities.contain import ContainActivities
    from activities.evidence import EvidenceActivities
    from activities.hotfix import HotfixActivities
    from activities.restore import RestoreActivities
    from activities.review import ReviewActivities
    from activities.rollback import RollbackActivities
    from activities.verify import VerifyActivities
    from stanch.models.actions import AppliedAction
    from stanch.models.activity_io import ConfirmResult, Finding, VerifyResult
    from stanch.models.decisions import TriageDecision
    from stanch.models.incident import EvidenceRecord, IncidentInput, IncidentState, IncidentStatus, StageStatus
    from stanch.runbooks.schema import Runbook, Verify


@workflow.defn(name="IncidentWorkflow")
class IncidentWorkflow(IncidentMessages):
    @workflow.init
    def __init__(self, input: IncidentInput) -> None:
        self.record = Record(input)
        self.notifier = Notifier(self.record)
        self.clocks = Clocks(self.record, self.notifier)
        self.gates = Gates(self.record, self.notifier, self.clocks)
        self.steps = Steps(self.record, self.gates)
        self.grading = Grading(self.record)
        self.responders = ResponderHandlers(self.record, self.grading)
        self.monitoring = Monitoring(self.record)
        self.shadow = ShadowCheck(self.record, self.gates)
        self.bisection = Bisection(self.record)
        self.blast_radius = BlastRadius(self.record)
        self.background: list[asyncio.Task] = []  # escalation, re-grading, the report clock

    @property
    def state(self) -> IncidentState:
        return self.record.state

    @property
    def runbook(self) -> Runbook:
        return self.record.runbook

    @workflow.run
    async def run(self, input: IncidentInput) -> IncidentState:
        try:
            if await self.open():
                await self.respond()
        except HandOver:  # a long history: the next run carries the memory and resumes
            await self.hand_over()
        except HarmIsBack:  # after containment was lifted: the next run is a new occurrence
            await self.open_next_occurrence()
        for task in self.background:
            task.cancel()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.state

    async def respond(self) -> None:
        """The lifecycle. A continued run passes over the stages already finished."""
        memory = self.record.memory
        if memory.aborted_by is None:
            try:
                if await self.confirm():
                    await self.find_the_cause()
                    await self.measure_blast_radius()
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
                else:
                    await self.restore()  # only what an earlier occurrence left in place: a human approves lifting it
                    await self.wait_for_regulatory_report()  # and a report an earlier occurrence owes
                    self.close(IncidentStatus.false_positive, self.record.close_reason_for_false_positive())
                return
            except IncidentAborted as aborted:
                memory.aborted_by, memory.abort_reason = aborted.by, str(aborted)
                self.record.note("decision", f"aborted: protections stay in place ({aborted})", aborted.by)
        try:
            await self.review(outcome=f"aborted by {memory.aborted_by}: {memory.abort_reason}")
        except IncidentAborted as again:  # the review failed too and a responder aborted it: open it by hand
            self.record.note("decision", f"review aborted: open it by hand ({again})", again.by)
            self.record.mark("review", StageStatus.skipped, "aborted by a responder: open the review by hand")
        await self.wait_for_regulatory_report()  # an abort ends the response, not the duty to report
        self.close(IncidentStatus.aborted, memory.abort_reason)

    async def hand_over(self) -> None:
        """Continue as new with the one memory; the clocks start again in the next run from it."""
        await self.stop_this_run()
        self.record.memory.regrade_requested = True  # a grading cut short is done again
        workflow.continue_as_new(self.record.handed_over())

    async def open_next_occurrence(self) -> None:
        """Harm came back after this occurrence lifted its protections: it ends here (its review is
        written) and the incident id goes on as a new occurrence, which contains again. What is
        still in place and a report still owed go with it."""
        self.record.note("stage", f"harm reported again: the next occurrence takes over ({len(self.record.memory.recurring)} signals)")
        await self.stop_this_run()
        workflow.continue_as_new(self.record.next_occurrence())

    async def stop_this_run(self) -> None:
        """Updates finish first and no page is left half-sent; then the clocks stop."""
        self.record.memory.handing_over = True
        await workflow.wait_condition(lambda: workflow.all_handlers_finished() and self.record.memory.in_flight == 0)
        for task in self.background:
            task.cancel()

    # --- the stages ---------------------------------------------------------------------

    async def open(self) -> bool:
        """The first signal opens the incident; on-call is paged and the ack clock starts.
        False when only a closing notice came: there is nothing to respond to."""
        if self.record.continued:
            self.start_clocks()
            return True
        if recurrence := self.record.input.recurrence:
            for signal in recurrence.signals:
                self.monitoring.take(signal)  # seen by the last occurrence, new to this one
            self.state.signal_count += recurrence.signals_not_kept
        await workflow.wait_condition(lambda: bool(self.state.signals) or self.state.closing_notices > 0)
        self.record.publish()
        if not self.state.signals:
            self.close(IncidentStatus.closed, "only a closing notice arrived: nothing to respond to")
            return False
        first = self.state.signals[0]
        self.record.note("stage", f"opened by {first.sender} signal {first.signal_id!r}: {first.title}", first.sender)
        again = f" (harm back after {self.state.previous_occurrences[-1]})" if self.state.previous_occurrences else ""
        await self.notifier.send("page", ["oncall"], f"new incident {self.state.id}{again}: {first.title or self.runbook.description}")
        self.background.append(asyncio.create_task(self.clocks.escalate_until_acknowledged()))
        self.background.append(asyncio.create_task(self.clocks.page_when_harm_returns()))
        if self.state.regulatory.serious and self.state.regulatory.filed is None:  # a report the last occurrence owes
            self.start_report_clock()
        return True

    def start_clocks(self) -> None:
        """A continued run starts again the clocks the last run had running."""
        self.record.publish()
        self.background.append(asyncio.create_task(self.clocks.escalate_until_acknowledged()))
        self.background.append(asyncio.create_task(self.clocks.page_when_harm_returns()))
        if self.record.finished("severity"):
            self.background.append(asyncio.create_task(self.grading.regrade_on_new_signals(became_serious=self.start_report_clock)))
        if self.state.regulatory.serious and self.state.regulatory.filed is None:
            self.start_report_clock()

    async def confirm(self) -> bool:
        """Re-check before acting: replay the reported prompts, re-query the metric."""
        memory = self.record.memory
        if self.record.finished("confirm"):
            return memory.confirmed is not False  # a continued run: decided before the hand-over
        outcome = memory.confirm_outcome or await self.run_confirm_checks()
        if outcome == "inconclusive":
            outcome = await self.triage_by_a_human()
        memory.confirmed = outcome != "not_confirmed"
        if not memory.confirmed:
            self.record.mark("confirm", StageStatus.done, "not confirmed: false positive")
            left_before = self.record.protections_in_place()  # by an earlier occurrence of this incident
            for stage in self.state.stages[1:]:
                if not (stage.name == "restore" and left_before):
                    self.record.mark(stage.name, StageStatus.skipped, "false positive")
            return False
        self.record.mark("confirm", StageStatus.done, "confirmed")
        self.record.set_status(IncidentStatus.confirmed)
        return True

    async def run_confirm_checks(self) -> str:
        self.record.mark("confirm", StageStatus.running)
        try:
            result = await workflow.execute_activity_method(
                ConfirmActivities.confirm_incident,
                self.record.confirm_input(),
                start_to_close_timeout=PROBE_TIMEOUT,
                heartbeat_timeout=VERIFY_HEARTBEAT,  # it heartbeats per case: N samples of a slow model take a while
                retry_policy=READ_RETRY,
            )
        except ActivityError as failure:  # checks that cannot run decide nothing: a human triages
            finding = Finding(check="confirm", outcome="inconclusive", detail=f"checks could not run: {cause_of(failure)}")
            result = ConfirmResult(outcome="inconclusive", findings=[finding])
        self.record.take_confirmation(result)
        self.record.memory.confirm_outcome = result.outcome  # a continued run waits for triage, it does not check again
        return result.outcome

    async def triage_by_a_human(self) -> str:
        """Checks could not decide: a responder triages; reminders escalate until they do."""
        memory = self.record.memory
        if self.state.status != IncidentStatus.triage:  # (a continued run is waiting already)
            self.record.set_status(IncidentStatus.triage)
            self.record.mark("confirm", StageStatus.running, "inconclusive: waiting for a responder to triage")
            await self.notifier.send("approval_needed", ["oncall"], f"{self.state.id}: confirmation inconclusive, please triage")
        await self.clocks.wait_for_a_person(
            lambda: memory.triage_decision is not None,
            every=lambda: self.runbook.confirm.triage_timeout,
            overdue=f"{self.state.id}: triage overdue",
            gate="the triage",
            stage="confirm",
            waited_for=lambda decided: "a responder to decide whether the harm is real",
        )
        decision = cast(TriageDecision, memory.triage_decision)  # the wait ends only once there is one
        return "not_confirmed" if decision.outcome == "false_positive" else "confirmed"

    async def find_the_cause(self) -> None:
        """Which platform change brought the harm: the gateway's changes replayed, beside the
        response (containment never waits for it); roll_back waits, to pin the last good change."""
        if workflow.patched("bisect-changes") and (bisecting := self.bisection.start()):
            self.background.append(bisecting)

    async def measure_blast_radius(self) -> None:
        """Who the model served in the exposure window and who got the harm (counts and ids), beside
        the response (containment never waits for it); severity is graded again when it lands."""
        if workflow.patched("blast-radius") and (measuring := self.blast_radius.start()):
            self.background.append(measuring)

    async def collect_evidence(self) -> None:
        """Snapshot what an investigation needs before the first change (EU AI Act Art. 73(6))."""
        if self.record.finished("evidence"):
            return
        self.record.begin("evidence")
        snapshot = await self.gates.attempt(
            "evidence",
            "snapshot",
            lambda: workflow.execute_activity_method(
                EvidenceActivities.snapshot_evidence,
                self.record.evidence_input(),
                start_to_close_timeout=ACTION_TIMEOUT,
                retry_policy=READ_RETRY,
            ),
        )
        if snapshot is None:
            return self.record.mark("evidence", StageStatus.skipped, "skipped by a responder")
        self.state.evidence = EvidenceRecord(
            sha256=snapshot.sha256, location=snapshot.location, taken_at=workflow.now(), summary=snapshot.summary
        )
        self.record.mark("evidence", StageStatus.done, f"sha256 {snapshot.sha256}")

    async def grade_severity(self) -> None:
        """Runbook rules grade the incident; new signals may raise it later, never lower it."""
        if self.record.finished("severity"):
            return
        self.record.begin("severity")
        graded = await self.gates.attempt("severity", "grading", self.grading.grade)
        if graded is None:
            self.record.note("severity", f"grading skipped by a responder: severity stays {self.state.severity}")
        elif self.grading.apply(graded):
            self.start_report_clock()
        self.record.mark("severity", StageStatus.done, "; ".join(self.state.severity_reasons))
        self.background.append(asyncio.create_task(self.grading.regrade_on_new_signals(became_serious=self.start_report_clock)))

    def start_report_clock(self) -> None:
        """Serious (EU AI Act Art. 3(49)) from this moment: the Art. 73 report clock runs until filed."""
        self.background.append(asyncio.create_task(self.clocks.run_report_clock()))

    async def contain(self) -> None:
        """Limit harm now: kill switches, blocked prompts and outputs, restricted endpoints."""
        steps = self.runbook.containment
        if self.record.finished("contain") or not await self.steps.past_gate("contain", steps, ContainActivities.apply_containment):
            return
        self.record.set_status(IncidentStatus.containing)
        await self.steps.apply("contain", steps, ContainActivities.apply_containment)
        self.record.mark("contain", StageStatus.done, self.record.applied_summary("contain"))
        self.clocks.milestones.reached("contain")

    async def roll_back(self) -> None:
        """Previous good version, disable the new update, or switch to the fallback model."""
        steps = self.runbook.rollback
        if not self.record.finished("rollback"):
            await self.bisection.finished()  # its last good change is what `{last_good_version}` pins
        if self.record.finished("rollback") or not await self.steps.past_gate("rollback", steps, RollbackActivities.apply_rollback):
            return
        self.record.set_status(IncidentStatus.rolling_back)
        await self.steps.apply("rollback", steps, RollbackActivities.apply_rollback)
        self.record.mark("rollback", StageStatus.done, self.record.applied_summary("rollback"))

    async def hotfix(self) -> None:
        """Guardrails, system prompt or a fine-tuned version: the fix users will get back."""
        steps = self.runbook.hotfix.actions if self.runbook.hotfix else []
        if self.record.finished("hotfix") or not await self.steps.past_gate(
            "hotfix", steps, HotfixActivities.apply_hotfix, FINETUNE_TIMEOUT
        ):
            return
        self.record.set_status(IncidentStatus.hotfixing)
        await self.steps.apply("hotfix", steps, HotfixActivities.apply_hotfix, timeout=FINETUNE_TIMEOUT)
        self.record.mark("hotfix", StageStatus.done, self.record.applied_summary("hotfix"))

    async def verify(self) -> None:
        """Replay the repro cases and the regression suite; only a pass moves the incident on."""
        hotfix = self.runbook.hotfix
        if self.record.finished("verify"):
            return
        if hotfix is None or self.state.stage("hotfix").status != StageStatus.done:
            return self.record.mark("verify", StageStatus.skipped, "no hotfix was applied")
        if self.record.input.dry_run:  # nothing was fixed: rehearse the rest as if verification passed
            suite = " and the regression suite" if hotfix.verify.include_regression_suite else ""
            cases = len(self.state.repro)
            return self.record.mark("verify", StageStatus.done, f"dry run: would replay {cases} repro cases{suite} on the fixed version")
        self.record.set_status(IncidentStatus.verifying)
        self.record.begin("verify")
        # Only a pass moves on: a failed verification waits for retry or abort (`decide` refuses skip).
        result = await self.gates.attempt("verify", "verification", lambda: self.replay_repro_cases(hotfix.verify), skippable=False)
        if result is not None:
            self.record.mark("verify", StageStatus.done, verification_summary(result))

    async def replay_repro_cases(self, verify: Verify) -> VerifyResult:
        try:
            result = await workflow.execute_activity_method(
                VerifyActivities.verify_fix,
                self.record.verify_input(verify),
                start_to_close_timeout=VERIFY_TIMEOUT,
                heartbeat_timeout=VERIFY_HEARTBEAT,
                retry_policy=READ_RETRY,
            )
        except ActivityError as failure:  # not the harm found again: the check itself did not run
            raise StepFailed(f"it could not run: {cause_of(failure)}") from failure
        self.record.note("verify", verification_summary(result), cases=[case.model_dump() for case in result.failures])
        if not result.passed:
            raise StepFailed(verification_summary(result))
        return result

    async def restore(self) -> None:
        """Undo containment and rollback in reverse order, each through the undo it recorded."""
        if self.record.finished("restore"):
            return
        protections = self.record.protections_in_place()
        if not await self.gates.gate_restore(protections):
            if protections:
                self.record.note("restore", f"protections left in place: {[a.kind for a in protections]}")
            return
        if self.shadow.wanted() and workflow.patched(SHADOW_RESTORE):  # the fix must hold on live traffic first
            await self.shadow.before_restore()
        self.record.set_status(IncidentStatus.restoring)
        finished = self.record.memory.steps_finished  # undone or skipped: a continued run does not ask again
        for applied in protections:
            if self.record.memory.recurring:  # harm is back: what is still in place stays
                self.record.note("restore", f"harm reported again: {applied.kind} and what came before it stay in place")
                break
            if f"restore/{applied.idempotency_key}" not in finished:
                await self.undo(applied)
                finished.append(f"restore/{applied.idempotency_key}")
        still = self.record.still_in_place()
        if still:  # harm came back, an undo was skipped, or a step cannot be undone: not restored
            self.record.mark("restore", StageStatus.done, f"still in place: {', '.join(still)}")
            self.clocks.milestones.fell_short("restore", f"partial: still in place: {', '.join(still)}")
        else:
            self.record.mark("restore", StageStatus.done, "every protection undone")
            self.clocks.milestones.reached("restore")

    async def undo(self, applied: AppliedAction) -> None:
        undone = await self.gates.attempt(
            "restore",
            f"undo of {applied.kind}",
            lambda: workflow.execute_activity_method(
                RestoreActivities.undo_action,
                self.record.undo_input(applied),
                start_to_close_timeout=ACTION_TIMEOUT,
                retry_policy=ACTION_RETRY,
            ),
        )
        if undone is None:
            return self.record.note("restore", f"{applied.kind} stays in place (skipped by a responder)")
        self.state.actions[self.state.actions.index(applied)] = undone
        self.record.note("action", f"undid {applied.kind}", key=undone.undo_key)

    async def review(self, outcome: str = "restored") -> None:
        """Review tasks, the postmortem draft, repro cases into the regression suite, report draft."""
        if self.record.finished("review"):
            return
        await self.blast_radius.landed()  # the postmortem and the Art. 73 draft carry the exposure
        self.record.set_status(IncidentStatus.reviewing)
        self.record.begin("review")
        result = await self.gates.attempt(
            "review",
            "opening the review",
            lambda: workflow.execute_activity_method(
                ReviewActivities.write_review,
                self.record.review_input(outcome),
                start_to_close_timeout=ACTION_TIMEOUT,
                retry_policy=ACTION_RETRY,
            ),
        )
        if result is None:
            return self.record.mark("review", StageStatus.skipped, "skipped by a responder: open the review by hand")
        self.state.review = result.model_dump()
        self.record.mark("review", StageStatus.done, f"{len(result.tasks)} tasks, {result.regression_cases_added} regression cases added")

    async def wait_for_regulatory_report(self) -> None:
        """A serious incident stays open until a responder records its report as filed. Harm come
        back meanwhile (or before) opens the next occurrence, which the report clock follows."""
        memory, clock = self.record.memory, self.state.regulatory
        if memory.recurring:
            raise HarmIsBack()
        if clock.serious and clock.filed is None:
            self.record.set_status(IncidentStatus.awaiting_report)
            await workflow.wait_condition(lambda: clock.filed is not None or bool(memory.recurring) or self.record.history_is_long())
            if clock.filed is None:
                raise HarmIsBack() if memory.recurring else HandOver()

    def close(self, status: IncidentStatus, reason: str) -> None:
        self.state.closed_at = workflow.now()
        self.state.close_reason = reason
        self.record.note("stage", f"{status}: {reason}")
        self.record.set_status(status)
        self.clocks.milestones.closed(status)


def verification_summary(result: VerifyResult) -> str:
    if result.detail:  # nothing replayed: verified by the metric, say so
        return result.detail
    return f"{len(result.cases) - len(result.failures)}/{len(result.cases)} cases pass on version {result.version}"
