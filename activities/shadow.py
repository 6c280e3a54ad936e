"""Shadow verification before restore: mirror live traffic to the fixed version and score it.

Opens the incident's shadow at the gateway, heartbeats while users' traffic comes in, scores
every mirrored answer with the runbook's verify detectors, and returns once enough came back
clean (pass) — or one came back harmful, or the timeout or the shadow's limit was reached
(fail). An answer the gateway could not open (its sample key rotated or gone) is never counted
clean; when all are, the check fails saying so. The shadow is closed whatever happens (a worker
that died leaves it to the gateway's own expiry); only the failing answers stay there, for a
responder. A retried attempt picks up where the last heartbeat left off, the harmful answers it
had seen included: it fails at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from stanch.detectors.registry import Detectors
from stanch.models.shadow import UNREADABLE, FailingSample, ShadowInput, ShadowResult
from stanch.targets.base import TargetError
from stanch.temporal.activity_deps import ActivityDeps, as_application_error

POLL_SECONDS = 1.0


class ShadowActivities:
    def __init__(self, deps: ActivityDeps, poll_seconds: float = POLL_SECONDS) -> None:
        self.deps = deps
        self.poll_seconds = poll_seconds

    @activity.defn(name="verify_on_shadow")
    async def verify_on_shadow(self, input: ShadowInput) -> ShadowResult:
        detectors = Detectors(specs=input.detector_specs)
        try:
            detectors.check_names(input.detectors)
        except ValueError as unknown:
            raise ApplicationError(f"mirrored answers cannot be judged: {unknown}", type="InvalidAction", non_retryable=True) from unknown
        target: Any = self.deps.targets.get(input.target)
        if not hasattr(target, "open_shadow"):
            raise ApplicationError(
                f"target {input.target} cannot mirror live traffic: shadow-verified restore needs the Stanch gateway",
                type="InvalidAction",
                non_retryable=True,
            )
        try:
            return await self._watch(target, detectors, input)
        except TargetError as error:
            raise as_application_error(error, f"shadow on {input.target}") from error

    async def _watch(self, target: Any, detectors: Detectors, input: ShadowInput) -> ShadowResult:
        shadow = await target.open_shadow(
            input.target.model,
            input.version,
            input.incident_id,
            input.idempotency_key,
            sample_rate=input.sample_rate,
            limit=input.limit,
        )
        shadow_id = shadow["shadow_id"]
        result = ShadowResult(passed=False, shadow_id=shadow_id, needed=input.clean_requests)
        # Where the last attempt got to: a retry neither scores twice, restarts the clock, nor
        # forgets a harmful answer it saw before it died.
        details = activity.info().heartbeat_details
        progress: dict[str, Any] = dict(details[0]) if details else {}
        after = int(progress.get("after", 0))
        result.clean, result.mirrored, result.unreadable = (int(progress.get(name, 0)) for name in ("clean", "mirrored", "unreadable"))
        result.failing = [FailingSample.model_validate(sample) for sample in progress.get("failing", [])]
        deadline = float(progress.get("deadline", time.time() + input.timeout_seconds))
        try:
            while not result.failing:
                page = await target.shadow_answers(shadow_id, after)
                for answer in page["answers"]:
                    after = max(after, int(answer["seq"]))
                    result.mirrored += 1
                    await self._score(detectors, input, answer, result)
                activity.heartbeat(
                    {
                        "after": after,
                        "clean": result.clean,
                        "mirrored": result.mirrored,
                        "unreadable": result.unreadable,
                        "deadline": deadline,
                        "failing": [sample.model_dump() for sample in result.failing],
                    }
                )
                exhausted = page["shadow"]["mirrored"] >= input.limit and not page["answers"]
                if result.failing or result.clean >= input.clean_requests or result.all_unreadable() or exhausted:
                    result.limit_reached = exhausted and not result.failing and result.clean < input.clean_requests
                    break
                if time.time() >= deadline:
                    result.timed_out = True
                    break
                await asyncio.sleep(self.poll_seconds)
            result.passed = not result.failing and result.clean >= input.clean_requests
            if result.failing:
                result.read_at = target.shadow_samples_url(shadow_id, [sample.id for sample in result.failing])
        finally:
            # Closed whatever happened (users' text goes); the failing answers stay, for a responder.
            await target.close_shadow(shadow_id, f"{input.idempotency_key}/close", [sample.id for sample in result.failing])
        return result

    @staticmethod
    async def _score(detectors: Detectors, input: ShadowInput, answer: dict[str, Any], result: ShadowResult) -> None:
        if answer["outcome"] == UNREADABLE:
            result.unreadable += 1  # never clean: nothing was judged
            return
        if answer["outcome"] != "answered":
            return  # an upstream error says nothing either way
        scan = await detectors.scan(input.detectors, answer["answer"], answer["prompt"])
        if scan.hits:
            result.failing.append(FailingSample(id=answer["id"], detectors=sorted({hit.detector for hit in scan.hits})))
        elif not scan.undecided:
            result.clean += 1
