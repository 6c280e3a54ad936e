"""Stanch's own metrics, without a Temporal server.

API side: the incident gauges over a fake Temporal client (the listing and the attention query,
or the state query of an older build, are all they use), read back through Prometheus' own parser. Worker side: the action and
notification counters through the activity's metric meter, recorded by a fake meter.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment

from activities.contain import ContainActivities
from activities.notify import NotifyActivities
from activities.restore import RestoreActivities
from stanch.api.app import create_app
from stanch.api.incident_metrics import IncidentGauges, untraced, without_tracing
from stanch.config.settings import Settings
from stanch.models.actions import ActionSpec, AppliedAction, TargetRef
from stanch.models.activity_io import ApplyInput, Notification, UndoInput
from stanch.models.signals import Severity
from stanch.notify import Channel, ChannelError
from stanch.notify.config import parse_notify_config
from stanch.targets.base import ApplyResult, TargetError
from stanch.targets.registry import TargetRegistry
from stanch.temporal import search_attributes as sa
from stanch.temporal.activity_deps import ActivityDeps
from tests.e2e.processes import free_port


def now() -> datetime:
    """Read when a fake incident is built, in its test: a time read at import was minutes old by
    the time the full suite reached these tests, and a deadline "5 minutes ahead" had passed."""
    return datetime.now(UTC)


# --- API: the incident gauges ---------------------------------------------------------------


class Execution:
    """What a visibility listing gives for one incident workflow."""

    def __init__(self, incident_id: str, runbook: str, severity: str, status: str, opened_minutes_ago: float) -> None:
        self.id, self.run_id = incident_id, f"run-{incident_id}"
        self.start_time = now() - timedelta(minutes=opened_minutes_ago)
        self.typed_search_attributes = TypedSearchAttributes(
            [
                SearchAttributePair(sa.INCIDENT_RUNBOOK, runbook),
                SearchAttributePair(sa.INCIDENT_SEVERITY, severity),
                SearchAttributePair(sa.INCIDENT_STATUS, status),
                SearchAttributePair(sa.INCIDENT_OPENED_AT, self.start_time),
            ]
        )


class FakeTemporal:
    """Lists `executions`; answers the `attention` query with `attention[id]` (its fields), or,
    for an incident in `old_builds`, rejects it as an older build does and answers `state`;
    an incident with no entry has no worker to answer. Refuses everything while `down`."""

    def __init__(self, executions: list[Any], attention: dict[str, dict[str, Any]], old_builds: frozenset[str] = frozenset()) -> None:
        self.executions, self.attention, self.old_builds = executions, attention, old_builds
        self.down = False
        self.listings: list[str] = []
        self.queried: list[tuple[str, str]] = []  # (incident id, query name)

    async def list_workflows(self, query: str, limit: int, page_size: int) -> AsyncIterator[Any]:
        self.listings.append(query)
        if self.down:
            raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")
        for execution in self.executions[:limit]:
            yield execution

    def asked(self, query: str = "attention") -> list[str]:
        return sorted(incident_id for incident_id, name in self.queried if name == query)

    def get_workflow_handle(self, incident_id: str, run_id: str | None = None) -> Any:
        temporal = self

        class Handle:
            async def query(self, name: str, result_type: Any, rpc_timeout: timedelta) -> Any:
                temporal.queried.append((incident_id, name))
                if incident_id not in temporal.attention:
                    raise RPCError("no poller seen for task queue", RPCStatusCode.FAILED_PRECONDITION, b"")
                answer = temporal.attention[incident_id]
                if incident_id in temporal.old_builds:
                    if name == "attention":
                        raise WorkflowQueryFailedError("Query handler for 'attention' expected but not found, known queries: [state]")
                    state = {
                        **{field: answer[field] for field in ("status", "severity", "runbook", "pending_approval")},
                        "id": incident_id,
                        "acknowledged_at": None if not answer["acknowledged"] else now().isoformat(),
                        "timeline": [{"kind": "x"}] * 100,
                    }
                    return result_type.model_validate(state)
                assert name == "attention", "a current build is never asked its whole state"
                return result_type.model_validate(answer)

        return Handle()


def waiting_since(minutes_ago: float, stage: str = "rollback") -> dict[str, Any]:
    requested = now() - timedelta(minutes=minutes_ago)
    return {"stage": stage, "severity": "medium", "count": 1, "roles": ["oncall"], "requested_at": requested.isoformat()}


def attention(
    status: str,
    *,
    waiting: dict[str, Any] | None = None,
    acknowledged: bool = True,
    ack_due_minutes: float | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """An `attention` answer; `ack_due_minutes` from now (negative: already passed)."""
    due = None if ack_due_minutes is None else (now() + timedelta(minutes=ack_due_minutes)).isoformat()
    return {
        "status": status,
        "severity": "medium",
        "runbook": "harmful-output",
        "dry_run": dry_run,
        "pending_approval": waiting,
        "acknowledged": acknowledged,
        "ack_due_at": due,
        "escalation_tier": 0,
    }


def gauges_over(temporal: FakeTemporal, **options: Any) -> tuple[IncidentGauges, CollectorRegistry]:
    async def client() -> Any:
        if temporal.down:
            raise RuntimeError("cannot reach Temporal at 127.0.0.1:7233")
        return temporal

    gauges = IncidentGauges(client, **options)
    registry = CollectorRegistry()
    registry.register(gauges)
    return gauges, registry


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def series(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {key[1]: value for key, value in samples.items() if key[0] == name}


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


def incidents() -> FakeTemporal:
    return FakeTemporal(
        [
            Execution("leak-1", "harmful-output", "medium", "containing", opened_minutes_ago=30),  # waits for rollback
            Execution("leak-2", "harmful-output", "medium", "containing", opened_minutes_ago=10),  # waits too, for less long
            Execution("leak-3", "harmful-output", "medium", "restoring", opened_minutes_ago=5),  # nothing waits
            Execution("pii-1", "pii-leak", "high", "confirmed", opened_minutes_ago=2),  # past its ack deadline, but acknowledged
            Execution("tox-1", "toxic-content", "low", "triage", opened_minutes_ago=1),  # nobody acknowledged it in time
            Execution("dryrun-leak-1-a1b2c3", "harmful-output", "medium", "containing", opened_minutes_ago=40),  # a rehearsal
        ],
        {
            "leak-1": attention("containing", waiting=waiting_since(20)),
            "leak-2": attention("containing", waiting=waiting_since(3), acknowledged=False, ack_due_minutes=5),
            "leak-3": attention("restoring"),
            "pii-1": attention("confirmed", acknowledged=True, ack_due_minutes=-1),
            "tox-1": attention("triage", acknowledged=False, ack_due_minutes=-0.5),
            "dryrun-leak-1-a1b2c3": attention(
                "containing", waiting=waiting_since(35), acknowledged=False, ack_due_minutes=-30, dry_run=True
            ),
        },
    )


async def test_open_incidents_are_counted_by_runbook_severity_and_status_and_waiting_approvals_by_age() -> None:
    temporal = incidents()
    gauges, registry = gauges_over(temporal)
    await gauges.refresh()
    samples = scrape(registry)

    assert samples[("stanch_visibility_up", labels())] == 1
    assert series(samples, "stanch_incidents_open") == {
        labels(runbook="harmful-output", severity="medium", status="containing"): 2,
        labels(runbook="harmful-output", severity="medium", status="restoring"): 1,
        labels(runbook="pii-leak", severity="high", status="confirmed"): 1,
        labels(runbook="toxic-content", severity="low", status="triage"): 1,
    }, "the rehearsal is not an open incident"
    assert "ExecutionStatus = 'Running'" in temporal.listings[0], "a run that continued as new is not an open incident"
    assert temporal.asked() == ["leak-1", "leak-2", "leak-3", "pii-1", "tox-1"], "every open incident may need someone; not rehearsals"
    assert series(samples, "stanch_approvals_waiting") == {
        labels(runbook="harmful-output", severity="medium"): 2,
        labels(runbook="pii-leak", severity="high"): 0,
        labels(runbook="toxic-content", severity="low"): 0,
    }
    oldest = samples[("stanch_approval_oldest_wait_seconds", labels(runbook="harmful-output", severity="medium"))]
    assert 20 * 60 <= oldest < 21 * 60, "the rehearsal's 35 minutes are not anyone's wait"
    assert ("stanch_approval_oldest_wait_seconds", labels(runbook="pii-leak", severity="high")) not in samples
    assert samples[("stanch_incidents_unchecked", labels(reason="over_cap"))] == 0
    assert samples[("stanch_incidents_unchecked", labels(reason="query_failed"))] == 0


async def test_an_incident_past_its_ack_deadline_with_nobody_acknowledging_is_counted_until_someone_does() -> None:
    temporal = incidents()
    now = [0.0]
    gauges, registry = gauges_over(temporal, clock=lambda: now[0])
    await gauges.refresh()
    assert series(scrape(registry), "stanch_incidents_unacknowledged_past_sla") == {
        labels(runbook="harmful-output", severity="medium"): 0,  # leak-2 is unacknowledged but not due yet; the rehearsal is not counted
        labels(runbook="pii-leak", severity="high"): 0,  # past due, but acknowledged
        labels(runbook="toxic-content", severity="low"): 1,
    }
    temporal.attention["tox-1"]["acknowledged"] = True
    now[0] += 60
    await gauges.refresh()
    assert scrape(registry)[("stanch_incidents_unacknowledged_past_sla", labels(runbook="toxic-content", severity="low"))] == 0


async def test_an_incident_that_says_it_is_a_rehearsal_is_left_out_whatever_its_id() -> None:
    temporal = incidents()
    temporal.attention["tox-1"]["dry_run"] = True
    gauges, registry = gauges_over(temporal)
    await gauges.refresh()
    samples = scrape(registry)
    assert not any(dict(key).get("runbook") == "toxic-content" for key in series(samples, "stanch_incidents_open"))
    assert not any(dict(key).get("runbook") == "toxic-content" for key in series(samples, "stanch_incidents_unacknowledged_past_sla"))


async def test_an_incident_on_an_older_build_without_the_attention_query_is_asked_its_state() -> None:
    temporal = incidents()
    temporal.old_builds = frozenset({"leak-1", "tox-1"})
    gauges, registry = gauges_over(temporal)
    await gauges.refresh()
    samples = scrape(registry)
    assert temporal.asked("state") == ["leak-1", "tox-1"], "only the builds that rejected `attention`"
    assert samples[("stanch_approvals_waiting", labels(runbook="harmful-output", severity="medium"))] == 2
    assert samples[("stanch_incidents_unchecked", labels(reason="query_failed"))] == 0
    # Its state does not carry the ack deadline (the runbook's policy does): it is not counted past it.
    assert samples[("stanch_incidents_unacknowledged_past_sla", labels(runbook="toxic-content", severity="low"))] == 0


async def test_past_the_query_cap_the_oldest_incidents_are_asked_and_the_rest_counted_as_unchecked() -> None:
    temporal = incidents()
    del temporal.attention["leak-2"]  # its worker does not answer
    gauges, registry = gauges_over(temporal, queried_at_most=2)
    await gauges.refresh()
    samples = scrape(registry)
    assert temporal.asked() == ["leak-1", "leak-2"], "the two opened longest ago (the older rehearsal is not asked)"
    assert samples[("stanch_incidents_unchecked", labels(reason="over_cap"))] == 3
    assert samples[("stanch_incidents_unchecked", labels(reason="query_failed"))] == 1
    assert samples[("stanch_approvals_waiting", labels(runbook="harmful-output", severity="medium"))] == 1
    help_text = generate_latest(registry).decode()
    assert "HELP stanch_incidents_unacknowledged_past_sla" in help_text and "at most the 2 oldest-opened" in help_text


def test_the_gauges_read_through_the_same_connection_without_the_tracing_interceptor() -> None:
    connection = object()  # the service client: the one gRPC connection the API holds
    traced = Client(connection, namespace="stanch", data_converter=pydantic_data_converter, interceptors=[TracingInterceptor()])  # type: ignore[arg-type]
    plain = without_tracing(traced)
    assert plain.service_client is connection and plain.namespace == "stanch"
    assert plain.data_converter is traced.data_converter, "payloads (encrypted or not) read the same"
    assert not any(isinstance(interceptor, TracingInterceptor) for interceptor in plain.config()["interceptors"])


async def test_the_untraced_client_is_made_once_per_connected_client() -> None:
    connected = [Client(object(), interceptors=[TracingInterceptor()])]  # type: ignore[arg-type]

    async def client() -> Client:
        return connected[-1]

    factory = untraced(client)
    first = await factory()
    assert await factory() is first
    connected.append(Client(object()))  # type: ignore[arg-type]  # the API reconnected
    assert await factory() is not first


async def test_scrapes_within_the_cache_time_read_temporal_once() -> None:
    temporal = incidents()
    now = [100.0]
    gauges, _ = gauges_over(temporal, cache_seconds=5, clock=lambda: now[0])
    await asyncio.gather(gauges.refresh(), gauges.refresh(), gauges.refresh())  # three scrapers at once
    now[0] += 4
    await gauges.refresh()
    assert len(temporal.listings) == 1
    now[0] += 2
    await gauges.refresh()
    assert len(temporal.listings) == 2


async def test_when_temporal_cannot_be_read_the_incident_series_are_missing_and_visibility_up_says_so() -> None:
    temporal = incidents()
    now = [0.0]
    gauges, registry = gauges_over(temporal, clock=lambda: now[0])
    await gauges.refresh()
    temporal.down = True
    now[0] += 60
    await gauges.refresh()
    samples = scrape(registry)
    assert samples == {("stanch_visibility_up", labels()): 0}, "no stale numbers are served as current"
    temporal.down = False
    now[0] += 60
    await gauges.refresh()
    assert scrape(registry)[("stanch_visibility_up", labels())] == 1


def test_the_api_answers_metrics_with_its_intake_counters_while_temporal_is_unreachable(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, runbooks_dir=tmp_path, temporal_address=f"127.0.0.1:{free_port()}")  # nobody listens
    app = create_app(settings, catalog=_NoCatalog(), insecure_dev=True)  # type: ignore[arg-type]
    with TestClient(app) as http:
        answer = http.get("/metrics")
    assert answer.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(answer.text)}
    assert families["stanch_visibility_up"].samples[0].value == 0
    assert "stanch_intake_requests" in families and "stanch_incidents_open" not in families


class _NoCatalog:
    def __len__(self) -> int:
        return 0


# --- worker: actions and notifications ------------------------------------------------------


class FakeMeter:
    """Records what the activities count: (metric, labels) -> total."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, frozenset[tuple[str, str]]]] = Counter()

    def with_additional_attributes(self, attributes: dict[str, str]) -> FakeMeter:
        return self  # the SDK's own labels (namespace, task queue, activity type) are not what is tested

    def create_counter(self, name: str, description: str | None = None, unit: str | None = None) -> Any:
        meter = self

        class Recorder:
            def add(self, value: int, additional_attributes: dict[str, str] | None = None) -> None:
                meter.counts[(name, frozenset((additional_attributes or {}).items()))] += value

        return Recorder()


