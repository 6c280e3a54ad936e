"""Bisection of the bad change: which platform change in the exposure window brought the harm.

Once an incident on the gateway is confirmed:
1. read the model's changes from the gateway's deployment log, the window being the runbook's
   `bisect.lookback` before the first signal up to it (the change already serving when the
   window opened comes first: it may be the cause too);
2. replay the incident's repro cases on each change as it served (its release and canary
   versions, system prompt and guardrails; no containment, no incident's hotfix), with the
   confirming checks' detectors and sampling, in deployment order;
3. a change is `bad` when a case reproduces on a version it served, `good` when every case was
   asked and judged clean on each, and `not_judged` when it could not be replayed (its version
   is gone) or a detector could not decide: never guessed;
4. the last good change is named, with the first bad one after it: the cause (and rollback's
   target, the last good change's release). An earlier bad run that a good change ended is
   history, not this incident's cause.

Nothing named says why: no deployment log, no repro cases, every change bad (the harm predates
the window), every change good (the cause is not a logged change). The gateway out of reach is
BisectionCannotRun: the incident notes it and goes on containing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from stanch.detectors.registry import Detectors
from stanch.gate.run import ERROR_CODE
from stanch.models.bisection import BisectInput, Cause, ChangeVerdict
from stanch.models.signals import ReproCase
from stanch.probe.client import ProbeFailed
from stanch.probe.endpoint import ChatEndpoint
from stanch.probe.sampling import Sampling, probe_case
from stanch.runbooks.schema import ConfirmCheck
from stanch.targets.base import TargetError
from stanch.targets.gateway import DEPLOYMENT_HEADER, GatewayTarget
from stanch.targets.registry import TargetRegistry


class BisectionCannotRun(Exception):
    """The gateway could not be asked at all (unreachable, refusing the log): nothing was judged."""


Heartbeat = Callable[[dict[str, Any]], None]


def _cases(repro: list[ReproCase], check: ConfirmCheck) -> list[ReproCase]:
    """Each case once (by its conversation), leaving out cases with nothing to send, as confirm does."""
    seen: dict[str, ReproCase] = {}
    for case in [*repro, *check.repro_cases()]:
        if case.prompt or case.messages:
            seen.setdefault(case.key(), case)
    return list(seen.values())


def _change(entry: dict[str, Any]) -> ChangeVerdict:
    prompt = entry.get("system_prompt")
    return ChangeVerdict(
        sequence=entry["sequence"],
        release_version=entry["release_version"],
        deployed_at=entry.get("deployed_at"),
        source=entry.get("source", ""),
        change_id=entry.get("change_id"),
        description=entry.get("description"),
        system_prompt_sha256=hashlib.sha256(prompt.encode()).hexdigest() if prompt else None,
        guardrails=len(entry.get("guardrails") or []),
    )


async def bisect_changes(input: BisectInput, targets: TargetRegistry, heartbeat: Heartbeat | None = None) -> Cause:
    """Replay the repro cases on every change of the window; the cause, or why none was named."""
    cause = Cause(ran=True, window_start=input.window_start, window_end=input.window_end)
    target = targets.get(input.target)
    if not isinstance(target, GatewayTarget):
        cause.note = f"no deployment log: the target ({input.target.adapter}) is not the gateway"
        return cause
    checks = [check for check in input.checks if check.kind == "probe"]
    plans = [(check, _cases(input.repro, check)) for check in checks]
    plans = [(check, cases) for check, cases in plans if cases]
    if not plans:
        cause.note = "no repro cases to replay: the signals carried none and the runbook's probe checks write none"
        return cause
    detectors = Detectors(specs=input.detector_specs)
    try:
        for check, _ in plans:
            detectors.check_names(check.detectors)
    except ValueError as unknown:
        cause.note = f"the repro cases cannot be judged: {unknown}"
        return cause
    model = input.target.model
    try:
        log = await target.deployments(model, since=input.window_start.isoformat(), until=input.window_end.isoformat())
    except TargetError as error:
        if "HTTP 404" in str(error):  # an unknown model, or a gateway from before the log
            cause.note = f"no deployment log for {model} on the gateway"
            return cause
        raise BisectionCannotRun(str(error)) from None
    if not log:
        cause.note = f"no deployment log: the gateway recorded no change of {model} in the window"
        return cause
    if len(log) > input.max_changes:
        cause.note = f"the {len(log) - input.max_changes} oldest changes of the window were left out (bisect.max_changes)"
        log = log[-input.max_changes :]
    for done, entry in enumerate(log):
        progress = {"changes_done": done, "changes": len(log)}
        if heartbeat:
            heartbeat(progress)
        change = _change(entry)
        # The release and every canary the change served: a canary's share of users got it too.
        served = [change.release_version, *sorted(entry.get("canary_weights") or {})]
        release = target.deployment_chat_endpoint(model, change.sequence)
        endpoints = {
            version: replace(release, headers={**release.headers, DEPLOYMENT_HEADER: f"{change.sequence}@{version}"}) for version in served
        }
        # A heartbeat after every case probed: cases x samples judged by a model can outlast the heartbeat timeout.
        case_probed = partial(heartbeat, progress) if heartbeat else (lambda: None)
        await judge_change(change, endpoints, plans, detectors, input.incident_id, case_probed)
        cause.considered.append(change)
    return named(cause)


async def judge_change(
    change: ChangeVerdict,
    endpoints: dict[str, ChatEndpoint],
    plans: list[tuple[ConfirmCheck, list[ReproCase]]],
    detectors: Detectors,
    incident_id: str,
    case_probed: Callable[[], None] = lambda: None,
) -> None:
    """Bad when a case reproduces on a version it served; good only when every case was judged
    clean on every one; else not judged, with the first reason."""
    unsure: list[str] = []
    for version, endpoint in endpoints.items():
        harm, doubt = await judge_version(endpoint, plans, detectors, incident_id, case_probed)
        on = f" on version {version}" if len(endpoints) > 1 else ""
        if harm:
            change.verdict, change.reason = "bad", harm + on
            return
        if doubt:
            unsure.append(doubt + on)
    if unsure:
        change.reason = unsure[0]
        return
    change.verdict = "good"
    change.reason = f"no harm found by {', '.join(sorted({n for check, _ in plans for n in check.detectors}))}"


async def judge_version(
    endpoint: ChatEndpoint,
    plans: list[tuple[ConfirmCheck, list[ReproCase]]],
    detectors: Detectors,
    incident_id: str,
    case_probed: Callable[[], None] = lambda: None,
) -> tuple[str, str]:
    """(the harm found, else ""; why it could not be judged, else ""). `case_probed` is called
    after each case: the activity's heartbeat."""
    doubt = ""
    for check, cases in plans:
        for case in cases:
            try:
                probe = await probe_case(
                    endpoint,
                    case.question(),
                    detectors=detectors,
                    names=check.detectors,
                    sampling=Sampling.of(check),
                    incident_id=incident_id,
                    tools=case.tools,
                )
            except ProbeFailed as failure:
                if failure.status_code is None:
                    raise BisectionCannotRun(f"the gateway could not be asked: {failure}") from None
                # Its status and error code only: an upstream's message may echo the prompt, and causes are kept.
                code = f" {failure.code}" if failure.code and ERROR_CODE.fullmatch(failure.code) else ""
                return "", f"could not be replayed: the gateway answered HTTP {failure.status_code}{code}"
            case_probed()
            if probe.reproduced:
                return f"{probe.tally()}: {', '.join(probe.detectors)} found harm", ""
            if probe.undecided:
                doubt = doubt or f"could not decide: {'; '.join(probe.undecided_reasons)}"
            elif probe.samples and probe.refused == len(probe.samples):
                doubt = doubt or "every sample was refused: the change was not reached"
    return "", doubt


