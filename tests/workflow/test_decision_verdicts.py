"""A decision's verdict is recorded in history, so replay never needs a decision key.

An incident run today (approvals by update and by signal, a refused signal) replays under a
worker trusting other keys and under one trusting none, and its history holds signatures and
key ids only, never the signing key.
"""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from stanch.models.decisions import ApprovalDecision
from stanch.trust import assertions
from stanch.trust.assertions import DecisionKeys
from tests.workflow.conftest import TEST_SIGNING_KEY, running_incident, trust_test_keys
from tests.workflow.helpers import approve, state, until, vouched_signal, waiting_on
from tests.workflow.standins import Script
from workflows.handlers import DECISION_VERDICT_PATCH
from workflows.incident import IncidentWorkflow


async def recorded_incident(client) -> WorkflowHistory:
    """contain approved by an update and a signal; a signal without an assertion refused."""
    async with running_incident(client, Script()) as handle:
        await until(handle, waiting_on("contain"))
        await handle.signal(IncidentWorkflow.approve_signal, ApprovalDecision(stage="contain", approver="mallory", roles=["safety"]))
        await until(handle, lambda s: any("refused signal from mallory" in e.message for e in s.timeline))
        await approve(handle, "contain", "alice", ["oncall"])
        await handle.signal(
            IncidentWorkflow.approve_signal, await vouched_signal(handle, stage="contain", approver="sam", roles=["safety"])
        )
        current = await until(handle, waiting_on("rollback"))
        assert [(a.approver, a.via, a.verified) for a in current.approvals] == [("alice", "update", True), ("sam", "signal", True)]
        return await handle.fetch_history()


async def replays(history: WorkflowHistory) -> Exception | None:
    replayer = Replayer(workflows=[IncidentWorkflow], data_converter=pydantic_data_converter)
    return (await replayer.replay_workflow(history, raise_on_replay_failure=False)).replay_failure


@pytest.mark.parametrize("keys", ["other keys", "no key at all"])
async def test_an_incident_run_today_replays_whatever_keys_the_replaying_worker_holds(client, keys):
    history = await recorded_incident(client)
    markers = [e.marker_recorded_event_attributes for e in history.events if e.HasField("marker_recorded_event_attributes")]
    assert any(DECISION_VERDICT_PATCH.encode() in m.SerializeToString() for m in markers), "the run is on the patched path"
    assert any(b"verify_approval" in m.SerializeToString() for m in markers), "the signal's verdict is a local activity's marker"
    if keys == "other keys":
        other = Ed25519PrivateKey.from_private_bytes(b"x" * 32)
        assertions.trust_keys(DecisionKeys(public={"test-ed": other.public_key()}))  # the same key id, another key
    else:
        assertions.trust_none()
    try:
        failure = await replays(history)
    finally:
        trust_test_keys()
    assert failure is None, f"replay under {keys} diverged: {failure}"


async def test_history_holds_signatures_and_key_ids_never_the_signing_key(client):
    history = await recorded_incident(client)
    text = history.to_json()
    seed = TEST_SIGNING_KEY.partition(":")[2]
    everything = text + "".join(base64.b64decode(data).decode("utf-8", "replace") for data in _payload_data(text))
    assert seed not in everything and base64.b64decode(seed).decode() not in everything, "the signing seed is in history"
    assert "ed25519:test-ed:" in everything, "the assertions (signatures) are"


def _payload_data(text: str) -> list[str]:
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "data" in node and isinstance(node["data"], str):
                found.append(node["data"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(text))
    return found


async def test_a_signal_approval_without_a_valid_assertion_is_refused_naming_the_api(client):
    async with running_incident(client, Script()) as handle:
        await until(handle, waiting_on("contain"))
        copied = await vouched_signal(handle, stage="contain", approver="alice", roles=["oncall"])
        await handle.signal(IncidentWorkflow.approve_signal, copied.model_copy(update={"roles": ["safety"]}))
        current = await until(handle, lambda s: any("refused signal from alice" in e.message for e in s.timeline))
        [refusal] = [e.message for e in current.timeline if "refused signal from alice" in e.message]
        assert "its assertion does not verify" in refusal and "decide through the Stanch API" in refusal, refusal
        assert current.approvals == []
        await handle.signal(IncidentWorkflow.approve_signal, copied)  # the decision as signed still counts, once
        await handle.signal(IncidentWorkflow.approve_signal, copied)
        current = await until(handle, lambda s: len(s.approvals) == 1)
        assert (await state(handle)).pending_approval.approvers == ["alice"]


async def test_the_audit_timeline_reads_each_verdict_from_history_without_keys(client):
    from stanch.audit.timeline import build_timeline

    history = await recorded_incident(client)
    assertions.trust_none()
    try:
        t = await build_timeline(history, pydantic_data_converter, [])
    finally:
        trust_test_keys()
    assert t.verdicts_in_history
    by_who = {(d.who, d.via): d for d in t.decisions if d.stage == "contain"}
    mallory, sam, alice = by_who[("mallory", "signal")], by_who[("sam", "signal")], by_who[("alice", "update")]
    assert not mallory.verified and mallory.outcome == "refused" and "carries no assertion" in mallory.message
    assert sam.verified and not sam.checked_here and "the workflow's check, recorded in history: vouched for" in sam.verification
    assert alice.verified and "its validator checked the signature" in alice.verification
    assert not [p for p in t.warnings if "cannot decode" in p or "does not fit" in p], t.warnings
