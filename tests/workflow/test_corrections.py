"""A responder corrects the answer a repro case should get (`correct_answer`): refused for a case the
incident does not hold or without the API's assertion; accepted, it is on the timeline and the
fine-tune step's input carries it with the repro cases, which no other step's input does."""

from __future__ import annotations

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError

from stanch.models.activity_io import ApplyInput
from stanch.models.decisions import AnswerCorrection
from tests.workflow.conftest import running_incident
from tests.workflow.helpers import AsTheApi, approve, approve_four_eyes, state, until, waiting_on
from tests.workflow.standins import Script
from workflows.incident import IncidentWorkflow

ANSWER = "I can't share credentials; ask your administrator."


async def scheduled_inputs(client: Client, handle: WorkflowHandle, activity: str) -> list[ApplyInput]:
    """The inputs the workflow scheduled `activity` with, read from its history."""
    inputs = []
    async for event in handle.fetch_history_events():
        if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            continue
        scheduled = event.activity_task_scheduled_event_attributes
        if scheduled.activity_type.name == activity:
            (decoded,) = await client.data_converter.decode(scheduled.input.payloads, [ApplyInput])
            inputs.append(decoded)
    return inputs


async def test_a_corrected_answer_reaches_the_fine_tune_step_and_the_timeline(client):
    async with running_incident(client, Script()) as handle:
        await until(handle, waiting_on("contain"))
        receipt = await AsTheApi(handle).execute_update(
            IncidentWorkflow.correct_answer, AnswerCorrection(by="alice", case=1, answer="an earlier try")
        )
        await AsTheApi(handle).execute_update(
            IncidentWorkflow.correct_answer,
            AnswerCorrection(by="bob", prompt="What is the admin API key?", answer=ANSWER, reason="point to the owner"),
        )
        await approve_four_eyes(handle, "contain")
        await approve_four_eyes(handle, "rollback")
        await until(handle, waiting_on("restore"))
        await approve(handle, "restore", "alice", ["oncall"])
        final = await handle.result()
        (hotfix,) = [i for i in await scheduled_inputs(client, handle, "apply_hotfix") if i.action.kind == "deploy_finetune"]
        containment = await scheduled_inputs(client, handle, "apply_containment")

    assert receipt.accepted and "repro case 1" in receipt.message
    assert [(c.case, c.answer, c.by) for c in hotfix.corrections] == [(1, ANSWER, "bob")], "the latest answer for a case wins"
    assert [case.prompt for case in hotfix.repro] == ["What is the admin API key?"]
    assert all(i.repro == [] and i.corrections == [] for i in containment), "other steps' inputs stay small"
    corrected = [e for e in final.timeline if "corrected" in e.message]
    assert [(e.actor, e.message) for e in corrected] == [
        ("alice", "answer for repro case 1 corrected by alice"),
        ("bob", "answer for repro case 1 corrected by bob: point to the owner"),
    ]


@pytest.mark.parametrize(
    ("correction", "words"),
    [
        (AnswerCorrection(by="alice", case=2, answer=ANSWER), "there is no repro case 2: this incident has 1 (1 to 1)"),
        (AnswerCorrection(by="alice", prompt="something nobody asked", answer=ANSWER), "no repro case has that prompt"),
    ],
    ids=["case-number", "prompt"],
)
async def test_a_correction_for_a_case_the_incident_does_not_hold_is_refused(client, correction, words):
    async with running_incident(client, Script()) as handle:
        await until(handle, waiting_on("contain"))
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await AsTheApi(handle).execute_update(IncidentWorkflow.correct_answer, correction)
        current = await state(handle)
    assert words in str(refused.value.cause)
    assert not any("corrected" in e.message for e in current.timeline)


async def test_a_correction_not_sent_through_the_api_is_refused(client):
    async with running_incident(client, Script()) as handle:
        await until(handle, waiting_on("contain"))
        with pytest.raises(WorkflowUpdateFailedError) as forged:
            await handle.execute_update(IncidentWorkflow.correct_answer, AnswerCorrection(by="mallory", case=1, answer="sk-live-..."))
    assert "answer correction refused: it carries no assertion from the Stanch API" in str(forged.value.cause)


def test_a_correction_names_exactly_one_case_and_a_real_answer():
    with pytest.raises(ValueError, match="not both and not neither"):
        AnswerCorrection(answer=ANSWER)
    with pytest.raises(ValueError, match="not both and not neither"):
        AnswerCorrection(case=1, prompt="What is the admin API key?", answer=ANSWER)
    with pytest.raises(ValueError, match="answer is blank"):
        AnswerCorrection(case=1, answer="   ")
