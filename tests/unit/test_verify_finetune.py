"""A fine-tune is only as good as its training file: verification, through the real gateway in
front of the demo upstream (which also trains), passes a fine-tune trained on the incident's
repro case and fails one whose file lacks it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import uvicorn
from temporalio.testing import ActivityEnvironment

from activities.hotfix import HotfixActivities
from activities.verify import VerifyActivities
from stanch.config.settings import Settings
from stanch.demo_upstream.upstreams_file import upstreams_document
from stanch.gateway.app import create_app as gateway_app
from stanch.gateway.upstreams import UpstreamsFile
from stanch.models.actions import TargetRef
from stanch.models.activity_io import VerifyInput
from stanch.targets.base import Target
from stanch.targets.gateway import GatewayTarget
from stanch.targets.registry import TargetRegistry
from stanch.targets.trainer import OpenAITrainer
from stanch.temporal.activity_deps import ActivityDeps
from tests.unit.fake_trainer import demo_upstream, served
from tests.unit.test_hotfix_finetune import LEAKS, REFUSAL, finetune_input

OTHER_EXAMPLE = {"messages": [{"role": "user", "content": "What is your refund policy?"}, {"role": "assistant", "content": "30 days."}]}


@asynccontextmanager
async def served_gateway(db: Path, upstream: str) -> AsyncIterator[str]:
    async with served(gateway_app(db, UpstreamsFile.model_validate(upstreams_document(upstream, None)))) as root:
        yield root


@pytest.mark.parametrize(("trained_on_the_repro_case", "verified"), [(True, True), (False, False)], ids=["with-the-case", "without-it"])
async def test_verification_passes_only_a_fine_tune_that_learned_the_repro_case(
    tmp_path: Path, trained_on_the_repro_case: bool, verified: bool
) -> None:
    async with demo_upstream(tmp_path / "demo") as upstream, served_gateway(tmp_path / "gateway.db", upstream) as gateway_url:
        settings = Settings(home=tmp_path)
        targets: dict[str, Target] = {
            "gateway": GatewayTarget(gateway_url),
            "trainer": OpenAITrainer(OpenAITrainer.Config(base_url=upstream)),
        }
        deps = ActivityDeps(settings, TargetRegistry(settings, targets, env={}))
        training = LEAKS[:1] if trained_on_the_repro_case else []
        fix = finetune_input({"answer": REFUSAL, "base_version": "2", "examples": [OTHER_EXAMPLE]}, training)
        applied = await ActivityEnvironment().run(HotfixActivities(deps).apply_hotfix, fix)

        check = VerifyInput(
            incident_id="inc-7",
            target=TargetRef(model="support-bot", version="2"),
            detectors=["secret", "pii"],
            repro=LEAKS[:1],
            include_regression_suite=False,
            version="release",
        )
        result = await ActivityEnvironment().run(VerifyActivities(deps).verify_fix, check)

    assert result.version == applied.result["version"], "verification probed the fine-tuned release"
    assert result.passed is verified, result.cases
