"""A kill switch as an application sees it: a real OpenFeature client (openfeature-sdk with the
flagd provider in FILE mode, watching the flag file as a service would) evaluates the flag while
Stanch's real containment and restore activities drive the flagd target."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from temporalio.testing import ActivityEnvironment

from activities.contain import ContainActivities
from activities.restore import RestoreActivities
from stanch.config.settings import Settings
from stanch.models.actions import ActionSpec, TargetRef
from stanch.models.activity_io import ApplyInput, UndoInput
from stanch.targets.flagd import FlagdTarget
from stanch.targets.registry import TargetRegistry
from stanch.temporal.activity_deps import ActivityDeps

pytestmark = pytest.mark.e2e

FLAG = "support-bot-chat"
BETA_USER = EvaluationContext(targeting_key="ann", attributes={"email": "ann@beta.example"})
ANY_USER = EvaluationContext(targeting_key="bob", attributes={"email": "bob@example.com"})
FLAGS = {
    "$schema": "https://flagd.dev/schema/v0/flags.json",
    "flags": {
        FLAG: {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "on",
            # Beta users get the feature by rule: the kill switch must win over it too.
            "targeting": {"if": [{"in": ["@beta.example", {"var": "email"}]}, "on", None]},
        },
        "support-bot-tone": {"state": "ENABLED", "variants": {"friendly": "friendly", "formal": "formal"}, "defaultVariant": "friendly"},
    },
}


@pytest.fixture
def flag_file(tmp_path: Path) -> Path:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(FLAGS, indent=2) + "\n")
    return path


@pytest.fixture
def feature_client(flag_file: Path) -> Iterator[OpenFeatureClient]:
    """An application's OpenFeature client, its flagd provider re-reading the file every 100 ms."""
    domain = f"stanch-e2e-{uuid.uuid4()}"
    provider = FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(flag_file), deadline_ms=100)
    api.set_provider_and_wait(provider, domain=domain)
    yield api.get_client(domain=domain)
    provider.shutdown()


def chat_enabled(client: OpenFeatureClient, who: EvaluationContext) -> bool:
    return client.get_boolean_value(FLAG, True, who)


def until_chat_is(client: OpenFeatureClient, expected: bool, flag_file: Path, timeout: float = 10.0) -> None:
    """Wait until both users see `expected`: the provider notices the file by its modification time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if chat_enabled(client, BETA_USER) is expected and chat_enabled(client, ANY_USER) is expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"the OpenFeature client never saw {FLAG}={expected} within {timeout}s; the file says {flag_file.read_text()}")


async def test_kill_switch_flips_for_an_openfeature_client_and_restore_flips_it_back(tmp_path: Path, flag_file: Path, feature_client):
    assert chat_enabled(feature_client, BETA_USER) is True and chat_enabled(feature_client, ANY_USER) is True
    details = feature_client.get_boolean_details(FLAG, True, BETA_USER)
    assert details.reason == "TARGETING_MATCH", "the beta rule serves the feature before the incident"

    flags = FlagdTarget.from_config(FlagdTarget.Config(file=Path("flags.json")), name="flags", base=tmp_path, env={})
    settings = Settings(home=tmp_path / "home")
    deps = ActivityDeps(settings=settings, targets=TargetRegistry(settings, extra={"flags": flags}))
    target = TargetRef(adapter="flags", model="support-bot", version="2")
    contain = ApplyInput(
        incident_id="inc-flagd-1",
        occurrence="inc-flagd-1",
        stage="contain",
        index=0,
        target=target,
        action=ActionSpec(kind="disable_feature", params={"flag": FLAG, "variant": "off"}, description="kill the chat feature"),
    )
    environment = ActivityEnvironment()

    applied = await environment.run(ContainActivities(deps).apply_containment, contain)
    assert applied.reversible and applied.result["default_variant"] == "off"
    until_chat_is(feature_client, False, flag_file)
    killed = feature_client.get_boolean_details(FLAG, True, BETA_USER)
    assert killed.value is False and killed.variant == "off", "the kill switch wins over the beta rule"
    assert killed.flag_metadata.get("stanchIncident") == "inc-flagd-1", "the client can tell which incident switched it off"

    again = await environment.run(ContainActivities(deps).apply_containment, contain)
    assert again.result == applied.result and again.inverse == applied.inverse, "a retried activity applies nothing twice"

    evidence = await flags.state("support-bot")
    assert evidence["flags"][FLAG]["defaultVariant"] == "off" and [e["key"] for e in evidence["stanch_ledger"]] == [applied.idempotency_key]

    undone = await environment.run(RestoreActivities(deps).undo_action, UndoInput(incident_id="inc-flagd-1", applied=applied))
    assert undone.undone_at is not None
    until_chat_is(feature_client, True, flag_file)
    assert feature_client.get_boolean_details(FLAG, True, BETA_USER).reason == "TARGETING_MATCH", "the beta rule is back"
    assert json.loads(flag_file.read_text()) == FLAGS, "restore leaves the file exactly as it was"
