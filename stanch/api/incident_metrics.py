"""Open incidents and the approvals they wait for, read from Temporal at scrape time for `GET /metrics`.

The API keeps no state of its own: what is open lives in Temporal. So each scrape (at most
once every `CACHE_SECONDS`, however many Prometheus servers scrape) lists the running incident
workflows from visibility and counts them by their search attributes:

    stanch_incidents_open{runbook,severity,status}        running incidents (a run that continued
                                                          as new is not counted: its successor is)
    stanch_approvals_waiting{runbook,severity}            incidents with a step waiting for approval
    stanch_approval_oldest_wait_seconds{runbook,severity} since the oldest of those was requested
    stanch_incidents_unacknowledged_past_sla{runbook,severity}
                                                          incidents whose ack SLA passed with
                                                          nobody acknowledging
    stanch_incidents_unchecked{reason}                    open incidents whose attention was not
                                                          read this time
    stanch_visibility_up                                  1 when the numbers above are current

Rehearsals (`stanch runbooks plan --dry-run`: workflow ids starting `dryrun-`, or an incident
whose `attention` answer says `dry_run`) and drills (`stanch drill`: the target a drill route)
are real workflows but no one's incident: they are left out of every number.

Whether an incident waits for an approval, or is past its ack SLA unacknowledged, is not in its
search attributes: only the workflow knows. So open incidents are asked through the workflow's
small `attention` query (status, severity, pending approval, acknowledged, when the ack is due):
the oldest-opened first, at most `QUERIED_AT_MOST` per refresh, together within
`QUERY_BUDGET_SECONDS`. A workflow running an older build rejects that query; it is asked the
full `state` query instead, which tells its pending approval but not its ack deadline. The
others are counted in `stanch_incidents_unchecked` (reason `over_cap`, or `query_failed` when the
query was not answered: no worker, a busy one), so a dashboard can tell "none waiting" from "not
looked at". Visibility GROUP BY would be cheaper, but Temporal (1.32) groups by ExecutionStatus
only, so the listing is counted here; at most `LISTED_AT_MOST` are listed.

These reads go through a client without the tracing interceptor (`without_tracing`): a scrape
every 15 s would otherwise fill trace search with query spans tagged with incident ids.

Every API replica serves the same numbers (they are Temporal's, not the replica's): dashboards
and rules take `max by (<every label>)` across instances before summing.

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
from temporalio.client import Client, WorkflowExecution, WorkflowQueryFailedError
from temporalio.contrib.opentelemetry import TracingInterceptor

from stanch.models.incident import WORKFLOW_NAME, Attention, IncidentStatus, PendingApproval, is_drill_route
from stanch.models.signals import Severity
from stanch.temporal import search_attributes as sa

log = logging.getLogger(__name__)

CACHE_SECONDS = 5.0  # two Prometheus servers scraping every 15 s cost one visibility read, not two
LIST_BUDGET_SECONDS = 4.0  # listing (and connecting first, if need be): well inside a 10 s scrape timeout
QUERY_BUDGET_SECONDS = 3.0  # all of a refresh's queries together
QUERY_TIMEOUT = timedelta(seconds=2)  # one query
QUERIED_AT_MOST = 50  # queries per refresh: each one costs the worker a query task
QUERIES_AT_ONCE = 8
LISTED_AT_MOST = 10_000
UNKNOWN = "unknown"
REHEARSAL_PREFIX = "dryrun-"  # `stanch runbooks plan --dry-run` names its incidents so (stanch/cli/plan.py)
ATTENTION_QUERY = "attention"  # small: what needs a person now
STATE_QUERY = "state"  # the whole incident: asked only of a build without `attention`

RUNNING_INCIDENTS = f"WorkflowType = '{WORKFLOW_NAME}' AND ExecutionStatus = 'Running'"


def past_ack_sla(attention: Attention, now: datetime) -> bool:
    return not attention.acknowledged and attention.ack_due_at is not None and attention.ack_due_at <= now


class StateView(BaseModel):
    """The parts of the `state` query's answer read here, from a build that has no `attention`
    query. Its ack deadline is not in its state (the runbook's policy sets it), so such an
    incident is never counted past its ack SLA."""

    status: IncidentStatus
    severity: Severity
    runbook: str
    pending_approval: PendingApproval | None = None
    acknowledged_at: datetime | None = None
    escalation_tier: int = 0

    def as_attention(self, incident_id: str) -> Attention:
        return Attention(
            status=self.status,
            severity=self.severity,
            runbook=self.runbook,
            dry_run=incident_id.startswith(REHEARSAL_PREFIX),
            pending_approval=self.pending_approval,
            acknowledged=self.acknowledged_at is not None,
            ack_due_at=None,
            escalation_tier=self.escalation_tier,
        )


@dataclass(frozen=True)
class OpenIncident:
    id: str
    run_id: str | None
    runbook: str
    severity: str
    status: str
    opened_at: datetime
    target: str | None = None

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
            target=attributes.get(sa.INCIDENT_TARGET),
        )

    @property
    def rehearsal(self) -> bool:
        """A dry run, or a drill (its target a drill route): left out of every number."""
        return self.id.startswith(REHEARSAL_PREFIX) or is_drill_route(self.target)


@dataclass
class IncidentCounts:
    """One refresh's numbers; `up` False when Temporal could not be read (nothing else is known)."""

    up: bool = False
    open: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (runbook, severity, status)
    waiting: Counter[tuple[str, str]] = field(default_factory=Counter)  # (runbook, severity)
    oldest_wait_seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    past_ack_sla: Counter[tuple[str, str]] = field(default_factory=Counter)  # (runbook, severity)
    unchecked: Counter[str] = field(default_factory=Counter)  # reason -> incidents


def without_tracing(client: Client) -> Client:
    """The same connection, namespace and data converter, without the tracing interceptor: reads
    made every scrape are not worth a span each (nor the worker's answering span)."""
    config = client.config()
    config["interceptors"] = [interceptor for interceptor in config["interceptors"] if not isinstance(interceptor, TracingInterceptor)]
    return Client(**config)


def untraced(client: Callable[[], Awaitable[Client]]) -> Callable[[], Awaitable[Client]]:
    """A client factory giving `without_tracing` of what `client` gives, made once per client."""
    made: dict[int, Client] = {}

    async def untraced_client() -> Client:
        shared = await client()
        if id(shared) not in made:
            made.clear()  # a reconnected client replaces the old one
            made[id(shared)] = without_tracing(shared)
        return made[id(shared)]

    return untraced_client


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
        listed = [OpenIncident.from_execution(execution) for execution in executions]
        incidents = sorted((incident for incident in listed if not incident.rehearsal), key=lambda incident: incident.opened_at)
        # Acknowledgement is not in visibility: every open incident may need someone, so the
        # oldest-opened are asked, up to the cap.
        to_query, over_cap = incidents[: self._queried_at_most], incidents[self._queried_at_most :]
        answers = await self._attention(client, to_query)
        rehearsals = {incident_id for incident_id, answer in answers.items() if answer.dry_run}

        counts = IncidentCounts(up=True)
        now = datetime.now(UTC)
        for incident in incidents:
            if incident.id in rehearsals:
                continue
            key = (incident.runbook, incident.severity)
            counts.open[(incident.runbook, incident.severity, incident.status)] += 1
            counts.waiting[key] += 0  # a series for every open combination: 0 is not "unknown"
            counts.past_ack_sla[key] += 0
            answer = answers.get(incident.id)
            if answer is None:
                continue
            if past_ack_sla(answer, now):
                counts.past_ack_sla[key] += 1
            if answer.pending_approval is not None:
                counts.waiting[key] += 1
                waited = max(0.0, (now - answer.pending_approval.requested_at).total_seconds())
                counts.oldest_wait_seconds[key] = max(waited, counts.oldest_wait_seconds.get(key, 0.0))
        counts.unchecked["over_cap"] = len(over_cap)
        counts.unchecked["query_failed"] = sum(1 for incident in to_query if incident.id not in answers)
        return counts

    async def _attention(self, client: Client, incidents: list[OpenIncident]) -> dict[str, Attention]:
        """Incident id -> what needs a person in it, for those whose query answered within the budget."""
        limit = asyncio.Semaphore(QUERIES_AT_ONCE)

        async def ask(incident: OpenIncident) -> Attention:
            async with limit:
                handle = client.get_workflow_handle(incident.id, run_id=incident.run_id)
                try:
                    return await handle.query(ATTENTION_QUERY, result_type=Attention, rpc_timeout=QUERY_TIMEOUT)
                except WorkflowQueryFailedError:  # an older build, without the query: its whole state
                    state = await handle.query(STATE_QUERY, result_type=StateView, rpc_timeout=QUERY_TIMEOUT)
                    return state.as_attention(incident.id)

        tasks = {incident.id: asyncio.create_task(ask(incident)) for incident in incidents}
        if not tasks:
            return {}
        await asyncio.wait(tasks.values(), timeout=QUERY_BUDGET_SECONDS)
        answered: dict[str, Attention] = {}
        for incident_id, task in tasks.items():
            if not task.done():
                task.cancel()
            elif task.exception() is None:
                answered[incident_id] = task.result()
            else:
                log.debug("metrics: attention query of %s failed: %s", incident_id, task.exception())
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
            "stanch_incidents_open",
            "Running incidents by runbook, severity and status (rehearsals and drills left out). Every replica serves the same numbers.",
            ["runbook", "severity", "status"],
            counts.open,
        )
        yield _gauge(
            "stanch_approvals_waiting",
            f"Incidents with a step waiting for approval, among the {self._queried_at_most} oldest-opened.",
            ["runbook", "severity"],
            counts.waiting,
        )
        yield _gauge(
            "stanch_approval_oldest_wait_seconds",
            "Seconds since the oldest approval still waiting was requested.",
            ["runbook", "severity"],
            counts.oldest_wait_seconds,
        )
        yield _gauge(
            "stanch_incidents_unacknowledged_past_sla",
            f"Incidents whose ack SLA passed with nobody acknowledging; covers at most the {self._queried_at_most} oldest-opened"
            " incidents (see stanch_incidents_unchecked).",
            ["runbook", "severity"],
            counts.past_ack_sla,
        )
        yield _gauge(
            "stanch_incidents_unchecked",
            f"Open incidents not asked this time whether they wait for an approval or an acknowledgement: over_cap (more than"
            f" {self._queried_at_most} per refresh) or query_failed.",
            ["reason"],
            {(reason,): number for reason, number in counts.unchecked.items()},
        )


def _gauge(name: str, documentation: str, labels: list[str], values: dict[Any, float] | Counter[Any]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for label_values, value in sorted(values.items()):
        family.add_metric(list(label_values), value)
    return family
