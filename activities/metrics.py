"""Stanch's own worker metrics, counted where the work is done: actions on targets, notifications.

Counted through the activity's metric meter, so they are served with the Temporal SDK's
metrics at STANCH_WORKER_METRICS_ADDRESS (the runtime adds `_total`, and the namespace, task
queue and activity type as labels); without that address the meter counts nothing.

    stanch_actions_total{adapter,action,result}
        adapter: the kind of the target acted on (gateway, http, mlflow, flagd, ...; "unknown"
        for a name no target is configured under); action: the runbook step's kind;
        result: applied (a step applied), undone (an action undone on restore), failed (an
        attempt to apply or undo that raised: each failed attempt counts, so a step that fails
        twice and then applies counts failed 2 and applied 1). A rehearsal (dry run) changes
        nothing and is not counted. Production's actions only: a drill's are counted below.
    stanch_drill_actions_total{adapter,action,result}
        The same count for the actions of drills (`stanch drill`: the target model is a drill
        route), kept out of stanch_actions_total so that a drill's failed step never pages as
        StanchActionsFailing, a drill's success never hides a production failure from it, and the
        dashboard's actions panels show what was done to production.
    stanch_notifications_total{channel,result}
        channel: the channel's name in the notify config; result: delivered (the notification
        went out on that channel: once per notification and channel, since the delivery ledger
        keeps a retry from sending it again) or failed (an attempt on that channel failed: a
        retry that then delivers counts failed 1 and delivered 1, which is what the channel did).

Every label value is configuration (targets file, runbooks, notify config), never text from an
alert: the number of series stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Literal

from temporalio import activity
from temporalio.common import MetricMeter

from stanch.models.activity_io import ApplyInput
from stanch.models.incident import is_drill_route
from stanch.targets.registry import TargetRegistry
from stanch.targets.steps import step_target

ACTIONS = "stanch_actions"
DRILL_ACTIONS = "stanch_drill_actions"
NOTIFICATIONS = "stanch_notifications"
UNKNOWN_ADAPTER = "unknown"


def _meter() -> MetricMeter:
    # Activity code called outside an activity (a CLI, a plain unit test) counts nothing.
    return activity.metric_meter() if activity.in_activity() else MetricMeter.noop


def count_notification(channel: str, result: Literal["delivered", "failed"]) -> None:
    counter = _meter().create_counter(NOTIFICATIONS, "Notifications by channel: delivered, or a failed attempt on that channel.")
    counter.add(1, {"channel": channel, "result": result})


def count_action(adapter: str, action: str, result: Literal["applied", "failed", "undone"], *, drill: bool = False) -> None:
    if drill:
        counter = _meter().create_counter(DRILL_ACTIONS, "Drills' runbook actions on their drill routes: applied, undone, failed attempts.")
    else:
        counter = _meter().create_counter(
            ACTIONS, "Runbook actions on targets by adapter kind and action: applied, undone, failed attempts."
        )
    counter.add(1, {"adapter": adapter, "action": action, "result": result})


def adapter_kind(targets: TargetRegistry, name: str) -> str:
    """The kind of the target configured under `name` (its adapter), for a label."""
    return targets.kind_of(name) if name in targets else UNKNOWN_ADAPTER


@contextmanager
def counted_action(
    targets: TargetRegistry,
    target_name: str,
    action: str,
    *,
    done: Literal["applied", "undone"],
    dry_run: bool = False,
    model: str | None = None,
) -> Iterator[None]:
    """Count the action `done` when the block finishes, `failed` when it raises. A cancelled
    attempt (the workflow aborted, the worker stops) is no failure of the target: not counted.
    `model`: the model acted on; on a drill route the action is a drill's, counted apart."""
    adapter = adapter_kind(targets, target_name)
    drill = is_drill_route(model)
    try:
        yield
    except Exception:  # (a cancellation is a BaseException: it passes uncounted)
        if not dry_run:
            count_action(adapter, action, "failed", drill=drill)
        raise
    if not dry_run:
        count_action(adapter, action, done, drill=drill)


def counted_step(targets: TargetRegistry, input: ApplyInput) -> AbstractContextManager[None]:
    """`counted_action` for a runbook step being applied: its target, kind, dry run and model."""
    target = step_target(input)
    return counted_action(targets, target.adapter, input.action.kind, done="applied", dry_run=input.dry_run, model=target.model)
