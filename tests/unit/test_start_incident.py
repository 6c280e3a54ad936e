"""`start_incident`: the one signal-with-start of an incident, for intake and for dry runs.

What running incidents and recorded histories depend on is pinned here: the workflow type,
the signal name, the id policies; and `opened` is the server's own `started`.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from temporalio.api.enums.v1 import WorkflowIdConflictPolicy, WorkflowIdReusePolicy
from temporalio.api.workflowservice.v1 import SignalWithStartWorkflowExecutionResponse
from temporalio.contrib.pydantic import pydantic_data_converter

from stanch.cli.plan import dry_run_input, start_dry_run
from stanch.config.settings import Settings
from stanch.intake.start import open_or_join
from stanch.models.incident import IncidentInput
from stanch.models.signals import Signal
from stanch.runbooks.loader import default_runbooks_dir, load_catalog, load_runbook

SECRET = "sk-live-4f9a8c2e7b1d4a6f9e3c5b7a1d2f8e6c"


class SignalWithStartRecorder:
    """Stands in for the Temporal client: keeps each signal-with-start request, answers `started`."""

    namespace = "default"
    identity = "test"
    data_converter = pydantic_data_converter

    def __init__(self, started: bool = True) -> None:
        self.started = started
        self.requests: list = []
        self.workflow_service = SimpleNamespace(signal_with_start_workflow_execution=self._signal_with_start)

    async def _signal_with_start(self, request, **_):
        self.requests.append(request)
        return SignalWithStartWorkflowExecutionResponse(run_id="run-1", started=self.started)

    def get_workflow_handle(self, workflow_id: str, *, run_id: str | None = None):
        return SimpleNamespace(id=workflow_id, run_id=run_id)

    async def decoded(self, payloads, type_):
        return (await self.data_converter.decode(payloads.payloads, [type_]))[0]


def alert(signal_id: str = "s-1") -> Signal:
    return Signal(
        signal_id=signal_id,
        sender="alertmanager",
        title="support-bot harmful output",
        description=f"the bot printed {SECRET}",
        labels={"alertname": "HarmfulOutput", "model": "support-bot", "model_version": "2"},
        model="support-bot",
        model_version="2",
    )


@pytest.mark.parametrize("started", [True, False])
async def test_opened_is_the_servers_started(started: bool):
    client = SignalWithStartRecorder(started=started)
    result = await open_or_join(client, load_catalog(default_runbooks_dir()), alert(), task_queue="tq")  # type: ignore[arg-type]
    assert result.opened is started


async def test_intake_keeps_the_workflow_type_signal_name_and_id_policies():
    client = SignalWithStartRecorder()
    result = await open_or_join(client, load_catalog(default_runbooks_dir()), alert(), task_queue="tq")  # type: ignore[arg-type]
    [request] = client.requests
    assert request.workflow_id == result.incident_id
    assert request.workflow_type.name == "IncidentWorkflow"
    assert request.task_queue.name == "tq"
    assert request.signal_name == "add_signal"
    assert request.workflow_id_conflict_policy == WorkflowIdConflictPolicy.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING
    assert request.workflow_id_reuse_policy == WorkflowIdReusePolicy.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE
    assert request.request_id
    started_with = await client.decoded(request.input, IncidentInput)
    assert started_with.incident_id == result.incident_id
    signal = await client.decoded(request.signal_input, Signal)
    assert signal.signal_id == "s-1" and SECRET not in signal.description
    summary = await client.decoded(SimpleNamespace(payloads=[request.user_metadata.summary]), str)
    assert summary == f"harmful-output incident on {started_with.target}"
    assert request.search_attributes.indexed_fields


async def test_no_search_attributes_when_the_namespace_has_none():
    client = SignalWithStartRecorder()
    catalog = load_catalog(default_runbooks_dir())
    await open_or_join(client, catalog, alert(), task_queue="tq", upsert_search_attributes=False)  # type: ignore[arg-type]
    assert not client.requests[0].search_attributes.indexed_fields


async def test_a_dry_run_starts_through_the_same_call_under_its_own_id_and_summary():
    client = SignalWithStartRecorder()
    loaded = load_runbook(default_runbooks_dir() / "harmful-output.yaml")
    input = dry_run_input(loaded, alert(), Settings(upsert_search_attributes=True))
    handle = await start_dry_run(client, input, alert(), "tq")  # type: ignore[arg-type]
    [request] = client.requests
    assert handle.id == request.workflow_id == input.incident_id and input.incident_id.startswith("dryrun-")
    assert handle.run_id == "run-1"
    assert request.signal_name == "add_signal"
    assert request.workflow_id_conflict_policy == WorkflowIdConflictPolicy.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING
    summary = await client.decoded(SimpleNamespace(payloads=[request.user_metadata.summary]), str)
    assert summary.startswith("DRY RUN of harmful-output")
    assert SECRET not in (await client.decoded(request.signal_input, Signal)).description