class FlagTarget:
    """A target of kind flagd that applies, or fails while `failing`."""

    kind = "flagd"

    def __init__(self) -> None:
        self.failing = False

    async def apply(self, model: str, action: ActionSpec, key: str, incident_id: str, holder: str | None = None) -> ApplyResult:
        if self.failing:
            raise TargetError("flagd file is read-only", retryable=True)
        return ApplyResult(result={"flag": "off"}, inverse={"flag": "on"})

    async def undo(self, applied: AppliedAction, undo_key: str) -> ApplyResult:
        return ApplyResult()

    def plan(self, model: str, action: ActionSpec, key: str) -> list[Any]:
        return []


def environment(meter: FakeMeter) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.metric_meter = meter  # type: ignore[assignment]
    return env


def apply_input(**changes: Any) -> ApplyInput:
    values: dict[str, Any] = {
        "incident_id": "leak-1",
        "stage": "contain",
        "index": 0,
        "target": TargetRef(adapter="flags", model="support-bot"),
        "action": ActionSpec(kind="disable_feature", params={"flag": "new-prompt"}),
    }
    return ApplyInput(**{**values, **changes})


async def test_actions_are_counted_by_adapter_kind_action_and_result(tmp_path: Path) -> None:
    meter, target = FakeMeter(), FlagTarget()
    settings = Settings(home=tmp_path)
    deps = ActivityDeps(settings=settings, targets=TargetRegistry(settings, extra={"flags": target}))  # type: ignore[dict-item]
    env = environment(meter)

    target.failing = True
    with pytest.raises(Exception, match="read-only"):
        await env.run(ContainActivities(deps).apply_containment, apply_input())
    target.failing = False
    applied = await env.run(ContainActivities(deps).apply_containment, apply_input())
    await env.run(RestoreActivities(deps).undo_action, UndoInput(incident_id="leak-1", applied=applied))
    await env.run(ContainActivities(deps).apply_containment, apply_input(dry_run=True))  # a rehearsal changes nothing

    def actions(result: str) -> int:
        return meter.counts[("stanch_actions", frozenset({"adapter": "flagd", "action": "disable_feature", "result": result}.items()))]

    assert (actions("failed"), actions("applied"), actions("undone")) == (1, 1, 1)
    assert sum(meter.counts.values()) == 3


