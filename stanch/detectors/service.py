"""Detectors that ask a service: an OpenAI-style moderation endpoint, and an LLM-as-judge
(a Llama-Guard style guard model behind any OpenAI-compatible chat endpoint).

Nothing here raises for a service's failure: a timeout, a refused connection, an HTTP error or
an answer that is not what the format promises becomes `Undecided` for the detector, its
reason naming the endpoint's host and what happened, so the responder knows what to fix. The
API key is read from the environment at call time, sent as a Bearer token, and never appears
in a result: evidence names categories and scores, never the output that was judged.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field, ValidationError

from stanch.detectors.regex import DetectorHit
from stanch.detectors.results import Scan, Undecided
from stanch.detectors.specs import JudgeSpec, ModerationSpec

MAX_CATEGORY_CODES = 5
VERDICT_QUOTE_CHARS = 40


# --- what the endpoints answer (only the fields Stanch reads) ---------------------------------


class _ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool | None] = Field(default_factory=dict)
    category_scores: dict[str, float | None] = Field(default_factory=dict)


class _ModerationResponse(BaseModel):
    results: list[_ModerationResult] = Field(min_length=1)


class _Message(BaseModel):
    content: str


class _Choice(BaseModel):
    message: _Message


class _ChatResponse(BaseModel):
    choices: list[_Choice] = Field(min_length=1)


# --- one call, its failures as Undecided ----------------------------------------------------


class _CouldNotDecide(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _host(url: str) -> str:
    # Host and port only: a URL's user-info or query could carry a credential.
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


async def _post(
    client: httpx.AsyncClient,
    what: str,
    spec: ModerationSpec | JudgeSpec,
    env: Mapping[str, str],
    path: str,
    body: dict[str, Any],
) -> tuple[str, Any]:
    """POST the body to the spec's endpoint; (host, parsed JSON), or _CouldNotDecide saying why."""
    base_url = spec.base_url or env.get(spec.base_url_env or "", "")
    if not base_url:
        raise _CouldNotDecide(f"{what}: base_url_env {spec.base_url_env} is not set")
    headers = {}
    if spec.api_key_env:
        key = env.get(spec.api_key_env)
        if not key:
            raise _CouldNotDecide(f"{what}: api_key_env {spec.api_key_env} is not set")
        headers["Authorization"] = f"Bearer {key}"
    url, host = f"{base_url.rstrip('/')}/{path}", _host(base_url)
    seconds = f"{spec.timeout_seconds:g}s"
    try:
        # httpx's timeout applies per phase (connect, read...); wait_for bounds the whole call.
        response = await asyncio.wait_for(client.post(url, json=body, headers=headers, timeout=spec.timeout_seconds), spec.timeout_seconds)
    except (TimeoutError, httpx.TimeoutException):
        raise _CouldNotDecide(f"{what} at {host} timed out after {seconds}") from None
    except httpx.ConnectError as exc:
        raise _CouldNotDecide(f"{what} at {host} could not be reached: {exc or 'connection failed'}") from None
    except httpx.HTTPError as exc:
        raise _CouldNotDecide(f"{what} at {host} failed: {type(exc).__name__}") from None
    if response.status_code >= 400:
        hint = ""
        if response.status_code in (401, 403):
            hint = f" (check the key in {spec.api_key_env})" if spec.api_key_env else " (it may need an API key: set api_key_env)"
        elif response.status_code == 429:
            hint = " (rate limited)"
        raise _CouldNotDecide(f"{what} at {host} answered HTTP {response.status_code}{hint}")
    try:
        return host, response.json()
    except ValueError:
        raise _CouldNotDecide(f"{what} at {host} answered with something that is not JSON") from None


def _first_problem(error: ValidationError) -> str:
    item = error.errors()[0]
    return f"{'.'.join(str(part) for part in item['loc']) or 'the body'}: {item['msg']}"


# --- moderation -------------------------------------------------------------------------------


