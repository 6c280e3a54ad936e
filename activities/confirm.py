"""Confirm: re-check before acting — replay the reported prompts, re-query the metric."""

from __future__ import annotations

import unicodedata

import httpx
from temporalio import activity

from stanch.detectors.regex import detect
from stanch.models.activity_io import ConfirmInput, ConfirmResult, Finding
from stanch.models.signals import ReproCase
from stanch.runbooks.schema import ConfirmCheck
from stanch.targets.base import TargetError
from stanch.temporal.activity_deps import ActivityDeps, as_application_error

_COMPARE = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}

MODEL_PLACEHOLDER = "{model}"
# PromQL unquotes strings as Go does: these are the escapes a model's characters need inside one.
_STRING_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_QUOTES = ('"', "'")  # backquoted (raw) strings have no escapes: nothing can be filled in safely
_REGEX_MATCHERS = ("=~", "!~")
_REGEX_SPECIAL = set("\\.+*?()|[]{}^$")  # what Go's regexp.QuoteMeta escapes


class UnsafeQuery(ValueError):
    """The model cannot be filled into the runbook's query without changing what it asks."""


def _string_content(value: str, quote: str) -> str:
    """`value` as the content of a PromQL string literal closed by `quote`."""
    return "".join("\\" + char if char == quote else _STRING_ESCAPES.get(char, char) for char in value)


def _regex_literal(value: str) -> str:
    """A regex matching exactly `value`: a `=~` matcher would otherwise read `.*` in a model as a wildcard."""
    return "".join("\\" + char if char in _REGEX_SPECIAL else char for char in value)


def _unfit_model(model: str) -> str | None:
    if not model:
        return "is empty (an empty label value matches every series without the label)"
    if any(unicodedata.category(char) == "Cc" and char not in _STRING_ESCAPES for char in model):
        return "contains a control character"
    if any(unicodedata.category(char) == "Cs" for char in model):
        return "is not valid Unicode text (it holds a lone surrogate)"
    return None


def render_query(template: str, model: str) -> str:
    """The runbook's query with each `{model}` filled in as the content of the quoted string it
    stands in (`model="{model}"`), escaped so no model can close the string and add to the query.

    Raises UnsafeQuery for a model no escaping makes safe, or a `{model}` outside a quoted string.
    """
    if (reason := _unfit_model(model)) is not None:
        raise UnsafeQuery(f"the model {reason}")
    rendered: list[str] = []
    quote: str | None = None  # the quote of the string being read, None outside strings
    in_regex = False
    position = 0
    while position < len(template):
        if template.startswith(MODEL_PLACEHOLDER, position):
            if quote is None or quote == "`":
                raise UnsafeQuery(f"the runbook's query writes {MODEL_PLACEHOLDER} outside a \"...\" or '...' string")
            rendered.append(_string_content(_regex_literal(model) if in_regex else model, quote))
            position += len(MODEL_PLACEHOLDER)
            continue
        char = template[position]
        rendered.append(char)
        if quote is None:
            if char in (*_QUOTES, "`"):
                quote = char
                in_regex = template[:position].rstrip().endswith(_REGEX_MATCHERS)
        elif char == "\\" and quote in _QUOTES and position + 1 < len(template):
            rendered.append(template[position + 1])  # an escaped character never ends the string
            position += 1
        elif char == quote:
            quote = None
        position += 1
    return "".join(rendered)


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
            if error.retryable:  # a passing failure: Temporal retries the whole check, then the workflow calls it inconclusive
                raise as_application_error(error, f"probing {input.target}") from error
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
        threshold = check.threshold
        try:
            query = render_query(check.query, input.target.model)
        except UnsafeQuery as refusal:
            name = f"metric {check.query} {check.comparison} {threshold}"  # the runbook's query: the model is what was refused
            return Finding(check=name, outcome="inconclusive", detail=f"query not sent to Prometheus: {refusal}")
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
