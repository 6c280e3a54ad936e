"""Intake: a signal opens a new incident or joins the open one, in a single Temporal call.

The matching runbook names the dedup key, the dedup key names the incident, and
signal-with-start (conflict policy USE_EXISTING) either starts that incident's workflow with
the signal or delivers the signal to the running one. Once an incident is closed its id is
free again (ALLOW_DUPLICATE), so the next alert opens a fresh incident. When
`open_or_join` returns, Temporal has durably recorded the signal: only then may a webhook be
told 202.

A closing notice (resolved, acknowledged: `Signal.is_closing_notice`) is not new harm, so it
never opens anything: `open_or_join` routes it the same way, to the same incident id, and sends it
as a plain signal to the run open under that id. With none open it is dropped (`dropped`),
and the webhook still hears 202: the sender did nothing wrong, and retrying would not help.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import temporalio.api.enums.v1
from pydantic import BaseModel, Field
from temporalio.api.common.v1 import Payloads, WorkflowType
from temporalio.api.sdk.v1 import UserMetadata
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import SignalWithStartWorkflowExecutionRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.converter import WorkflowSerializationContext, encode_search_attributes
from temporalio.service import RPCError, RPCStatusCode

from stanch.detectors.regex import redact
from stanch.detectors.registry import Detectors
from stanch.intake.routing import route_signal
from stanch.models.incident import WORKFLOW_NAME, IncidentInput, IncidentStatus, is_drill_route
from stanch.models.signals import ReproCase, Signal
from stanch.probe.client import message_text
from stanch.probe.sampling import user_text
from stanch.runbooks.loader import RunbookCatalog
from stanch.runbooks.schema import Runbook
from stanch.telemetry.logs import note_incident_for_logs
from stanch.telemetry.tracing import signal_with_start_header
from stanch.temporal import search_attributes as sa
from stanch.temporal.setup import missing_behind_refusal

# The workflow's signal handler; running incidents and recorded histories carry this name.
ADD_SIGNAL = "add_signal"


class IntakeResult(BaseModel):
    incident_id: str
    runbook: str
    dedup_key: str
    opened: bool = Field(False, description="true when this signal opened a new incident, false when it joined one")
    closing_notice: bool = Field(False, description="the sender says the harm stopped or someone is on it (resolved, acknowledged)")
    dropped: bool = Field(
        False, description="a closing notice no open incident matched: not recorded anywhere, and no incident opened for it"
    )


@dataclass(frozen=True)
class StartedIncident:
    handle: WorkflowHandle
    opened: bool  # this call started the run; False: the signal joined the running one


def incident_search_attributes(input: IncidentInput) -> TypedSearchAttributes | None:
    """What an incident is found by from its first moment; None when the namespace has no
    Stanch search attributes (`upsert_search_attributes` off). Severity is left to the
    workflow: it is graded there, after confirmation."""
    if not input.upsert_search_attributes:
        return None
    return TypedSearchAttributes(
        [
            SearchAttributePair(sa.INCIDENT_RUNBOOK, input.runbook.name),
            # Same spelling as the workflow upserts, without the version: filter by model.
            SearchAttributePair(sa.INCIDENT_TARGET, f"{input.target.adapter}:{input.target.model}"),
            SearchAttributePair(sa.INCIDENT_STATUS, IncidentStatus.open.value),
            SearchAttributePair(sa.INCIDENT_OPENED_AT, datetime.now(UTC)),
        ]
    )


async def start_incident(
    client: Client,
    input: IncidentInput,
    first_signal: Signal,
    *,
    task_queue: str,
    summary: str | None = None,
) -> StartedIncident:
    """Signal-with-start of the incident workflow `input.incident_id`: start it with
    `first_signal`, or deliver the signal to the run already open under that id. The signal is
    written to history as given: mask it first (`without_secrets`), as both callers do.

    `opened` is the server's own answer, `SignalWithStartWorkflowExecutionResponse.started`.
    The SDK's `Client.start_workflow` keeps that response private, and the public handle
    cannot tell: from Temporal Server 1.32 its `first_execution_run_id` and `result_run_id`
    are the same whether the run was started or joined. So the request goes through the
    SDK's public raw service client (`Client.workflow_service`), built as `start_workflow`
    builds it: same data converter (codec included) and serialization context, one request
    id for retries. It bypasses client interceptors, so it adds the tracing header itself.

    Search attributes (`incident_search_attributes`) and the summary apply only when this
    call starts the run: a joined incident keeps its own.
    """
    converter = client.data_converter.with_context(WorkflowSerializationContext(namespace=client.namespace, workflow_id=input.incident_id))
    summary = summary if summary is not None else f"{'DRILL: ' if input.drill else ''}{input.runbook.name} incident on {input.target}"
    request = SignalWithStartWorkflowExecutionRequest(
        namespace=client.namespace,
        workflow_id=input.incident_id,
        workflow_type=WorkflowType(name=WORKFLOW_NAME),
        task_queue=TaskQueue(name=task_queue),
        input=Payloads(payloads=await converter.encode([input])),
        identity=client.identity,
        # The same id on every retry: the server applies the request once.
        request_id=str(uuid.uuid4()),
        # A closed incident's id opens a fresh incident. Signal-with-start refuses FAIL, so even
        # a dry run's fresh id goes with USE_EXISTING.
        # The SDK's enums carry the protobuf values; cast as the SDK's own start_workflow does.
        workflow_id_reuse_policy=cast(
            "temporalio.api.enums.v1.WorkflowIdReusePolicy.ValueType", int(WorkflowIDReusePolicy.ALLOW_DUPLICATE)
        ),
        workflow_id_conflict_policy=cast(
            "temporalio.api.enums.v1.WorkflowIdConflictPolicy.ValueType", int(WorkflowIDConflictPolicy.USE_EXISTING)
        ),
        signal_name=ADD_SIGNAL,
        signal_input=Payloads(payloads=await converter.encode([first_signal])),
        user_metadata=UserMetadata(summary=(await converter.encode([summary]))[0]),
    )
    attributes = incident_search_attributes(input)
    if attributes is not None:
        encode_search_attributes(attributes, request.search_attributes)
    try:
        # Tracing on: the trace and the incident id ride into the workflow in a header, as the
        # SDK's interceptor (which this raw request bypasses) would have put them.
        with signal_with_start_header(WORKFLOW_NAME, input.incident_id) as header:
            for key, payload in header.items():
                request.header.fields[key].CopyFrom(payload)
            response = await client.workflow_service.signal_with_start_workflow_execution(request, retry=True)
    except RPCError as err:
        # A namespace that truly lacks an attribute is not the sender's fault, nor for good: an
        # operator runs `stanch temporal setup`. A value Temporal will not hold is neither.
        missing = await missing_behind_refusal(client, err) if attributes is not None else None
        if missing is not None:
            raise missing from err
        raise
    handle = client.get_workflow_handle(input.incident_id, run_id=response.run_id)
    return StartedIncident(handle=handle, opened=response.started)


async def deliver_closing_notice(client: Client, catalog: RunbookCatalog, signal: Signal, *, incident_prefix: str = "") -> IntakeResult:
    """Send a closing notice to the incident its firing alert opened (routing gives the same
    id), as a plain signal: never signal-with-start, so it cannot open an incident. Nothing
    open under that id (never opened, or already closed; Temporal answers NOT_FOUND for both)
    drops it, `dropped=True`; any other Temporal error propagates as for any signal."""
    signal = without_secrets(signal)
    route = route_signal(signal, catalog)
    incident_id = incident_prefix + route.incident_id
    note_incident_for_logs(incident_id)  # the request's log lines name it from here on (JSON logs)
    result = IntakeResult(incident_id=incident_id, runbook=route.runbook.runbook.name, dedup_key=route.dedup_key, closing_notice=True)
    try:
        # No run id: the run open now, whichever it is (a continued-as-new incident included).
        await client.get_workflow_handle(incident_id).signal(ADD_SIGNAL, signal)
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        return result.model_copy(update={"dropped": True})
    return result


async def open_or_join(
    client: Client,
    catalog: RunbookCatalog,
    signal: Signal,
    *,
    task_queue: str,
    upsert_search_attributes: bool = True,
    incident_prefix: str = "",
) -> IntakeResult:
    """Signal-with-start of the incident the signal routes to: harm opens or joins it. A
    closing notice goes to `deliver_closing_notice` instead and never opens one.

    `incident_prefix` goes before every incident id: a `stanch up` joined to a shared cluster
    keeps its incidents apart from production's (which have none), so its alerts never join a
    production incident."""
    if signal.is_closing_notice:
        return await deliver_closing_notice(client, catalog, signal, incident_prefix=incident_prefix)
    # Masked once, then routed and recorded as it is: a dedup key must not be built from a secret.
    reported = signal
    signal = without_secrets(signal)
    route = route_signal(signal, catalog)
    runbook = route.runbook.runbook
    signal = with_reported_hits(signal, reported, runbook)
    incident_id = incident_prefix + route.incident_id
    note_incident_for_logs(incident_id)  # the request's log lines name it from here on (JSON logs)
    incident = IncidentInput(
        incident_id=incident_id,
        runbook=runbook,
        runbook_sha256=route.runbook.sha256,
        target=route.target,
        dedup_key=route.dedup_key,
        upsert_search_attributes=upsert_search_attributes,
        # An incident on a drill route is a drill, whoever raised it: labelled from its first event.
        drill=is_drill_route(route.target.model),
    )
    started = await start_incident(client, incident, signal, task_queue=task_queue)
    return IntakeResult(incident_id=incident_id, runbook=runbook.name, dedup_key=route.dedup_key, opened=started.opened)


def without_secrets(signal: Signal) -> Signal:
    """Mask secrets and personal data in what the sender quoted (outputs, what the model and its
    tools said in a conversation, raw payload) before the signal is written to workflow history.
    Prompts are kept: what users and system prompts said are the repro cases."""

    def scrub(value):
        if isinstance(value, str):
            return redact(value)
        if isinstance(value, list):
            return [scrub(item) for item in value]
        if isinstance(value, dict):
            return {key: scrub(item) for key, item in value.items()}
        return value

    repro = [
        case.model_copy(
            update={"output": redact(case.output) if case.output else case.output, "messages": [masked_turn(m) for m in case.messages]}
        )
        for case in signal.repro
    ]
    return signal.model_copy(update={"repro": repro, "raw": scrub(signal.raw), "description": redact(signal.description)})


# Turns that quote what the model or a tool said: the leak a report shows is there. User, system
# and developer turns are the prompt that reproduces it, and are kept word for word.
QUOTED_ROLES = frozenset({"assistant", "tool"})


def masked_turn(message: dict[str, Any]) -> dict[str, Any]:
    """One chat message with the secrets masked in what the model or a tool said: its text (a
    string, or the text parts of a content list), its refusal and its tool-call arguments."""
    if message.get("role") not in QUOTED_ROLES:
        return message
    masked = dict(message)
    content = message.get("content")
    if isinstance(content, str):
        masked["content"] = redact(content)
    elif isinstance(content, list):
        masked["content"] = [_masked_part(part) for part in content]
    if isinstance(message.get("refusal"), str):
        masked["refusal"] = redact(message["refusal"])
    if isinstance(message.get("tool_calls"), list):
        masked["tool_calls"] = [_masked_call(call) for call in message["tool_calls"]]
    if isinstance(message.get("function_call"), dict):  # the deprecated single function call
        masked["function_call"] = _masked_arguments(message["function_call"])
    return masked


def _masked_part(part: Any) -> Any:
    if isinstance(part, dict) and isinstance(part.get("text"), str):
        return {**part, "text": redact(part["text"])}
    return part


def _masked_call(call: Any) -> Any:
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        return {**call, "function": _masked_arguments(call["function"])}
    return call


def _masked_arguments(function: dict[str, Any]) -> dict[str, Any]:
    # Masked in the JSON text as written: `"api_key": "..."` is a secret by its key's name.
    if isinstance(function.get("arguments"), str):
        return {**function, "arguments": redact(function["arguments"])}
    return function


def reported_answer(case: ReproCase) -> str:
    """The answer the reporter saw: `output`, else the conversation's closing assistant turn."""
    if case.output:
        return case.output
    if case.messages and case.messages[-1].get("role") == "assistant":
        return message_text(case.messages[-1])
    return ""


def with_reported_hits(masked: Signal, reported: Signal, runbook: Runbook) -> Signal:
    """The masked signal, each repro case with what the runbook's probe detectors find in the answer
    the reporter saw (masked evidence): that answer is evidence, but only its mask reaches history."""
    names = list(dict.fromkeys(name for check in runbook.confirm.checks if check.kind == "probe" for name in check.detectors))
    answers = [reported_answer(case) for case in reported.repro]
    if not names or not any(answers):
        return masked
    detectors = Detectors(specs=runbook.detectors)
    repro = []
    for case, original, answer in zip(masked.repro, reported.repro, answers, strict=True):
        # Judged against everything the user typed: a secret the user gave is no leak when echoed.
        prompt = user_text(original.messages) if original.messages else original.prompt
        hits = detectors.scan_regex(names, answer, prompt).hits if answer else []
        repro.append(case.model_copy(update={"output_hits": [f"{hit.detector}: {hit.evidence}" for hit in hits]}))
    return masked.model_copy(update={"repro": repro})
