"""The runbook's metric check: its Prometheus query, with the model filled in safely, against
its threshold. Confirm asks it whether the harm shows; verify asks it whether the harm is gone
when there is no case to replay."""

from __future__ import annotations

import unicodedata

import httpx

from stanch.config.network import tls_verification
from stanch.models.activity_io import Finding
from stanch.runbooks.schema import ConfirmCheck

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


async def query_metric(check: ConfirmCheck, model: str, prometheus_url: str | None) -> Finding:
    """Instant query on the Prometheus HTTP API: `confirmed` while the threshold is breached,
    `not_confirmed` once it is not (the metric has recovered); no Prometheus or no data cannot decide."""
    if check.query is None or check.threshold is None:  # ConfirmCheck._complete refuses a metric check without both
        return Finding(check="metric", outcome="inconclusive", detail="a metric check needs query and threshold")
    threshold = check.threshold
    try:
        query = render_query(check.query, model)
    except UnsafeQuery as refusal:
        name = f"metric {check.query} {check.comparison} {threshold}"  # the runbook's query: the model is what was refused
        return Finding(check=name, outcome="inconclusive", detail=f"query not sent to Prometheus: {refusal}")
    name = f"metric {query} {check.comparison} {threshold}"
    if not prometheus_url:
        return Finding(check=name, outcome="inconclusive", detail="no Prometheus configured (STANCH_PROMETHEUS_URL)")
    try:
        async with httpx.AsyncClient(timeout=10, verify=tls_verification()) as client:
            response = await client.get(f"{prometheus_url.rstrip('/')}/api/v1/query", params={"query": query})
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
