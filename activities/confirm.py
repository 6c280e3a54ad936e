"""Confirm: re-check before acting — replay the reported prompts, re-query the metric."""

from __future__ import annotations

import httpx
from temporalio import activity

from stanch.detectors.regex import detect
from stanch.models.activity_io import ConfirmInput, ConfirmResult, Finding
from stanch.models.signals import ReproCase
from stanch.runbooks.schema import ConfirmCheck
from stanch.targets.base import TargetError
from stanch.temporal.activity_deps import ActivityDeps

_COMPARE = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}


class ConfirmActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="confirm_incident")
    async def confirm_incident(self, input: ConfirmInput) -> ConfirmResult:
        findings: list[Finding] = []
        reproduced: list[ReproCase] = []
        for check in input.checks:
            if check.kind == "probe":
                finding, cases = await self.replay_prompts(input, check)
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
            outcome = "inconclusive"  # no checks, or a check that could not decide
        fired = sorted({d for finding in findings for d in finding.detectors})
        return ConfirmResult(outcome=outcome, findings=findings, detectors_fired=fired, reproduced=reproduced)

    async def replay_prompts(self, input: ConfirmInput, check: ConfirmCheck) -> tuple[Finding, list[ReproCase]]:
        prompts = list(dict.fromkeys([case.prompt for case in input.repro] + check.prompts))
        name = f"probe {input.target} ({', '.join(check.detectors)})"
        if not prompts:
            return Finding(check=name, outcome="inconclusive", detail="no prompt to replay: the signals carried none"), []
        version = input.target.version if check.version == "reported" else None
        reproduced: list[ReproCase] = []
        evidence: list[str] = []
        try:
            target = self.deps.targets.get(input.target)
            for prompt in prompts:
                answer = await target.probe(input.target.model, prompt, version=version)
                hits = detect(check.detectors, answer.output, prompt)
                if hits:
                    reproduced.append(ReproCase(prompt=prompt, detectors=sorted({h.detector for h in hits})))
                    evidence.extend(f"{h.detector}: {h.evidence}" for h in hits)
        except TargetError as error:
            return Finding(check=name, outcome="inconclusive", detail=f"target could not be probed: {error}"), []
        if reproduced:
            detail = (
                f"{len(reproduced)} of {len(prompts)} prompts reproduced the harm on version {version or 'served'}: {'; '.join(evidence)}"
            )
            fired = sorted({d for case in reproduced for d in case.detectors})
            return Finding(check=name, outcome="confirmed", detail=detail, detectors=fired), reproduced
        return Finding(check=name, outcome="not_confirmed", detail=f"none of {len(prompts)} prompts reproduced the harm"), []

    async def query_metric(self, input: ConfirmInput, check: ConfirmCheck) -> Finding:
        """Instant query on the Prometheus HTTP API; no Prometheus or no data cannot decide."""
        if check.query is None or check.threshold is None:  # ConfirmCheck._complete refuses a metric check without both
            return Finding(check="metric", outcome="inconclusive", detail="a metric check needs query and threshold")
        query, threshold = check.query.replace("{model}", input.target.model), check.threshold
        name = f"metric {query} {check.comparison} {threshold}"
        url = self.deps.settings.prometheus_url
        if not url:
            return Finding(check=name, outcome="inconclusive", detail="no Prometheus configured (STANCH_PROMETHEUS_URL)")
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.get(f"{url.rstrip('/')}/api/v1/query", params={"query": query})
                response.raise_for_status()
                result = response.json()["data"]["result"]
        except (httpx.HTTPError, KeyError, ValueError) as error:
            return Finding(check=name, outcome="inconclusive", detail=f"Prometheus query failed: {error}")
        if not result:
            return Finding(check=name, outcome="inconclusive", detail="the query returned no series")
        values = [float(series["value"][1]) for series in result]
        breached = [v for v in values if _COMPARE[check.comparison](v, threshold)]
        outcome = "confirmed" if breached else "not_confirmed"
        return Finding(check=name, outcome=outcome, detail=f"values {values}")
