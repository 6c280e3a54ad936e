"""How long each activity may take and how it retries, in one place.

Reads and probes retry a few times and then a human decides; mutations retry with backoff, and
what retrying cannot fix (an invalid action, an unknown target) fails at once.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

READ_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=20), maximum_attempts=5)
ACTION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=20),
    maximum_attempts=5,
    non_retryable_error_types=["InvalidAction", "UnknownTarget"],
)
NOTIFY_RETRY = RetryPolicy(maximum_attempts=3)

QUICK_TIMEOUT = timedelta(seconds=30)
ACTION_TIMEOUT = timedelta(seconds=30)
LONG_ACTION_HEARTBEAT = timedelta(seconds=10)
PROBE_TIMEOUT = timedelta(minutes=10)  # N samples of each case; heartbeats say it is alive
FINETUNE_TIMEOUT = timedelta(hours=24)  # real fine-tunes take hours; the heartbeat timeout finds a dead worker
VERIFY_TIMEOUT = timedelta(minutes=30)  # the regression suite grows with every incident
VERIFY_HEARTBEAT = timedelta(seconds=60)
