"""The incident's clocks, each a durable timer: paging and escalation until someone acknowledges,
the regulatory report clock, and the one way every gate waits for a person — reminding the next
escalation tier each time the wait runs over.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from temporalio import workflow

from workflows.failures import HandOver
from workflows.notifications import Notifier
from workflows.objectives import Milestones
from workflows.record import Record

with workflow.unsafe.imports_passed_through():
    from stanch.models.signals import Severity


class Clocks:
    def __init__(self, record: Record, notifier: Notifier) -> None:
        self.record = record
        self.notifier = notifier

    @property
    def milestones(self) -> Milestones:
        return Milestones(self.record)

    async def wait_for_a_person(
        self,
        done: Callable[[], bool],
        every: Callable[[], timedelta],
        overdue: str,
        *,
        act_after_first_reminder: bool = False,
        gate: str = "",
        stage: str = "",
        waited_for: Callable[[bool], str] = lambda decided: "",
    ) -> bool:
        """Wait durably until `done()`. Each time `every()` passes without it, the next escalation
        tier hears `overdue`. True once done; False if the runbook says to act after one reminder.
        A wait is where a long history hands over to a new run (HandOver), which waits on.

        The wait is recorded as `gate` (of `stage`), waiting for `waited_for(decided)`: the time
        people took, which the time-to-contain breakdown names."""
        memory = self.record.memory
        # Since when this wait (or its last reminder) runs: a continued run keeps the wait's clock.
        memory.waiting_since = memory.waiting_since or workflow.now()
        memory.person_wait_began = memory.person_wait_began or workflow.now()
        decided = True
        while not done():
            try:
                left = every() - (workflow.now() - memory.waiting_since)
                await workflow.wait_condition(lambda: done() or self.record.history_is_long(), timeout=max(left, timedelta(seconds=1)))
                if not done():
                    raise HandOver()
            except TimeoutError:
                memory.waiting_since = workflow.now()
                await self.notifier.send("escalation", self.record.next_tier_recipients(), overdue)
                if act_after_first_reminder:
                    decided = False
                    break
        memory.waiting_since = None
        if gate:
            self.milestones.waited(gate, stage, memory.person_wait_began, waited_for(decided))
        memory.person_wait_began = None
        return decided

    async def escalate_until_acknowledged(self) -> None:
        """Escalate tier by tier on the policy's schedule, then re-notify every ack SLA."""
        record, state = self.record, self.record.state

        def acknowledged() -> bool:
            return state.acknowledged_at is not None or record.is_over

        while not acknowledged():
            self.milestones.acknowledgement_clock()  # the ack SLA may have passed meanwhile
            tiers = record.policy.escalation
            tier = state.escalation_tier
            if tier < len(tiers):
                due, recipients = state.opened_at + tiers[tier].after, tiers[tier].notify
            else:
                due = record.memory.last_escalation_at + record.policy.ack_sla
                recipients = tiers[-1].notify if tiers else ["oncall"]
            wait = due - workflow.now()
            if wait > timedelta(0):

                def acknowledged_or_regraded(was: Severity = state.severity) -> bool:
                    return acknowledged() or state.severity != was

                try:
                    # A severity change re-plans the schedule with the new policy's tiers.
                    await workflow.wait_condition(acknowledged_or_regraded, timeout=wait)
                    continue
                except TimeoutError:
                    pass
            state.escalation_tier = tier + 1
            record.memory.last_escalation_at = workflow.now()
            record.note("escalation", f"not acknowledged: escalating to tier {tier + 1} {recipients}")
            await self.notifier.send("escalation", recipients, f"{state.id} is not acknowledged", tier=tier + 1)
        self.milestones.acknowledgement_clock()

    async def page_when_harm_returns(self) -> None:
        """A firing signal after containment was lifted pages on-call at once, whatever the stage."""
        record, memory = self.record, self.record.memory
        while not record.is_over:
            await workflow.wait_condition(lambda: len(memory.recurring) > memory.recurrences_paged or record.is_over)
            if record.is_over:
                return
            signal = memory.recurring[memory.recurrences_paged]
            memory.recurrences_paged = len(memory.recurring)
            message = f"{record.state.id}: harm reported again while {record.state.status} ({signal.title or signal.signal_id})"
            await self.notifier.send("page", ["oncall"], f"{message}; protections still in place stay, a new occurrence opens")

    async def run_report_clock(self) -> None:
        """Art. 73 report clock: reminders widen as the deadline nears, until the report is filed."""
        state, clock = self.record.state, self.record.state.regulatory
        reminder_every = self.record.runbook.regulatory.reminder_every
        memory = self.record.memory
        while clock.filed is None and clock.deadline is not None:  # a serious incident always has a deadline
            deadline = clock.deadline
            remaining = deadline - workflow.now()
            # When the next reminder is due: a continued run keeps the clock's rhythm.
            memory.next_report_reminder_at = memory.next_report_reminder_at or workflow.now() + reminder_every
            until_reminder = max(memory.next_report_reminder_at - workflow.now(), timedelta(seconds=1))
            wait = min(until_reminder, remaining) if remaining > timedelta(0) else until_reminder

            def filed_or_moved(was: datetime = deadline) -> bool:
                return clock.filed is not None or clock.deadline != was

            try:
                # A shorter clock (a death, widespread harm) moves the deadline: re-plan at once.
                await workflow.wait_condition(filed_or_moved, timeout=wait)
                memory.next_report_reminder_at = None  # a moved deadline re-plans the reminders from now
                continue
            except TimeoutError:
                memory.next_report_reminder_at = None
                clock.reminders_sent += 1
                deadline = clock.deadline or deadline  # a re-grade in this same task may have moved it
                overdue = workflow.now() >= deadline
                recipients = (
                    ["safety"] + (["incident-commander"] if remaining <= timedelta(days=2) else []) + (["executive"] if overdue else [])
                )
                message = f"{state.id}: serious-incident report {'OVERDUE since' if overdue else 'due'} {deadline.isoformat()}"
                self.record.note("regulatory", message)
                await self.notifier.send("report_reminder", recipients, message, tier=clock.reminders_sent)
