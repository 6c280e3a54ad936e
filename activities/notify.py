"""Notify: tell people over every channel their names map to, each channel once per notification.

A channel that fails is reported in `NotifyResult.failed` and the activity still succeeds:
one broken Slack webhook must never hold up containment. Only when no channel at all carried
the notification does the activity fail (retryably), so Temporal tries again and, after the
last attempt, the workflow notes the failure in the timeline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.metrics import count_notification
from stanch.models.activity_io import Notification, NotifyResult
from stanch.notify import (
    BrokenChannel,
    Channel,
    ChannelError,
    DeliveryLedger,
    NotifyConfig,
    deliver,
    load_notify_config,
)
from stanch.notify.channels import CONSOLE, PartialDelivery, scrub
from stanch.stores.records import RecordsError
from stanch.temporal.activity_deps import ActivityDeps

Deliver = Callable[[Notification, Channel], Awaitable[None]]
logger = logging.getLogger("stanch.notify")


class NotifyActivities:
    def __init__(self, deps: ActivityDeps, config: NotifyConfig | None = None, deliver_to: Deliver = deliver) -> None:
        """Read the channel file once per worker; a malformed file stops the worker here, at start."""
        self.deps = deps
        self.config = config or load_notify_config(deps.settings)
        self.ledger = DeliveryLedger(deps.records)  # shared by every worker: a retry elsewhere skips what this one sent
        self.deliver_to = deliver_to
        for channel in self.config.broken:
            logger.warning("notification channel %s will fail every delivery: %s", channel.name, channel.problem)

    @activity.defn(name="notify")
    async def deliver(self, notification: Notification) -> NotifyResult:
        # A rehearsal never pages anyone: its notifications are written to the console log only.
        channels = [self.config.channels[CONSOLE]] if notification.dry_run else self.config.channels_for(notification.recipients)
        # The ledger may be a database on another host: its round trips stay off the event loop.
        done_before = await asyncio.to_thread(self.ledger.delivered, notification.dedup_id)
        pending = [channel for channel in channels if channel.name not in done_before]
        outcomes = await asyncio.gather(*(self._deliver_once(notification, channel) for channel in pending))
        problems = {channel.name: problem for channel, (problem, _) in zip(pending, outcomes, strict=True) if problem}
        for channel in pending:  # what this attempt did; a channel the ledger says got it before is not sent again
            count_notification(channel.name, "failed" if channel.name in problems else "delivered")
        gaps = {channel.name: gap for channel, (_, gap) in zip(pending, outcomes, strict=True) if gap}
        result = NotifyResult(
            delivered=[channel.name for channel in channels if channel.name not in problems],
            failed=[f"{name}: {problem}" for name, problem in {**problems, **gaps}.items()],
            already_delivered=[channel.name for channel in channels if channel.name in done_before],
        )
        if problems and not result.delivered:
            # Nothing reached anyone. Retrying cannot mend a channel whose secret is missing,
            # so only that case is final; anything else may be a passing outage.
            misconfigured = all(isinstance(channel, BrokenChannel) for channel in pending)
            raise ApplicationError(
                f"no channel delivered {notification.kind} for {notification.incident_id}: " + "; ".join(result.failed),
                result.model_dump(mode="json"),
                type="NotificationChannelsMisconfigured" if misconfigured else "NotificationUndelivered",
                non_retryable=misconfigured,
            )
        return result

    async def _deliver_once(self, notification: Notification, channel: Channel) -> tuple[str | None, str | None]:
        """Deliver and record it in the ledger. Returns (why it failed, who it missed although
        it went out, or that the ledger could not record it); both None when everyone got it
        and the ledger knows."""
        gap = None
        try:
            # A per-channel deadline: one hanging SMTP server must not use up the others' time.
            async with asyncio.timeout(channel.timeout_seconds + 1):
                await self.deliver_to(notification, channel)
        except PartialDelivery as error:
            gap = scrub(str(error), channel)
        except ChannelError as error:
            return scrub(str(error), channel), None
        except TimeoutError:
            return f"no answer within {channel.timeout_seconds:g} s", None
        except Exception as error:
            return scrub(f"{type(error).__name__}: {error}", channel), None
        try:
            await asyncio.to_thread(self.ledger.record, notification.dedup_id, channel.name, notification.incident_id)
        except Exception as error:  # a RecordsError (the database had a blip), or anything else
            # It went out: failing now would retry the activity and page this channel again. The
            # gap is reported instead; only a retry after some other failure could repeat it.
            reason = str(error) if isinstance(error, RecordsError) else f"{type(error).__name__}: {error}"
            logger.warning("notification %s went out on %s but is not in the ledger: %s", notification.dedup_id, channel.name, reason)
            gap = "; ".join(filter(None, [gap, f"delivered, not recorded: {reason}"]))
        return None, gap
