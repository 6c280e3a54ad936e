"""An incident's timeline from its history alone: who sent what, who decided what, what changed.

No query to the workflow, no database: every line comes from a history event, decoded with the
installation's data converter. Assertions are checked the way the workflow checks them
(workflows/handlers.py): bound to the occurrence `<incident id>@<first run id[:8]>` and to a
nonce — the update id for an update, the decision id for an approval signal — with the public
(and legacy HMAC) keys configured for the audit. Without a decision's key, its verdict is the
one the workflow recorded: an accepted update passed its validator (or, in runs from before
that, its handler's check), and an approval signal's verdict is its local activity's result.

Refused updates (a handler that raised) show as UpdateCompleted with a failure; updates a
validator rejected never reach history, so they are not here — the API's logs have them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter

from stanch.audit.derived import (
    describe,
    key_warnings,
    milestones,
    settle_signal_decisions,
    step_summary,
)
from stanch.audit.history import Decoder, event_name, event_time, search_attribute
from stanch.audit.models import (
    ActionEntry,
    DecisionEntry,
    EvidenceEntry,
    NotificationEntry,
    SignalEntry,
    StageSummary,
    StatusChange,
    StepEntry,
    Timeline,
    TimerEntry,
)
from stanch.models.actions import AppliedAction, TargetRef, idempotency_key
from stanch.models.activity_io import (
    ApplyInput,
    ConfirmInput,
    ConfirmResult,
    EvidenceInput,
    EvidenceResult,
    GradeInput,
    GradeResult,
    Notification,
    NotifyResult,
    ReviewInput,
    ReviewResult,
    UndoInput,
    VerifyInput,
    VerifyResult,
)
from stanch.models.decisions import (
    Acknowledgement,
    AnswerCorrection,
    ApprovalDecision,
    DecisionReceipt,
    FailureDecision,
    Note,
    ReportFiled,
    ResolveRequest,
    SeverityChange,
    TriageDecision,
)
from stanch.models.incident import IncidentInput, IncidentState
from stanch.models.signals import Signal
from stanch.temporal.search_attributes import INCIDENT_SEVERITY, INCIDENT_STATUS
from stanch.trust import assertions

UPDATE_MODELS: dict[str, type[BaseModel]] = {
    "acknowledge": Acknowledgement,
    "approve": ApprovalDecision,
    "reject": ApprovalDecision,
    "set_severity": SeverityChange,
    "triage": TriageDecision,
    "decide": FailureDecision,
    "resolve": ResolveRequest,
    "record_report_filed": ReportFiled,
    "add_note": Note,
    "correct_answer": AnswerCorrection,
}
ACTIVITY_MODELS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "confirm_incident": (ConfirmInput, ConfirmResult),
    "snapshot_evidence": (EvidenceInput, EvidenceResult),
    "grade_severity": (GradeInput, GradeResult),
    "apply_containment": (ApplyInput, AppliedAction),
    "apply_rollback": (ApplyInput, AppliedAction),
    "apply_hotfix": (ApplyInput, AppliedAction),
    "verify_fix": (VerifyInput, VerifyResult),
    "lift_action": (UndoInput, AppliedAction),
    "open_review": (ReviewInput, ReviewResult),
    "notify": (Notification, NotifyResult),
}
ACTION_ACTIVITIES = {"apply_containment", "apply_rollback", "apply_hotfix", "lift_action"}
NO_ASSERTION = "no assertion from the Stanch API"


def occurrence_of(input: dict, started) -> str:
    """The workflow's own name for itself (workflows/record.py), what every assertion is bound
    to: carried by a run that took over a long history; named after its own run for a new
    occurrence (harm come back); else after the first run of the chain."""
    carried = (input.get("carried") or {}).get("state") or {}
    if carried.get("occurrence"):
        return carried["occurrence"]
    first_run = started.original_execution_run_id if input.get("recurrence") else started.first_execution_run_id
    return f"{input.get('incident_id', '')}@{first_run[:8]}"


async def build_timeline(history: WorkflowHistory, converter: DataConverter, trusted_keys: Iterable[str] = ()) -> Timeline:
    """The timeline of one run; `trusted_keys` names the decision keys the caller trusted."""
    return await _Reader(history, Decoder(converter), list(trusted_keys)).read()


class _Reader:
    """Reads a history event by event: `on_<kind>` for each kind of event that tells an auditor
    something (workflow tasks and markers do not), filling one Timeline."""

    def __init__(self, history: WorkflowHistory, decoder: Decoder, trusted_keys: list[str]) -> None:
        self.history = history
        self.decoder = decoder
        first = history.events[0]
        self.t = Timeline(
            workflow_id=history.workflow_id,
            run_id=history.run_id,
            started_at=event_time(first),
            events=len(history.events),
            trusted_keys=trusted_keys,
        )
        self.activities: dict[int, tuple[str, Any]] = {}  # scheduled event id -> (activity type, entry)
        self.updates: dict[str, DecisionEntry] = {}
        self.timers: dict[str, TimerEntry] = {}
        self.signal_ids: set[str] = set()
        self.signal_verdicts: dict[str, assertions.Verdict] = {}  # decision id -> the local activity's verdict

    async def read(self) -> Timeline:
        for event in self.history.events:
            attributes = event.WhichOneof("attributes")
            if attributes is None:
                continue
            handler = getattr(self, "on_" + attributes.removesuffix("_event_attributes"), None)
            if handler is not None:
                await handler(event, getattr(event, attributes))
        self.settle_signal_verdicts()
        self.t.milestones = milestones(self.t)
        self.t.warnings += self.decoder.problems + key_warnings(self.t)
        return self.t

    # --- start and end --------------------------------------------------------------------

    async def on_workflow_execution_started(self, event: HistoryEvent, a) -> None:
        input = as_dict(await self.decoder.one(a.input, IncidentInput, where=self.where(event, "input")))
        self.t.incident_id = input.get("incident_id", "")
        self.t.runbook = (input.get("runbook") or {}).get("name", "")
        self.t.runbook_sha256 = input.get("runbook_sha256", "")
        self.t.target = target_text(input.get("target"))
        self.t.dry_run = bool(input.get("dry_run"))
        self.t.drill = bool(input.get("drill"))
        self.t.continued_from = a.continued_execution_run_id or None
        self.t.occurrence = occurrence_of(input, a) if self.t.incident_id else ""

    async def on_workflow_execution_completed(self, event: HistoryEvent, a) -> None:
        self.end(event, "completed")
        state = as_dict(await self.decoder.one(a.result, IncidentState, where=self.where(event, "result")))
        self.t.final_status, self.t.final_severity = state.get("status"), state.get("severity")
        self.t.close_reason = state.get("close_reason", "")
        self.t.stages = [StageSummary(**stage) for stage in state.get("stages", [])]
        settle_signal_decisions(self.t, state)

    async def on_workflow_execution_failed(self, event: HistoryEvent, a) -> None:
        self.end(event, "failed")
        self.t.close_reason = await self.decoder.failure(a.failure)

    async def on_workflow_execution_terminated(self, event: HistoryEvent, a) -> None:
        self.end(event, "terminated")
        self.t.close_reason = f"terminated by {a.identity or 'unknown'}: {a.reason}"

    async def on_workflow_execution_timed_out(self, event: HistoryEvent, a) -> None:
        self.end(event, "timed out")

    async def on_workflow_execution_canceled(self, event: HistoryEvent, a) -> None:
        self.end(event, "canceled")

    async def on_workflow_execution_continued_as_new(self, event: HistoryEvent, a) -> None:
        self.end(event, "continued as new")
        self.t.close_reason = f"continued as new run {a.new_execution_run_id}"

    def end(self, event: HistoryEvent, how: str) -> None:
        self.t.execution, self.t.ended_at, self.t.ended_event_id = how, event_time(event), event.event_id

    # --- signals and decisions --------------------------------------------------------------

    async def on_workflow_execution_signaled(self, event: HistoryEvent, a) -> None:
        if a.signal_name == "add_signal":
            signal = as_dict(await self.decoder.one(a.input, Signal, where=self.where(event, "add_signal")))
            signal_id = signal.get("signal_id", "")
            self.t.signals.append(
                SignalEntry(
                    at=event_time(event),
                    event_id=event.event_id,
                    sender=signal.get("sender", ""),
                    signal_id=signal_id,
                    title=signal.get("title", ""),
                    source=signal.get("source", ""),
                    status=signal.get("status", ""),
                    severity_hint=signal.get("severity_hint"),
                    redelivery=signal_id in self.signal_ids,
                    client=a.identity,
                )
            )
            self.signal_ids.add(signal_id)
            if self.t.first_signal_at is None:
                self.t.first_signal_at = event_time(event)
            return
        hint = ApprovalDecision if a.signal_name == "approve_signal" else None
        decision = await self.decoder.one(a.input, hint, where=self.where(event, a.signal_name))
        nonce = decision.decision_id if isinstance(decision, ApprovalDecision) else ""
        entry = self.decision(event, a.signal_name, "signal", decision, nonce, a.identity)
        entry.outcome = "delivered"
        entry.message = "counted only if it passed the approval rules at that moment; a refusal is in the incident's own timeline"
        self.t.decisions.append(entry)

    async def on_workflow_execution_update_admitted(self, event: HistoryEvent, a) -> None:
        await self.update_requested(event, a.request)

    async def on_workflow_execution_update_accepted(self, event: HistoryEvent, a) -> None:
        await self.update_requested(event, a.accepted_request)

    async def update_requested(self, event: HistoryEvent, request) -> None:
        update_id, name = request.meta.update_id, request.input.name
        if update_id in self.updates:  # admitted, then accepted: one decision
            return
        decision = await self.decoder.one(request.input.args, UPDATE_MODELS.get(name), where=self.where(event, name))
        entry = self.decision(event, name, "update", decision, update_id, request.meta.identity)
        self.updates[update_id] = entry
        self.t.decisions.append(entry)

    async def on_workflow_execution_update_completed(self, event: HistoryEvent, a) -> None:
        entry = self.updates.get(a.meta.update_id)
        if entry is None:
            self.t.warnings.append(f"event {event.event_id}: update {a.meta.update_id} completed but was never accepted in this history")
            return
        entry.completed_event_id, entry.completed_at = event.event_id, event_time(event)
        if a.outcome.HasField("failure"):
            entry.outcome, entry.message = "refused", await self.decoder.failure(a.outcome.failure)
            return
        receipt = as_dict(await self.decoder.one(a.outcome.success, DecisionReceipt, where=self.where(event, "receipt")))
        entry.outcome = "accepted" if receipt.get("accepted", True) else "not acted on"
        entry.message = receipt.get("message", "")
        if entry.outcome == "accepted" and not entry.checked_here:
            # Acted on, so vouched for: by its validator (or, before verdicts were recorded, its handler).
            check = "its validator checked" if self.t.verdicts_in_history else "its handler checked"
            entry.verified = True
            entry.verification = (
                f"accepted by the workflow, which acts only on vouched decisions ({check} the signature); {entry.verification}"
            )

    async def on_marker_recorded(self, event: HistoryEvent, a) -> None:
        """The patch marker says the run records verdicts; a local activity's marker holds one."""
        if assertions.DECISION_VERDICT_PATCH.encode() in a.SerializeToString():
            self.t.verdicts_in_history = True
        if "result" in a.details and assertions.VERIFY_APPROVAL.encode() in a.SerializeToString():
            found = await self.decoder.one(a.details["result"], assertions.Verdict, where=self.where(event, "verdict"))
            if isinstance(found, assertions.Verdict) and found.nonce:
                self.signal_verdicts[found.nonce] = found

    def settle_signal_verdicts(self) -> None:
        """An approval signal whose key is not configured here: the verdict its local activity recorded."""
        for d in self.t.decisions:
            found = self.signal_verdicts.get(d.nonce) if d.name == "approve_signal" and d.nonce else None
            if d.name == "approve_signal" and self.t.verdicts_in_history and d.verification == NO_ASSERTION:
                # Nothing to check, so no check ran: it could never count.
                d.outcome, d.message = "refused", "it carries no assertion from the Stanch API: never counted"
            if found is None:
                continue
            if not d.checked_here:
                d.verified = found.vouched
                d.verification = "the workflow's check, recorded in history: " + ("vouched for" if found.vouched else found.reason)
            if not found.vouched:
                d.outcome, d.message = "refused", found.reason

    async def on_workflow_execution_update_rejected(self, event: HistoryEvent, a) -> None:
        entry = self.decision(
            event, a.rejected_request.input.name, "update", None, a.rejected_request.meta.update_id, a.rejected_request.meta.identity
        )
        entry.outcome, entry.message = "refused", await self.decoder.failure(a.failure)
        self.t.decisions.append(entry)

    def decision(self, event: HistoryEvent, name: str, via: str, decision: Any, nonce: str, client: str) -> DecisionEntry:
        verified, checked_here, verification = False, False, NO_ASSERTION
        if isinstance(decision, BaseModel):
            # The update handlers check the decision with `approve` set by the handler's name.
            if name in ("approve", "reject"):
                decision = decision.model_copy(update={"approve": name == "approve"})
            verified, checked_here, verification = self.check(decision, nonce)
            fields = decision.model_dump(mode="json", exclude={"assertion"})
        else:
            fields = {k: v for k, v in decision.items() if k != "assertion"} if isinstance(decision, dict) else {"value": decision}
        return DecisionEntry(
            at=event_time(event),
            event_id=event.event_id,
            name=name,
            via=via,
            who=str(fields.get("responder") or fields.get("approver") or fields.get("by") or ""),
            roles=list(fields.get("roles") or []),
            stage=str(fields.get("stage") or ""),
            what=describe(name, fields),
            nonce=nonce,
            verified=verified,
            checked_here=checked_here,
            verification=verification,
            fields=fields,
            client=client,
        )

    def check(self, decision: BaseModel, nonce: str) -> tuple[bool, bool, str]:
        """(verified, checked here, how): with the key configured here, the signature is checked;
        without it, the verdict is left to what history recorded (the update's completion, the
        signal's local activity)."""
        assertion = getattr(decision, "assertion", "") or ""
        if not assertion:
            return False, False, NO_ASSERTION
        scheme, kid = assertions.key_of(assertion)
        keys = assertions.held()
        if kid not in (keys.public if scheme == assertions.ED25519 else keys.legacy):
            return False, False, f"{scheme} key {kid!r} not configured here: the verdict is history's"
        reason = assertions.check(self.t.occurrence, nonce, decision, legacy=True) if self.t.occurrence else "no occurrence"
        if reason is None:
            return True, True, f"signature checked here with {scheme} key {kid!r}"
        return False, True, f"checked here: {reason}"

    # --- activities ---------------------------------------------------------------------------

    async def on_activity_task_scheduled(self, event: HistoryEvent, a) -> None:
        kind = a.activity_type.name
        hint = ACTIVITY_MODELS.get(kind, (None, None))[0]
        input = as_dict(await self.decoder.one(a.input, hint, where=self.where(event, f"{kind} input")))
        at = event_time(event)
        entry: ActionEntry | NotificationEntry | StepEntry
        if kind in ACTION_ACTIVITIES:
            entry = action_from_input(kind, input, at, event.event_id)
            self.t.actions.append(entry)
        elif kind == "notify":
            entry = NotificationEntry(
                at=at,
                event_id=event.event_id,
                kind=input.get("kind", ""),
                recipients=input.get("recipients", []),
                tier=input.get("tier", 0),
                message=input.get("message", ""),
            )
            self.t.notifications.append(entry)
        else:
            entry = StepEntry(at=at, event_id=event.event_id, activity=kind)
            self.t.steps.append(entry)
        self.activities[event.event_id] = (kind, entry)

    async def on_activity_task_started(self, event: HistoryEvent, a) -> None:
        if (found := self.activities.get(a.scheduled_event_id)) and isinstance(found[1], ActionEntry):
            found[1].attempts = a.attempt

    async def on_activity_task_completed(self, event: HistoryEvent, a) -> None:
        kind, entry = self.activities.get(a.scheduled_event_id, ("", None))
        if entry is None:
            return
        hint = ACTIVITY_MODELS.get(kind, (None, None))[1]
        result = as_dict(await self.decoder.one(a.result, hint, where=self.where(event, f"{kind} result")))
        self.finish(entry, event, "completed")
        if isinstance(entry, ActionEntry):
            key = result.get("undo_key") if kind == "lift_action" else result.get("idempotency_key")
            if key:
                entry.idempotency_key, entry.key_source = key, "result"
            entry.result = result.get("result") or {}
        elif isinstance(entry, NotificationEntry):
            entry.delivered = result.get("delivered", []) + result.get("already_delivered", [])
            entry.failed = result.get("failed", [])
        else:
            entry.summary, entry.result = step_summary(kind, result), result
            if kind == "snapshot_evidence" and result.get("location"):
                self.t.evidence.append(
                    EvidenceEntry(
                        at=event_time(event), event_id=event.event_id, sha256=result.get("sha256", ""), location=result["location"]
                    )
                )

    async def on_activity_task_failed(self, event: HistoryEvent, a) -> None:
        await self.activity_ended(event, a.scheduled_event_id, "failed", await self.decoder.failure(a.failure))

    async def on_activity_task_timed_out(self, event: HistoryEvent, a) -> None:
        why = await self.decoder.failure(a.failure) if a.HasField("failure") else "timed out"
        await self.activity_ended(event, a.scheduled_event_id, "timed out", why)

    async def on_activity_task_canceled(self, event: HistoryEvent, a) -> None:
        await self.activity_ended(event, a.scheduled_event_id, "canceled", "canceled by the workflow")

    async def activity_ended(self, event: HistoryEvent, scheduled: int, outcome: str, why: str) -> None:
        _, entry = self.activities.get(scheduled, ("", None))
        if entry is not None:
            self.finish(entry, event, outcome)
            if not isinstance(entry, NotificationEntry):
                entry.failure = why

    def finish(self, entry, event: HistoryEvent, outcome: str) -> None:
        entry.outcome = outcome
        if not isinstance(entry, NotificationEntry):
            entry.finished_at, entry.finished_event_id = event_time(event), event.event_id

    # --- timers and status --------------------------------------------------------------------

    async def on_timer_started(self, event: HistoryEvent, a) -> None:
        entry = TimerEntry(
            at=event_time(event),
            event_id=event.event_id,
            timer_id=a.timer_id,
            seconds=a.start_to_fire_timeout.ToTimedelta().total_seconds(),
        )
        self.timers[a.timer_id] = entry
        self.t.timers.append(entry)

    async def on_timer_fired(self, event: HistoryEvent, a) -> None:
        self.timer_ended(event, a.timer_id, "fired")

    async def on_timer_canceled(self, event: HistoryEvent, a) -> None:
        self.timer_ended(event, a.timer_id, "canceled")

    def timer_ended(self, event: HistoryEvent, timer_id: str, outcome: Literal["fired", "canceled"]) -> None:
        if entry := self.timers.get(timer_id):
            entry.outcome, entry.ended_at, entry.ended_event_id = outcome, event_time(event), event.event_id

    async def on_upsert_workflow_search_attributes(self, event: HistoryEvent, a) -> None:
        fields = a.search_attributes.indexed_fields
        status = search_attribute(fields[INCIDENT_STATUS.name]) if INCIDENT_STATUS.name in fields else None
        severity = search_attribute(fields[INCIDENT_SEVERITY.name]) if INCIDENT_SEVERITY.name in fields else None
        last = self.t.status_changes[-1] if self.t.status_changes else None
        if last is None or (status, severity) != (last.status, last.severity):
            self.t.status_changes.append(StatusChange(at=event_time(event), event_id=event.event_id, status=status, severity=severity))

    # --- helpers ------------------------------------------------------------------------------

    def where(self, event: HistoryEvent, what: str) -> str:
        return f"event {event.event_id} ({event_name(event)}) {what}"


