"""`stanch worker` running a stand-in workflow whose one activity is slow: the process, its
signal handling and its drain are the real ones; only what it runs is replaced.

Run as `python -m tests.e2e.drain_worker worker`. The activity writes `started` and then
`finished` into $DRAIN_MARKERS, so a test knows when to send SIGTERM and what completed.
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


def main() -> None:
    import workers.main
    from stanch.cli.main import run

    workers.main.WORKFLOWS = [DrainStandIn]
    workers.main.all_activities = lambda deps: [slow_step]  # type: ignore[assignment]
    sys.argv = ["stanch", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
