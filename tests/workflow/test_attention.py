"""What the API's metrics read of each open incident (the small `attention` query), and the
workflow's log lines naming the incident and its stage."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from temporalio.client import Client

from stanch.models.incident import Attention, IncidentStatus
from stanch.models.signals import Severity
from stanch.telemetry.logs import JsonLogFormatter
from tests.workflow.conftest import incident_input, running_incident
from tests.workflow.helpers import approve, until, waiting_on
from tests.workflow.standins import Script
from workflows.incident import IncidentWorkflow


async def test_attention_says_what_waits_for_whom_and_when_the_ack_is_due(client: Client) -> None:
    rehearsal = incident_input().model_copy(update={"dry_run": True})
    async with running_incident(client, Script(), rehearsal) as handle:  # the secret detector fires: high
        waiting = await until(handle, waiting_on("contain"))
        attention: Attention = await handle.query(IncidentWorkflow.attention)
        assert (attention.status, attention.severity, attention.runbook) == (IncidentStatus.confirmed, Severity.high, "harmful-output")
        assert attention.dry_run is True
        assert attention.pending_approval == waiting.pending_approval
        assert attention.acknowledged is False and attention.escalation_tier == 0
        assert attention.ack_due_at == waiting.opened_at + timedelta(minutes=15)  # the ack SLA at high

        await approve(handle, "contain", "alice", ["oncall"])  # approving acknowledges
        attention = await handle.query(IncidentWorkflow.attention)
    assert attention.acknowledged is True and attention.ack_due_at is None
    assert attention.pending_approval is not None and attention.pending_approval.approvers == ["alice"]


async def test_the_workflows_log_lines_name_the_incident_and_the_stage(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="temporalio.workflow")
    async with running_incident(client, Script(detectors=[])) as handle:  # medium: containment is automatic
        await until(handle, waiting_on("rollback"))

    own = [record for record in caplog.records if record.name == "temporalio.workflow"]
    [contained] = [record for record in own if record.getMessage().startswith("contain: done")]
    line = json.loads(JsonLogFormatter().format(contained))
    assert (line["incident_id"], line["stage"]) == (handle.id, "contain")
    [containing] = [record for record in own if record.getMessage().startswith("status: containing")]
    assert getattr(containing, "stage", None) == "contain", "a status line names the stage under way"
    assert all(getattr(record, "stage", None) for record in own if record.getMessage().startswith(("rollback:", "status:")))