def action_from_input(kind: str, input: dict[str, Any], at, event_id: int) -> ActionEntry:
    if kind == "lift_action":
        applied = input.get("applied") or {}
        return ActionEntry(
            at=at,
            event_id=event_id,
            activity=kind,
            stage="restore",
            index=applied.get("index"),
            kind=applied.get("kind", ""),
            target=target_text(applied.get("target")),
            undoes=f"{applied.get('stage', '?')} {applied.get('idempotency_key', '')}".strip(),
        )
    target = input.get("target")
    entry = ActionEntry(
        at=at,
        event_id=event_id,
        activity=kind,
        stage=input.get("stage", ""),
        index=input.get("index"),
        kind=(input.get("action") or {}).get("kind", ""),
        target=target_text(target),
    )
    if entry.index is None:  # without its index the key cannot be rebuilt
        return entry
    try:  # the key the activity sends (stanch/targets/steps.py), rebuilt in case it never completed
        owner = input.get("occurrence") or input["incident_id"]
        entry.idempotency_key = idempotency_key(owner, entry.stage, entry.index, TargetRef.model_validate(target))
        entry.key_source = "computed"
    except (KeyError, TypeError, ValueError):
        pass
    return entry


def as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value if isinstance(value, dict) else {}


def target_text(target: Any) -> str:
    if isinstance(target, dict) and target.get("model"):
        return str(TargetRef.model_validate(target))
    return ""
