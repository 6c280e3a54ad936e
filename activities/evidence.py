"""Evidence: snapshot what an investigation needs before the first change to the target.

EU AI Act Art. 73(6): no change that could hamper evaluating the cause before authorities
are told. The snapshot is canonical JSON, kept in the artefact store; its sha256 and location
go into workflow history.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from temporalio import activity

from stanch.models.actions import TargetRef
from stanch.models.activity_io import EvidenceInput, EvidenceResult
from stanch.targets.base import NoStateToSnapshot, TargetError
from stanch.temporal.activity_deps import ActivityDeps, as_application_error


class EvidenceActivities:
    def __init__(self, deps: ActivityDeps) -> None:
        self.deps = deps

    @activity.defn(name="snapshot_evidence")
    async def snapshot_evidence(self, input: EvidenceInput) -> EvidenceResult:
        target_state = await self.read_state(input.target)
        # A registry's alias history or a flag file is evidence too, when the runbook changes them.
        step_states = {ref.adapter: await self.read_state(ref, required=False) for ref in input.step_targets}
        snapshot = {
            "incident_id": input.incident_id,
            "occurrence": input.occurrence,
            "runbook": {"name": input.runbook, "sha256": input.runbook_sha256},
            "target": input.target.model_dump(mode="json"),
            "target_state": target_state,
            "step_target_states": step_states,
            "signals": [signal.model_dump(mode="json") for signal in input.signals],
            "repro": [case.model_dump(mode="json") for case in input.repro],
            "findings": [finding.model_dump(mode="json") for finding in input.findings],
            "taken_at": datetime.now(UTC).isoformat(),
        }
        body = json.dumps(snapshot, sort_keys=True, separators=(",", ":")).encode()
        # Into the artefact store, by content: any host with the same STANCH_ARTEFACTS reads it back
        # (`stanch audit export`), and a retried snapshot of the same bytes lands on the same key.
        stored = await self.deps.artefacts.put("evidence", body, name="snapshot.json")
        summary = {
            "served_version": target_state.get("served_version"),
            "release_version": target_state.get("release_version"),
            "signals": len(input.signals),
            "repro_cases": len(input.repro),
        }
        return EvidenceResult(sha256=stored.sha256, location=stored.location, summary=summary)

    async def read_state(self, target: TargetRef, required: bool = True) -> dict:
        """The target's state. A step's target that keeps none (a generic HTTP endpoint with no
        state URL: NoStateToSnapshot) says so in the snapshot. Any other failure fails the
        snapshot — retried if passing, else the workflow asks a human before any change."""
        try:
            return await self.deps.targets.get(target).state(target.model)
        except NoStateToSnapshot as error:
            if required:
                raise as_application_error(error, f"reading the state of {target}") from error
            return {"unavailable": str(error)}
        except TargetError as error:
            raise as_application_error(error, f"reading the state of {target}") from error
