"""Confirm: re-check before acting — replay the reported cases, read the reported answers,
re-query the metric.

A probe check sends every case (the signals' repro cases and the runbook's own prompts and
conversations) `samples` times at the runbook's temperature to the target's chat endpoint; a
case reproduces when at least `harmful_at_least` samples are harmful. LLMs are stochastic: a
case that did not reproduce this time is "not reproduced", and a person decides — a probe miss
never closes an incident as a false positive by itself. A metric below its threshold still
does (`not_confirmed`).
"""

from __future__ import annotations

from temporalio import activity

from stanch.detectors.registry import Detectors
from stanch.models.activity_io import ConfirmInput, ConfirmResult, Finding
from stanch.models.signals import ReproCase
from stanch.probe.client import ProbeFailed
from stanch.probe.metric import query_metric
from stanch.probe.sampling import CaseProbe, Sampling, probe_case
from stanch.runbooks.schema import ConfirmCheck
from stanch.targets.base import TargetError
from stanch.temporal.activity_deps import ActivityDeps, as_application_error


def distinct_cases(cases: list[ReproCase]) -> list[ReproCase]:
    """Each case once (by its conversation), leaving out cases with nothing to send."""
    seen: dict[str, ReproCase] = {}
    for case in cases:
        if case.prompt or case.messages:
            seen.setdefault(case.key(), case)
    return list(seen.values())


class ConfirmActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="confirm_incident")
    async def confirm_incident(self, input: ConfirmInput) -> ConfirmResult:
        detectors = Detectors(specs=input.detector_specs)
        findings, reproduced = await self.read_reported_answers(input, detectors)
        for check in input.checks:
            if check.kind == "probe":
                finding, cases = await self.replay_cases(input, check, detectors)
                reproduced.extend(cases)
            else:
                finding = await self.query_metric(input, check)
            findings.append(finding)
        outcomes = {finding.outcome for finding in findings}
        if "confirmed" in outcomes:
            outcome = "confirmed"
        elif outcomes == {"not_confirmed"}:
            outcome = "not_confirmed"
        else:
            outcome = "inconclusive"  # no checks, a check that could not decide, or a probe miss
        fired = sorted({d for finding in findings for d in finding.detectors})
        return ConfirmResult(outcome=outcome, findings=findings, detectors_fired=fired, reproduced=reproduced)

    async def read_reported_answers(self, input: ConfirmInput, detectors: Detectors) -> tuple[list[Finding], list[ReproCase]]:
        """A reported answer that itself shows the harm is evidence: the user saw it."""
        names = sorted({name for check in input.checks if check.kind == "probe" for name in check.detectors})
        findings: list[Finding] = []
        cases: list[ReproCase] = []
        if not names:
            return findings, cases
        try:
            detectors.check_names(names)
        except ValueError:
            return findings, cases  # the probe check says so, once
        for case in input.repro:
            # Hits recorded at intake, from the answer before it was masked, and hits in what is left.
            shown = [hit for hit in case.output_hits if hit.partition(": ")[0] in names]
            if case.output:
                scan = await detectors.scan(names, case.output, prompt=case.prompt)
                shown += [f"{hit.detector}: {hit.evidence}" for hit in scan.hits]
            shown = list(dict.fromkeys(shown))
            if not shown:
                continue
            fired = sorted({hit.partition(": ")[0] for hit in shown})
            findings.append(
                Finding(
                    check=f"reported answer to {case.describe()}",
                    outcome="confirmed",
                    detail=f"the reported answer shows {'; '.join(shown)}",
                    detectors=fired,
                )
            )
            cases.append(case.model_copy(update={"output": None, "detectors": sorted(set(case.detectors) | set(fired))}))
        return findings, cases

    async def replay_cases(self, input: ConfirmInput, check: ConfirmCheck, detectors: Detectors) -> tuple[Finding, list[ReproCase]]:
        cases = distinct_cases(input.repro + check.repro_cases())
        name = f"probe {input.target} ({', '.join(check.detectors)})"
        if not cases:
            return Finding(
                check=name, outcome="inconclusive", detail="no case to replay: the signals carried none, the runbook writes none"
            ), []
        try:
            detectors.check_names(check.detectors)
        except ValueError as unknown:
            return Finding(check=name, outcome="inconclusive", detail=f"the probe cannot be judged: {unknown}"), []
        version = input.target.version if check.version == "reported" else None
        sampling = Sampling.of(check)
        probes: list[CaseProbe] = []
        try:
            endpoint = self.deps.targets.get(input.target).chat_endpoint(input.target.model, version)
            for done, case in enumerate(cases):
                activity.heartbeat({"cases_done": done, "cases": len(cases)})
                probes.append(
                    await probe_case(
                        endpoint,
                        case.question(),
                        detectors=detectors,
                        names=check.detectors,
                        sampling=sampling,
                        incident_id=input.incident_id,
                        tools=case.tools,
                    )
                )
        except (TargetError, ProbeFailed) as error:
            if error.retryable:  # a passing failure: Temporal retries the whole check, then the workflow calls it inconclusive
                raise as_application_error(TargetError(str(error)), f"probing {input.target}") from error
            return Finding(check=name, outcome="inconclusive", detail=f"target could not be probed: {error}"), []
        return self.judge_cases(name, cases, probes, sampling, version)

    def judge_cases(
        self, name: str, cases: list[ReproCase], probes: list[CaseProbe], sampling: Sampling, version: str | None
    ) -> tuple[Finding, list[ReproCase]]:
        """Confirmed when a case reaches the threshold; otherwise a person decides."""
        on = f"version {version or 'served'}"
        reproduced = [(case, probe) for case, probe in zip(cases, probes, strict=True) if probe.reproduced]
        if reproduced:
            evidence = "; ".join(f"{case.describe()}: {probe.tally()}: {', '.join(probe.evidence)}" for case, probe in reproduced)
            detail = f"{len(reproduced)} of {len(cases)} cases reproduced the harm on {on} ({sampling.describe()}): {evidence}"
            fired = sorted({d for _, probe in reproduced for d in probe.detectors})
            found = [case.model_copy(update={"output": None, "detectors": probe.detectors}) for case, probe in reproduced]
            return Finding(check=name, outcome="confirmed", detail=detail, detectors=fired), found
        undecided = list(dict.fromkeys(reason for probe in probes for reason in probe.undecided_reasons))
        if undecided:
            detail = f"not reproduced on {on}, and a detector could not decide: {'; '.join(undecided)}: a person decides"
            return Finding(check=name, outcome="inconclusive", detail=detail), []
        refused = sum(probe.refused for probe in probes)
        detail = (
            f"not reproduced in {sampling.samples} samples of each of {len(cases)} cases on {on} "
            f"(threshold ≥{sampling.harmful_at_least}): a person decides"
        )
        if refused:
            detail += f" ({refused} samples were refused, and refused answers show nothing)"
        return Finding(check=name, outcome="inconclusive", detail=detail), []

    async def query_metric(self, input: ConfirmInput, check: ConfirmCheck) -> Finding:
        """Instant query on the Prometheus HTTP API; no Prometheus or no data cannot decide."""
        return await query_metric(check, input.target.model, self.deps.settings.prometheus_url)
