"""Open incidents and the approvals they wait for, read from Temporal at scrape time for `GET /metrics`.

The API keeps no state of its own: what is open lives in Temporal. So each scrape (at most
once every `CACHE_SECONDS`, however many Prometheus servers scrape) lists the running incident
workflows from visibility and counts them by their search attributes:

    stanch_incidents_open{runbook,severity,status}        running incidents (a run that continued
                                                          as new is not counted: its successor is)
    stanch_approvals_waiting{runbook,severity}            incidents with a step waiting for approval
    stanch_approval_oldest_wait_seconds{runbook,severity} since the oldest of those was requested
    stanch_approvals_unchecked{reason}                    incidents that may wait for an approval
                                                          but whose state was not read this time
    stanch_visibility_up                                  1 when the numbers above are current

Whether an incident waits for an approval is not in its search attributes: only its state
says. So the incidents whose status is one an approval gate can hold (`MAY_WAIT_FOR_APPROVAL`)
are asked through the workflow's `state` query: the oldest-opened first, at most
`QUERIED_AT_MOST` per refresh, together within `QUERY_BUDGET_SECONDS`. The others are counted
in `stanch_approvals_unchecked` (reason `over_cap`, or `query_failed` when the query was not
answered: no worker, a state too large to send), so a dashboard can tell "none waiting" from
"not looked at". Visibility GROUP BY would be cheaper, but Temporal (1.32) groups by
ExecutionStatus only, so the listing is counted here; at most `LISTED_AT_MOST` are listed.

A Temporal that cannot be reached never fails the scrape: the incident series are left out,
`stanch_visibility_up` is 0, and the intake's own counters are served as always.

Label values are search attribute values the workflow writes (runbook names, the severity and
status enums), "unknown" where an incident carries none (search attribute upserts switched off).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel
from temporalio.client import Client, WorkflowExecution

from stanch.models.incident import WORKFLOW_NAME, IncidentStatus, PendingApproval
from stanch.temporal import search_attributes as sa

log = logging.getLogger(__name__)

CACHE_SECONDS = 5.0  # two Prometheus servers scraping every 15 s cost one visibility read, not two
LIST_BUDGET_SECONDS = 4.0  # listing (and connecting first, if need be): well inside a 10 s scrape timeout
QUERY_BUDGET_SECONDS = 3.0  # all of a refresh's state queries together
QUERY_TIMEOUT = timedelta(seconds=2)  # one state query
QUERIED_AT_MOST = 50  # state queries per refresh: each one costs the worker a query task
QUERIES_AT_ONCE = 8
LISTED_AT_MOST = 10_000
UNKNOWN = "unknown"

# Statuses in which a gate (contain, rollback, hotfix, restore) can be waiting for approval:
# each stage's status is set only once its gate has passed, so the wait shows the one before.
MAY_WAIT_FOR_APPROVAL = frozenset(
    {IncidentStatus.confirmed, IncidentStatus.containing, IncidentStatus.rolling_back, IncidentStatus.hotfixing, IncidentStatus.verifying}
)

RUNNING_INCIDENTS = f"WorkflowType = '{WORKFLOW_NAME}' AND ExecutionStatus = 'Running'"


class PendingApprovalView(BaseModel):
    """The one part of the `state` query's answer read here (the rest is ignored)."""

    pending_approval: PendingApproval | None = None


@dataclass(frozen=True)
class OpenIncident:
    id: str
    run_id: str | None
    runbook: str
    severity: str
    status: str
    opened_at: datetime

    @classmethod
    def from_execution(cls, execution: WorkflowExecution) -> OpenIncident:
        attributes = execution.typed_search_attributes
        return cls(
            id=execution.id,
            run_id=execution.run_id,
            runbook=attributes.get(sa.INCIDENT_RUNBOOK) or UNKNOWN,
            severity=attributes.get(sa.INCIDENT_SEVERITY) or UNKNOWN,
            status=attributes.get(sa.INCIDENT_STATUS) or UNKNOWN,
            opened_at=attributes.get(sa.INCIDENT_OPENED_AT) or execution.start_time,
        )


@dataclass
class IncidentCounts:
    """One refresh's numbers; `up` False when Temporal could not be read (nothing else is known)."""

    up: bool = False
    open: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (runbook, severity, status)
    waiting: Counter[tuple[str, str]] = field(default_factory=Counter)  # (runbook, severity)
    oldest_wait_seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    unchecked: Counter[str] = field(default_factory=Counter)  # reason -> incidents