async def test_notifications_are_counted_per_channel_and_a_retry_counts_only_what_it_sent(tmp_path: Path) -> None:
    config = parse_notify_config(
        tmp_path / "notify.yaml",
        "channels:\n  pager: {webhook: {url: 'http://127.0.0.1:9/hook', secret_env: HOOK_SECRET}}\n"
        "recipients:\n  oncall: [pager, console]\n",
        Settings(home=tmp_path),
        {"HOOK_SECRET": "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ="},
    )
    broken = {"pager"}

    async def deliver(note: Notification, channel: Channel) -> None:
        if channel.name in broken:
            raise ChannelError("webhook answered HTTP 503")

    meter = FakeMeter()
    activities = NotifyActivities(ActivityDeps.from_settings(Settings(home=tmp_path)), config=config, deliver_to=deliver)
    note = Notification(
        incident_id="leak-1", kind="page", recipients=["oncall"], message="m", severity=Severity.high, tier=1, dedup_id="leak-1@a/notify/1"
    )
    await environment(meter).run(activities.deliver, note)  # the pager fails, the console delivers
    broken.clear()
    await environment(meter).run(activities.deliver, note)  # the retry: only the pager is sent again

    def notifications(channel: str, result: str) -> int:
        return meter.counts[("stanch_notifications", frozenset({"channel": channel, "result": result}.items()))]

    assert notifications("pager", "failed") == 1 and notifications("pager", "delivered") == 1
    assert notifications("console", "delivered") == 1, "the ledger kept the retry from sending it again"
