"""Bisect: which change in the exposure window brought the harm (stanch.gate.bisect does the work).

A gateway out of reach fails the activity (retried a little): the incident notes that bisection
could not run and goes on containing. Everything else ends in a cause, or a note saying why
none was named.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from stanch.gate.bisect import BisectionCannotRun, bisect_changes
from stanch.models.bisection import BisectInput, Cause
from stanch.targets.base import TargetError
from stanch.temporal.activity_deps import ActivityDeps, as_application_error


class BisectActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="bisect_changes")
    async def bisect_changes(self, input: BisectInput) -> Cause:
        try:
            return await bisect_changes(input, self.deps.targets, heartbeat=activity.heartbeat)
        except BisectionCannotRun as error:
            raise ApplicationError(f"bisection could not run: {error}", type="TargetUnavailable") from None
        except TargetError as error:
            raise as_application_error(error, "bisection") from None