async def ask_moderation(client: httpx.AsyncClient, detector_id: str, spec: ModerationSpec, env: Mapping[str, str], text: str) -> Scan:
    """Is the output flagged in a category this detector counts?"""
    what = "moderation endpoint"
    body: dict[str, Any] = {"input": text} | ({"model": spec.model} if spec.model else {})
    try:
        host, answer = await _post(client, what, spec, env, "moderations", body)
        try:
            response = _ModerationResponse.model_validate(answer)
        except ValidationError as exc:
            raise _CouldNotDecide(f"{what} at {host} answered no moderation result ({_first_problem(exc)})") from None
        return _moderation_verdict(detector_id, spec, what, host, response)
    except _CouldNotDecide as failure:
        return Scan(undecided=[Undecided(detector=detector_id, reason=failure.reason)])


def _moderation_verdict(detector_id: str, spec: ModerationSpec, what: str, host: str, response: _ModerationResponse) -> Scan:
    counted: dict[str, float | None] = {}
    flagged_without_category = False
    for result in response.results:
        named = set(result.categories) | set(result.category_scores)
        if spec.categories and not named & set(spec.categories):
            # A typo in the runbook ("violent") would otherwise pass every output as clean.
            raise _CouldNotDecide(
                f"{what} at {host} reports none of the categories {detector_id} counts ({', '.join(spec.categories)});"
                f" it reports: {', '.join(sorted(named)) or 'none'}"
            )
        candidates = spec.categories or sorted(named)
        if spec.min_score is not None:
            if not result.category_scores:
                raise _CouldNotDecide(f"{what} at {host} gave no category_scores to compare with min_score {spec.min_score:g}")
            scores = {category: result.category_scores.get(category) for category in candidates}
            counted |= {category: score for category, score in scores.items() if score is not None and score >= spec.min_score}
        else:
            counted |= {category: result.category_scores.get(category) for category in candidates if result.categories.get(category)}
            flagged_without_category |= result.flagged and not spec.categories and not any(result.categories.values())
    if counted:
        named_scores = ", ".join(category if score is None else f"{category} {score:.2f}" for category, score in counted.items())
        return Scan(hits=[DetectorHit(detector=detector_id, evidence=f"moderation flagged {named_scores}")])
    if flagged_without_category:
        return Scan(hits=[DetectorHit(detector=detector_id, evidence="moderation flagged (no category named)")])
    return Scan()


# --- LLM-as-judge -----------------------------------------------------------------------------


async def ask_judge(client: httpx.AsyncClient, detector_id: str, spec: JudgeSpec, env: Mapping[str, str], text: str, prompt: str) -> Scan:
    """Ask the guard model for a verdict on the exchange, and read it with the spec's patterns."""
    what = f"judge {spec.model}"
    body = {
        "model": spec.model,
        "messages": [{"role": "user", "content": spec.prompt_template.format(prompt=prompt, output=text)}],
        "temperature": 0,
        "max_tokens": spec.max_tokens,
    }
    try:
        host, answer = await _post(client, what, spec, env, "chat/completions", body)
        try:
            verdict = _ChatResponse.model_validate(answer).choices[0].message.content
        except ValidationError as exc:
            raise _CouldNotDecide(f"{what} at {host} answered no chat completion ({_first_problem(exc)})") from None
        return _judge_verdict(detector_id, spec, what, host, verdict)
    except _CouldNotDecide as failure:
        return Scan(undecided=[Undecided(detector=detector_id, reason=failure.reason)])


def _judge_verdict(detector_id: str, spec: JudgeSpec, what: str, host: str, verdict: str) -> Scan:
    if re.search(spec.unsafe_when, verdict, re.IGNORECASE):
        codes = _category_codes(spec.category_pattern, verdict)
        evidence = f"judge {spec.model} says unsafe" + (f": {', '.join(codes)}" if codes else "")
        return Scan(hits=[DetectorHit(detector=detector_id, evidence=evidence)])
    if re.search(spec.safe_when, verdict, re.IGNORECASE):
        return Scan()
    quote = verdict[:VERDICT_QUOTE_CHARS]
    raise _CouldNotDecide(f"{what} at {host}: verdict matched neither unsafe_when nor safe_when: {quote!r}")


def _category_codes(pattern: str | None, verdict: str) -> list[str]:
    """The category codes the verdict names (`S1`, `S10`), short, each once: never free text."""
    if pattern is None:
        return []
    codes = []
    for match in re.finditer(pattern, verdict):
        code = (match.group(1) if match.groups() else match.group(0)).strip()[:20]
        if code and code not in codes:
            codes.append(code)
    return codes[:MAX_CATEGORY_CODES]