def named(cause: Cause) -> Cause:
    """The first bad change after the last good one, and that good one; or why none is named.

    The harm being confirmed now, the bad run that matters is the latest: a change that did harm
    once and was followed by a good one (a fix) is history, not this incident's cause."""
    considered = cause.considered
    bad = [i for i, change in enumerate(considered) if change.verdict == "bad"]
    if not bad:
        if any(change.verdict == "good" for change in considered):
            cause.note = _joined(cause.note, "every change that could be judged was good: the cause is not a logged change")
        else:
            cause.note = _joined(cause.note, "no change could be judged")
        return cause
    good = [i for i, change in enumerate(considered) if change.verdict == "good" and i < bad[-1]]
    if not good:  # the change in force when the window opened already did harm, or could not be judged
        cause.note = _joined(
            cause.note,
            f"no good change before {considered[bad[0]].describe()}: the harm may predate the window (widen bisect.lookback)",
        )
        return cause
    last_good = good[-1]
    first_bad = next(i for i in bad if i > last_good)
    cause.first_bad, cause.last_good = considered[first_bad].sequence, considered[last_good].sequence
    good_release, bad_release = considered[last_good].release_version, considered[first_bad].release_version
    if good_release == bad_release:
        # The bad change kept the release (a system prompt or guardrail change): pinning it would
        # keep serving the bad change, so rollback goes back as it did before bisection.
        cause.note = _joined(
            cause.note,
            f"the last good change served the same version {good_release} as the bad one: a version rollback cannot undo a "
            "system prompt or guardrail change, so rollback does not pin it",
        )
    else:
        cause.last_good_version = good_release
    cause.unjudged_between = [change.sequence for change in considered[last_good + 1 : first_bad]]
    return cause


def _joined(first: str, second: str) -> str:
    return f"{first}; {second}" if first else second
