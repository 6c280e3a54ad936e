"""`stanch worker` running stand-in workflows: the process, its signal handling, its drain and
its worker versioning are the real ones; only the workflows and activities it runs are replaced.

Run as `python -m tests.e2e.stand_in_worker worker`.
- DrainStandIn runs one slow activity, which writes `started` and then `finished` into
  $DRAIN_MARKERS, so a test knows when to send SIGTERM and what completed.
- BuildStandIn waits for a `go` signal, then asks an activity which build runs it
  ($STANCH_BUILD_ID): which worker version an incident stayed on.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow

SLOW_SECONDS = 3.0


@activity.defn(name="slow_step")
async def slow_step() -> str:
    markers = Path(os.environ["DRAIN_MARKERS"])
    (markers / "started").write_text(activity.info().workflow_id)
    await asyncio.sleep(SLOW_SECONDS)  # not cancelled by SIGTERM: the drain lets it finish
    (markers / "finished").write_text(activity.info().workflow_id)
    return f"finished after {SLOW_SECONDS:.0f}s"


@workflow.defn(name="DrainStandIn")
class DrainStandIn:
    @workflow.run
    async def run(self) -> str:
        return await workflow.execute_activity(slow_step, start_to_close_timeout=timedelta(seconds=60))


@activity.defn(name="which_build")
async def which_build() -> str:
    return os.environ.get("STANCH_BUILD_ID", "unversioned")


@workflow.defn(name="BuildStandIn")
class BuildStandIn:
    def __init__(self) -> None:
        self.go = False

    @workflow.signal
    def proceed(self) -> None:
        self.go = True

    @workflow.run
    async def run(self) -> str:
        started_on = await workflow.execute_activity(which_build, start_to_close_timeout=timedelta(seconds=30))
        await workflow.wait_condition(lambda: self.go)
        finished_on = await workflow.execute_activity(which_build, start_to_close_timeout=timedelta(seconds=30))
        return f"{started_on}->{finished_on}"


def main() -> None:
    import workers.main
    from stanch.cli.main import run

    workers.main.WORKFLOWS = [DrainStandIn, BuildStandIn]
    workers.main.all_activities = lambda deps: [slow_step, which_build]  # type: ignore[assignment]
    sys.argv = ["stanch", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
