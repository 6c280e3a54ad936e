"""Verify: replay the incident's repro cases and the regression suite against the patched release.

Each case is asked `samples` times at the runbook's temperature of the fixed version directly.
A case passes when every sample was answered (a refusal there means the fix was not reachable,
not that it works), fewer than `harmful_at_least` samples are harmful, and every detector could
decide (a fix is not verified by a detector that could not say). With no case to replay at all,
an incident confirmed by its metric is verified by the metric having recovered.
"""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.exceptions import ApplicationError

from stanch.detectors.registry import Detectors
from stanch.models.activity_io import CaseResult, VerifyInput, VerifyResult
from stanch.models.signals import ReproCase
from stanch.probe.client import ProbeFailed
from stanch.probe.metric import query_metric
from stanch.probe.sampling import CaseProbe, Sampling, probe_case
from stanch.targets.base import TargetError
from stanch.temporal.activity_deps import ActivityDeps, as_application_error


def case_result(case: ReproCase, origin: str, probe: CaseProbe) -> CaseResult:
    """Whether the fixed version handles the case, and if not, why, in a sentence."""
    refusals = [sample for sample in probe.samples if sample.status_code != 200]
    problems = []
    if refusals:
        first = refusals[0]
        why = f"{first.refusal_code or first.status_code}" + (f" by incident {first.refusal_incident}" if first.refusal_incident else "")
        problems.append(f"{len(refusals)} of {len(probe.samples)} samples refused ({why}): the fix was not reachable")
    if probe.harmful:
        problems.append(probe.tally())
    if probe.undecided:
        problems.append(f"could not decide: {'; '.join(probe.undecided_reasons)}")
    passed = not refusals and not probe.reproduced and not probe.undecided
    return CaseResult(
        prompt=case.prompt,
        messages=case.messages,
        origin="incident" if origin == "incident" else "regression",
        passed=passed,
        status_code=refusals[0].status_code if refusals else 200,
        model_version=probe.model_version,
        hits=probe.evidence,
        samples=len(probe.samples),
        harmful_samples=probe.harmful,
        undecided_samples=probe.undecided,
        detail="" if passed else "; ".join(problems) or probe.tally(),
    )


class VerifyActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    def cases_to_replay(self, input: VerifyInput) -> list[tuple[ReproCase, str]]:
        """The incident's cases, then the suite's others. Reads the records database: blocks."""
        cases = [(case, "incident") for case in input.repro]
        if input.include_regression_suite:
            # The suite replays each case as recorded: its whole conversation and the tools it offers.
            known = {case.key() for case, _ in cases}
            suite = [entry.repro_case() for entry in self.deps.regression_suite.cases(input.target.model)]
            cases += [(case, "regression") for case in suite if case.key() not in known]
        return cases

    @activity.defn(name="verify_fix")
    async def verify_fix(self, input: VerifyInput) -> VerifyResult:
        # The suite may be a database on another host: its round trips stay off the event loop.
        cases = await asyncio.to_thread(self.cases_to_replay, input)
        if not cases:
            return await self.verify_by_metric(input)
        detectors = Detectors(specs=input.detector_specs)
        try:
            detectors.check_names(input.detectors)
        except ValueError as unknown:
            raise ApplicationError(f"the fix cannot be judged: {unknown}", type="InvalidAction", non_retryable=True) from unknown
        sampling = Sampling.of(input.sampling)
        results: list[CaseResult] = []
        try:
            endpoint = self.deps.targets.get(input.target).chat_endpoint(input.target.model, input.version)
            for done, (case, origin) in enumerate(cases):
                activity.heartbeat({"cases_done": done, "cases": len(cases)})
                probe = await probe_case(
                    endpoint,
                    case.question(),
                    detectors=detectors,
                    names=input.detectors,
                    sampling=sampling,
                    incident_id=input.incident_id,
                    tools=case.tools,
                )
                results.append(case_result(case, origin, probe))
        except TargetError as error:
            raise as_application_error(error, f"probing {input.target}") from error
        except ProbeFailed as failure:
            raise as_application_error(TargetError(str(failure), retryable=failure.retryable), f"probing {input.target}") from failure
        version = next((case.model_version for case in reversed(results) if case.model_version), None)
        return VerifyResult(passed=all(case.passed for case in results), version=version, cases=results)

    async def verify_by_metric(self, input: VerifyInput) -> VerifyResult:
        """No case to replay: an incident confirmed by its metric is verified by the metric recovering."""
        nothing = "nothing to verify: no repro case and an empty regression suite"
        if not input.metric_checks:
            raise ApplicationError(nothing, type="NothingToVerify", non_retryable=True)
        findings = [await query_metric(check, input.target.model, self.deps.settings.prometheus_url) for check in input.metric_checks]
        readings = "; ".join(f"{finding.check}: {finding.detail}" for finding in findings)
        if all(finding.outcome == "not_confirmed" for finding in findings):
            return VerifyResult(passed=True, detail=f"nothing to replay: verified by the metric ({readings})")
        raise ApplicationError(f"{nothing}, and the metric has not recovered ({readings})", type="NothingToVerify", non_retryable=True)
