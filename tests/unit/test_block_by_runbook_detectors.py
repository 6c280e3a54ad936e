"""A step blocking by a runbook's own detector carries its spec to the gateway, which runs it
there; a detector the gateway cannot get a verdict from blocks (unchecked is not safe)."""

from __future__ import annotations

from pathlib import Path

from stanch.detectors.specs import ModerationSpec
from stanch.models.actions import ActionSpec, TargetRef
from stanch.models.activity_io import ApplyInput
from stanch.targets.steps import rendered_action
from tests.openai_stub import Stub
from tests.unit.test_gateway import MODEL, apply, chat, content, running_gateway, upstreams

UNREACHABLE = ModerationSpec(base_url="http://127.0.0.1:9/v1", timeout_seconds=2)


def test_the_step_carries_the_spec_of_each_runbook_detector_it_names() -> None:
    step = ApplyInput(
        incident_id="INC-1",
        stage="contain",
        index=0,
        target=TargetRef(model=MODEL, version="2"),
        action=ActionSpec(kind="block_outputs", params={"detectors": ["pii", "moderation"]}),
        detector_specs={"moderation": UNREACHABLE},
    )
    params = rendered_action(step).params
    assert params["detectors"] == ["pii", "moderation"]
    assert params["detector_specs"] == {"moderation": UNREACHABLE.model_dump(mode="json")}, "built-ins need no spec"


async def test_a_service_detector_that_cannot_decide_blocks_the_answer(tmp_path: Path) -> None:
    stub = Stub(answers={"bot-v1": "A perfectly fine answer.", "bot-v2": "A perfectly fine answer.", "safe-v1": "fine"})
    async with running_gateway(tmp_path / "gw.db", stub, upstreams()) as gw:
        assert content(await chat(gw)) == "A perfectly fine answer."
        spec = {"moderation": UNREACHABLE.model_dump(mode="json")}
        applied = await apply(gw, "INC-7/contain/0", "block_outputs", detectors=["moderation"], detector_specs=spec)
        assert applied.status_code == 200, applied.text
        refused = await chat(gw)
        assert refused.status_code == 403
        assert "could not decide" in refused.json()["error"]["message"] and refused.json()["error"]["incident"] == "INC-7"
