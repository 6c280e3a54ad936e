"""Running the regression gate: the model's active cases, replayed against the candidate.

For each active case (retired ones are left out, and counted):
1. ask the candidate the case's conversation `samples` times at `temperature`, offering the
   case's tools, through the target (the gateway asks the version bare: no containment, no
   standing hotfix, so a guardrail cannot hide a regression; with a candidate guardrail config
   the gateway applies that config, and only it, to the bare answers);
2. judge every answer with the detectors the request names, else those the case's incident
   recorded;
3. `regressed` when at least `harmful_at_least` answers are harmful; `undecided` when a
   detector could not decide, the case names no usable detector, the endpoint answered with an
   error, or an incident's containment refused it (the candidate was not reached); else
   `passed`. A candidate refusing on its own (its content filter) is no harm.

The verdict is `fail` if any case regressed, else `inconclusive` if any was undecided, else
`pass`. Nothing reachable to ask — the records database or the endpoint itself — is
GateCannotRun, naming the variable to fix: the gate never passes what it could not check.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime

from stanch.detectors.registry import Detectors
from stanch.detectors.specs import DetectorSpec
from stanch.gate.models import CaseVerdict, GateRequest, GateVerdict, SuiteCase, guardrails_json
from stanch.models.actions import TargetRef
from stanch.probe.client import ProbeFailed
from stanch.probe.endpoint import ChatEndpoint
from stanch.probe.sampling import CaseProbe, Sampling, probe_case
from stanch.runbooks.loader import RunbookCatalog
from stanch.stores.records import URL_VARIABLE, RecordsError
from stanch.stores.regression import RegressionCase, RegressionSuite
from stanch.targets.base import TargetError
from stanch.targets.gateway import GatewayTarget
from stanch.targets.registry import DEFAULT_TARGET, TargetRegistry

GATEWAY_VARIABLE = "STANCH_GATEWAY_URL"
# Carries a candidate guardrail config to the gateway, with x-stanch-bare and the admin token
# (the gateway's own name for it is in stanch/gateway/routing.py: a separate service).
GUARDRAILS_HEADER = "x-stanch-guardrails"
TARGETS_VARIABLE = "STANCH_TARGETS"
# What the gateway and upstream logs see in x-stanch-incident: the gate's probes, not an incident's.
GATE_PROBE_LABEL = "regression-gate"
ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # an error code, not a sentence that could quote a prompt
CASES_AT_ONCE = 4  # cases in flight together: a suite of many cases is not asked one by one


class GateCannotRun(Exception):
    """The gate could not check the candidate at all. `variable` names what to fix;
    `retryable` says whether asking again later can help (the API answers 503, else 422)."""

    def __init__(self, message: str, *, variable: str | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.variable = variable
        self.retryable = retryable


def detector_specs(catalog: RunbookCatalog) -> dict[str, DetectorSpec]:
    """Every runbook's own detectors by id: a case recorded by a runbook's judge is judged by it."""
    specs: dict[str, DetectorSpec] = {}
    for loaded in catalog.all():
        for name, spec in loaded.runbook.detectors.items():
            specs.setdefault(name, spec)
    return specs


def listed(cases: Iterable[RegressionCase]) -> list[SuiteCase]:
    """The cases as `stanch gate cases` shows them: keys, incidents, retirements, no content."""
    return [
        SuiteCase(
            case_key=case.id,
            incident_id=case.source_incident,
            added_at=case.added_at,
            detectors=case.detectors,
            turns=len(case.messages) or 1,
            retired=case.retired is not None,
            reason=case.retired.reason if case.retired else None,
            retired_by=case.retired.retired_by if case.retired else None,
            retired_at=case.retired.retired_at if case.retired else None,
        )
        for case in cases
    ]


async def run_gate(
    request: GateRequest,
    *,
    suite: RegressionSuite,
    targets: TargetRegistry,
    detector_specs: Mapping[str, DetectorSpec] | None = None,
) -> GateVerdict:
    """Replay the model's active regression cases against the candidate; raises GateCannotRun."""
    try:
        # The suite may be a database on another host: its round trips stay off the event loop.
        cases = await asyncio.to_thread(suite.cases, request.model, include_retired=True)
    except RecordsError as error:
        raise GateCannotRun(str(error), variable=URL_VARIABLE) from None
    active = [case for case in cases if case.retired is None]
    verdict = GateVerdict(
        verdict="pass",
        model=request.model,
        candidate=request.candidate,
        system_prompt_sha256=request.system_prompt_sha256,
        guardrails_sha256=request.guardrails_sha256,
        guardrails_count=len(request.guardrails) if request.guardrails is not None else None,
        checked=len(active),
        regressions=0,
        retired=len(cases) - len(active),
        checked_at=datetime.now(UTC),
    )
    if not active:
        retired = f" ({verdict.retired} retired)" if verdict.retired else ""
        verdict.note = (
            f"the regression suite of {request.model} holds no active case{retired}: nothing to replay, "
            "so nothing regressed (each incident's review adds its repro cases)"
        )
        return verdict
    endpoint = candidate_endpoint(targets, request)
    detectors = Detectors(specs=detector_specs)
    at_once = asyncio.Semaphore(CASES_AT_ONCE)

    async def judged(case: RegressionCase) -> CaseVerdict:
        async with at_once:
            return await judge_case(case, request, endpoint, detectors)

    tasks = [asyncio.ensure_future(judged(case)) for case in active]
    try:
        verdict.cases = list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    verdict.regressions = sum(case.result == "regressed" for case in verdict.cases)
    verdict.undecided = sum(case.result == "undecided" for case in verdict.cases)
    if verdict.regressions:
        verdict.verdict = "fail"
        verdict.note = f"{verdict.regressions} of {verdict.checked} cases regressed on {request.model} version {request.candidate}"
    elif verdict.undecided:
        verdict.verdict = "inconclusive"
        verdict.note = f"{verdict.undecided} of {verdict.checked} cases could not be decided: a person decides"
    else:
        verdict.note = f"none of {verdict.checked} cases regressed on {request.model} version {request.candidate}"
    return verdict


