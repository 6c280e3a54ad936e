"""Telling people: every page, reminder and escalation goes through `Notifier.send`.

A channel that fails never stops the incident: the failure goes to the timeline.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows.failures import cause_of
from workflows.policies import NOTIFY_RETRY, QUICK_TIMEOUT
from workflows.record import Record

with workflow.unsafe.imports_passed_through():
    from activities.notify import NotifyActivities


class Notifier:
    def __init__(self, record: Record) -> None:
        self.record = record

    async def send(self, kind: str, recipients: list[str], message: str, tier: int = 0) -> None:
        notification = self.record.notification(kind, recipients, message, tier)
        self.record.memory.in_flight += 1  # a run hands over only once no page is on its way
        try:
            result = await workflow.execute_activity_method(
                NotifyActivities.deliver, notification, start_to_close_timeout=QUICK_TIMEOUT, retry_policy=NOTIFY_RETRY
            )
        except ActivityError as failure:
            self.record.note("notification", f"{kind} to {', '.join(recipients)} failed: {cause_of(failure)}")
            return
        finally:
            self.record.memory.in_flight -= 1
        channels = ", ".join(result.delivered + result.already_delivered)
        # What was sent, as sent: a drill's page says [DRILL].
        self.record.note("notification", f"{kind} → {', '.join(recipients)} via {channels}: {notification.message}")
        if result.failed:
            self.record.note("notification", f"{kind} to {', '.join(recipients)}: not delivered by {'; '.join(result.failed)}")