class IncidentGauges(Collector):
    """A prometheus_client collector over Temporal visibility: `await refresh()` before each
    exposition (cached for `cache_seconds`), then the registry collects the last numbers."""

    def __init__(
        self,
        client: Callable[[], Awaitable[Client]],
        *,
        cache_seconds: float = CACHE_SECONDS,
        queried_at_most: int = QUERIED_AT_MOST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._cache_seconds = cache_seconds
        self._queried_at_most = queried_at_most
        self._clock = clock
        self._lock = asyncio.Lock()
        self._refreshed_at: float | None = None
        self.counts = IncidentCounts()

    async def refresh(self) -> IncidentCounts:
        """The numbers, read anew unless the last read is younger than `cache_seconds`. Concurrent
        scrapes wait for one read. Never raises: a failed read is `up=False`."""
        async with self._lock:
            if self._refreshed_at is not None and self._clock() - self._refreshed_at < self._cache_seconds:
                return self.counts
            was_up = self.counts.up
            try:
                self.counts = await self._read()
            except Exception as err:  # whatever the SDK raises: /metrics must answer anyway
                if was_up or self._refreshed_at is None:  # said once per outage, not every scrape
                    log.warning("metrics: cannot read open incidents from Temporal: %s", err or type(err).__name__)
                self.counts = IncidentCounts(up=False)
            self._refreshed_at = self._clock()
            return self.counts

    async def _read(self) -> IncidentCounts:
        async with asyncio.timeout(LIST_BUDGET_SECONDS):
            client = await self._client()
            executions = [execution async for execution in client.list_workflows(RUNNING_INCIDENTS, limit=LISTED_AT_MOST, page_size=1000)]
        if len(executions) >= LISTED_AT_MOST:
            log.warning("metrics: more than %d incidents are open; only the first %d are counted", LISTED_AT_MOST, LISTED_AT_MOST)
        incidents = [OpenIncident.from_execution(execution) for execution in executions]
        counts = IncidentCounts(up=True)
        for incident in incidents:
            counts.open[(incident.runbook, incident.severity, incident.status)] += 1
            counts.waiting[(incident.runbook, incident.severity)] += 0  # a series for every open combination
        may_wait = sorted((i for i in incidents if i.status in MAY_WAIT_FOR_APPROVAL), key=lambda i: i.opened_at)
        to_query, over_cap = may_wait[: self._queried_at_most], may_wait[self._queried_at_most :]
        counts.unchecked["over_cap"] = len(over_cap)
        pending = await self._pending_approvals(client, to_query)
        counts.unchecked["query_failed"] = sum(1 for incident in to_query if incident.id not in pending)
        now = datetime.now(UTC)
        for incident in to_query:
            approval = pending.get(incident.id)
            if approval is None:
                continue
            key = (incident.runbook, incident.severity)
            counts.waiting[key] += 1
            waited = max(0.0, (now - approval.requested_at).total_seconds())
            counts.oldest_wait_seconds[key] = max(waited, counts.oldest_wait_seconds.get(key, 0.0))
        return counts

    async def _pending_approvals(self, client: Client, incidents: list[OpenIncident]) -> dict[str, PendingApproval | None]:
        """Incident id -> its pending approval (None: nothing waits), for those whose state query
        answered within the budget."""
        limit = asyncio.Semaphore(QUERIES_AT_ONCE)

        async def ask(incident: OpenIncident) -> PendingApproval | None:
            async with limit:
                handle = client.get_workflow_handle(incident.id, run_id=incident.run_id)
                view = await handle.query("state", result_type=PendingApprovalView, rpc_timeout=QUERY_TIMEOUT)
                return view.pending_approval

        tasks = {incident.id: asyncio.create_task(ask(incident)) for incident in incidents}
        if not tasks:
            return {}
        await asyncio.wait(tasks.values(), timeout=QUERY_BUDGET_SECONDS)
        answered: dict[str, PendingApproval | None] = {}
        for incident_id, task in tasks.items():
            if not task.done():
                task.cancel()
            elif task.exception() is None:
                answered[incident_id] = task.result()
            else:
                log.debug("metrics: state query of %s failed: %s", incident_id, task.exception())
        return answered

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.counts
        yield GaugeMetricFamily(
            "stanch_visibility_up",
            "1 when open incidents were read from Temporal visibility; 0: the incident series are missing.",
            value=int(counts.up),
        )
        if not counts.up:
            return
        yield _gauge(
            "stanch_incidents_open", "Running incidents by runbook, severity and status.", ["runbook", "severity", "status"], counts.open
        )
        yield _gauge("stanch_approvals_waiting", "Incidents with a step waiting for approval.", ["runbook", "severity"], counts.waiting)
        yield _gauge(
            "stanch_approval_oldest_wait_seconds",
            "Seconds since the oldest approval still waiting was requested.",
            ["runbook", "severity"],
            counts.oldest_wait_seconds,
        )
        yield _gauge(
            "stanch_approvals_unchecked",
            f"Incidents that may wait for an approval whose state was not read this time: over_cap (more than {self._queried_at_most}"
            " per refresh) or query_failed.",
            ["reason"],
            {(reason,): number for reason, number in counts.unchecked.items()},
        )


def _gauge(name: str, documentation: str, labels: list[str], values: dict[Any, float] | Counter[Any]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for label_values, value in sorted(values.items()):
        family.add_metric(list(label_values), value)
    return family
