"""Blast radius: who the model served in the exposure window, and who got the harm.

The gateway counts every request per version and the users and tenants it served; when the team
switched content sampling on, it also kept (sealed) the answers. Each sampled answer is scored
again with the detectors that confirmed the incident. What comes back to the workflow, and so
into history, is counts and ids: never a prompt or an answer.
"""

from __future__ import annotations

from temporalio import activity

from stanch.detectors.registry import Detectors
from stanch.models.exposure import IDS_KEPT_AT_MOST, Exposure, ExposureInput
from stanch.targets import gateway_exposure
from stanch.targets.base import TargetError
from stanch.temporal.activity_deps import ActivityDeps, as_application_error


class ExposureActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="measure_exposure")
    async def measure_exposure(self, input: ExposureInput) -> Exposure:
        window = Exposure(since=input.since, until=input.until, detectors=input.detectors)
        try:
            target = self.deps.targets.get(input.target)
            if not gateway_exposure.keeps_samples(target):
                window.detail = f"the {input.target.adapter} control plane keeps no record of who it served"
                return window
            return await self.measure(target, input, window)  # type: ignore[arg-type]  # a gateway: checked above
        except TargetError as error:
            raise as_application_error(error, f"reading the exposure of {input.target}") from error

    async def measure(self, target: gateway_exposure.GatewayTarget, input: ExposureInput, window: Exposure) -> Exposure:
        model = input.target.model
        served = await gateway_exposure.served(target, model, input.since, input.until)
        versions = served.get("versions") or []
        users = {name for v in versions for name in v.get("users") or []}
        tenants = {name for v in versions for name in v.get("tenants") or []}
        window.versions = [v["version"] for v in versions]
        window.requests_exposed = sum(int(v.get("requests") or 0) for v in versions)
        window.users_exposed, window.tenants_exposed = len(users), len(tenants)
        if not served.get("content_sampled"):
            window.detail = "the gateway samples no content (STANCH_GATEWAY_SAMPLES=content turns it on), so who was affected is unknown"
            return window
        if not input.detectors:
            window.detail = "no detector confirmed the harm, so the sampled answers cannot be scored"
            return window
        return await self.rescore(target, input, window)

    async def rescore(self, target: gateway_exposure.GatewayTarget, input: ExposureInput, window: Exposure) -> Exposure:
        detectors = Detectors(specs=input.detector_specs)
        try:
            names = detectors.check_names(input.detectors)
        except ValueError as unknown:
            window.detail = f"the sampled answers cannot be scored: {unknown}"
            return window
        users: set[str] = set()
        tenants: set[str] = set()
        versions: set[str] = set()
        requests: list[str] = []
        undecided = unreadable = 0
        async for page in gateway_exposure.sampled(target, input.target.model, input.since, input.until):
            unreadable += int(page.get("unreadable") or 0)
            for sample in page.get("samples") or []:
                window.samples_scored += 1
                scan = await detectors.scan(names, sample.get("answer") or "", prompt=sample.get("prompt") or "")
                if scan.harmful:
                    requests.append(sample["request_id"])
                    versions.add(sample["version"])
                    users.update([sample["user"]] if sample.get("user") else [])
                    tenants.update([sample["tenant"]] if sample.get("tenant") else [])
                elif scan.undecided:
                    undecided += 1
                # After every answer: one scored by a judge model may take most of a minute.
                activity.heartbeat({"samples_scored": window.samples_scored})
        window.measured = True
        window.requests_affected, window.users_affected, window.tenants_affected = len(requests), len(users), len(tenants)
        window.affected_versions = sorted(versions)
        window.affected_user_ids = sorted(users)[:IDS_KEPT_AT_MOST]
        window.affected_tenant_ids = sorted(tenants)[:IDS_KEPT_AT_MOST]
        window.affected_request_ids = requests[:IDS_KEPT_AT_MOST]
        notes = [f"{len(requests)} of {window.samples_scored} sampled answers showed the harm"]
        if window.samples_scored < window.requests_exposed:
            notes.append(f"{window.requests_exposed - window.samples_scored} requests served were not sampled (bound or retention)")
        if undecided:
            notes.append(f"{undecided} answers a detector could not decide")
        if unreadable:
            notes.append(f"{unreadable} samples sealed under another key could not be read")
        window.detail = "; ".join(notes)
        return window
