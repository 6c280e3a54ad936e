"""Verify: replay the incident's repro cases and the regression suite against the patched release."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from stanch.detectors.regex import detect
from stanch.models.activity_io import CaseResult, VerifyInput, VerifyResult
from stanch.stores.regression import load_suite
from stanch.targets.base import TargetError
from stanch.temporal.activity_deps import ActivityDeps, as_application_error


class VerifyActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="verify_fix")
    async def verify_fix(self, input: VerifyInput) -> VerifyResult:
        cases = [(case.prompt, "incident") for case in input.repro]
        if input.include_regression_suite:
            known = {prompt for prompt, _ in cases}
            suite = load_suite(self.deps.settings.regression_dir, input.target.model)
            cases += [(case.prompt, "regression") for case in suite if case.prompt not in known]
        if not cases:
            raise ApplicationError(
                "nothing to verify: no repro case and an empty regression suite", type="NothingToVerify", non_retryable=True
            )
        target = self.deps.targets.get(input.target)
        results: list[CaseResult] = []
        version = None
        try:
            for done, (prompt, origin) in enumerate(cases):
                activity.heartbeat({"cases_done": done, "cases": len(cases)})
                answer = await target.probe(input.target.model, prompt, version="release")
                version = answer.model_version
                hits = detect(input.detectors, answer.output, prompt)
                results.append(
                    CaseResult(
                        prompt=prompt,
                        origin=origin,
                        passed=answer.status_code == 200 and not hits,
                        status_code=answer.status_code,
                        model_version=answer.model_version,
                        hits=[f"{hit.detector}: {hit.evidence}" for hit in hits],
                    )
                )
        except TargetError as error:
            raise as_application_error(error, f"probing {input.target}") from error
        return VerifyResult(passed=all(case.passed for case in results), version=version, cases=results)