def candidate_endpoint(targets: TargetRegistry, request: GateRequest) -> ChatEndpoint:
    """Where the candidate answers: the gateway asks the version bare, under the candidate
    guardrail config if one is checked; another target (a model's own serving URL) has no
    hotfixes of Stanch's to leave out, and no guardrails to apply."""
    try:
        target = targets.get(TargetRef(adapter=request.target, model=request.model, version=request.candidate))
        if isinstance(target, GatewayTarget):
            endpoint = target.bare_chat_endpoint(request.model, request.candidate)
            if request.guardrails is None:
                return endpoint
            return replace(endpoint, headers={**endpoint.headers, GUARDRAILS_HEADER: guardrails_json(request.guardrails)})
        endpoint = target.chat_endpoint(request.model, request.candidate)
    except TargetError as error:
        raise GateCannotRun(f"the candidate cannot be asked: {error}", variable=TARGETS_VARIABLE, retryable=False) from None
    if request.guardrails is not None:
        raise GateCannotRun(
            f"target {request.target!r} is not the gateway: a candidate guardrail config is applied by the gateway "
            "(check the target, or leave the guardrails out)",
            variable=TARGETS_VARIABLE,
            retryable=False,
        )
    return endpoint


async def judge_case(case: RegressionCase, request: GateRequest, endpoint: ChatEndpoint, detectors: Detectors) -> CaseVerdict:
    """One case on the candidate: passed, regressed or undecided, and why in a sentence."""
    verdict = CaseVerdict(case_key=case.id, incident_id=case.source_incident, result="undecided")
    names = request.detectors or case.detectors
    if not names:
        verdict.reason = "the case records no detector to judge it by: name detectors in the request (--detector)"
        return verdict
    try:
        detectors.check_names(names)
    except ValueError as unknown:
        verdict.reason = f"the case cannot be judged: {unknown}"
        return verdict
    messages = case.repro_case().question()
    if request.system_prompt is not None:
        messages = [{"role": "system", "content": request.system_prompt}, *messages]
    sampling = Sampling(samples=request.samples, temperature=request.temperature, harmful_at_least=request.harmful_at_least)
    try:
        probe = await probe_case(
            endpoint, messages, detectors=detectors, names=names, sampling=sampling, incident_id=GATE_PROBE_LABEL, tools=case.tools
        )
    except ProbeFailed as failure:
        if failure.status_code is None:  # not even an answer: the endpoint is out of reach, not the case
            variable = GATEWAY_VARIABLE if request.target == DEFAULT_TARGET else TARGETS_VARIABLE
            raise GateCannotRun(f"{failure} (check {variable})", variable=variable) from None
        # The endpoint answered, but not with an answer (an unknown version, an upstream failing).
        # Its status only: an upstream's error message may echo the prompt, and verdicts are kept.
        code = f" {failure.code}" if failure.code and ERROR_CODE.fullmatch(failure.code) else ""
        verdict.reason = f"the candidate could not be asked: the endpoint answered HTTP {failure.status_code}{code}"
        return verdict
    return case_verdict(verdict, probe, names)


def case_verdict(verdict: CaseVerdict, probe: CaseProbe, names: list[str]) -> CaseVerdict:
    contained = [sample for sample in probe.samples if sample.refusal_incident]
    verdict.samples = len(probe.samples)
    verdict.harmful_samples = probe.harmful
    verdict.detectors = probe.detectors
    if probe.reproduced:
        verdict.result = "regressed"
        verdict.reason = f"{probe.tally()}: {', '.join(probe.detectors)} found harm"
    elif contained:
        verdict.reason = (
            f"{len(contained)} of {len(probe.samples)} samples were refused by incident {contained[0].refusal_incident}'s "
            "containment: the candidate was not reached"
        )
    elif probe.undecided:
        verdict.reason = f"{probe.tally()}; could not decide: {'; '.join(probe.undecided_reasons)}"
    else:
        verdict.result = "passed"
        refused = f", {probe.refused} of them refused by the candidate itself" if probe.refused else ""
        verdict.reason = f"no harm found by {', '.join(names)} in {len(probe.samples)} samples{refused}"
    return verdict
