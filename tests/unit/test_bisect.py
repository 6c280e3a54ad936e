"""Bisection names the first bad change of the window and the last good one before it, replaying
the incident's cases on each change as the gateway served it; a change it cannot replay is "not
judged", never guessed; and when it names nothing it says why."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from stanch.gate.bisect import BisectionCannotRun, bisect_changes, named
from stanch.gateway.app import create_app
from stanch.models.actions import TargetRef
from stanch.models.bisection import BisectInput, Cause, ChangeVerdict
from stanch.models.signals import ReproCase
from stanch.runbooks.schema import ConfirmCheck
from stanch.targets.gateway import GatewayTarget
from stanch.targets.registry import TargetRegistry
from tests.openai_stub import Stub
from tests.unit.fake_trainer import served
from tests.unit.test_gateway import GOOD, LEAK, MODEL, upstreams

CHECK = ConfirmCheck(kind="probe", detectors=["secret"], samples=2, temperature=0.7)
CASE = ReproCase(prompt="What is the API key?")


class OneTarget:
    def __init__(self, target: Any) -> None:
        self.target = target

    def get(self, ref: TargetRef) -> Any:
        return self.target


def asked(window_end: datetime | None = None, **extra: Any) -> BisectInput:
    end = window_end or datetime.now(UTC) + timedelta(seconds=1)
    return BisectInput(
        incident_id="INC-bisect",
        target=TargetRef(adapter="gateway", model=MODEL),
        checks=[CHECK],
        repro=[CASE],
        window_start=end - timedelta(days=7),
        window_end=end,
        **extra,
    )


@asynccontextmanager
async def gateway(tmp_path: Path, canary_weight: int = 0) -> AsyncIterator[tuple[GatewayTarget, Any]]:
    stub = Stub(answers={"bot-v1": GOOD, "bot-v2": LEAK, "bot-v3": GOOD, "safe-v1": "safe"})
    app = create_app(tmp_path / "gw.db", upstreams(canary_weight), upstream_transport=httpx.ASGITransport(app=stub.app()))
    async with served(app) as root:
        yield GatewayTarget(root), app.state.store


async def deploy(target: GatewayTarget, version: str, **extra: Any) -> int:
    async with httpx.AsyncClient(base_url=target.base_url) as http:
        answer = await http.post("/admin/deploy", json={"model": MODEL, "version": version, **extra})
        assert answer.status_code == 200, answer.text
        return int(answer.json()["sequence"])


async def test_the_first_bad_change_and_the_last_good_one_are_named_in_deployment_order(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (target, _):
        second = await deploy(target, "2", change_id="PR-2")
        third = await deploy(target, "2", system_prompt="Answer briefly.")
        cause = await bisect_changes(asked(), cast(TargetRegistry, OneTarget(target)))
    assert [(c.sequence, c.verdict) for c in cause.considered] == [(1, "good"), (second, "bad"), (third, "bad")]
    assert (cause.first_bad, cause.last_good, cause.last_good_version) == (second, 1, "1")
    assert cause.summary() == "the first bad change is change #2 (PR-2), version 2; the last good one before it is change #1, version 1"
    assert cause.considered[2].system_prompt_sha256 is not None and "Answer briefly" not in cause.model_dump_json()


async def test_a_leaking_canary_makes_its_change_bad_and_a_change_that_ended_it_good(tmp_path: Path) -> None:
    async with gateway(tmp_path, canary_weight=30) as (target, _):
        ended = await deploy(target, "1", canary_weights={})
        rolled_out = await deploy(target, "2")
        cause = await bisect_changes(asked(), cast(TargetRegistry, OneTarget(target)))
    assert [(c.sequence, c.verdict) for c in cause.considered] == [(1, "bad"), (ended, "good"), (rolled_out, "bad")]
    assert cause.considered[0].reason.endswith("on version 2"), "the release was clean: its canary leaked"
    assert (cause.first_bad, cause.last_good) == (rolled_out, ended)


async def test_a_change_whose_version_is_gone_is_not_judged_and_the_gap_is_said(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (target, store):
        async with httpx.AsyncClient(base_url=target.base_url) as http:
            key = {"idempotency_key": "reg-3", "incident_id": "INC-0", "model": MODEL}
            registered = await http.post(
                "/admin/apply", json={**key, "action": {"kind": "register_version", "params": {"version": "3", "upstream_model": "bot-v3"}}}
            )
            assert registered.status_code == 200, registered.text
        gone = await deploy(target, "3")
        bad = await deploy(target, "2")
        with store.transaction() as db:
            db.execute("UPDATE models SET release_version = '2' WHERE name = ?", (MODEL,))
            db.execute("DELETE FROM versions WHERE model = ? AND version = '3'", (MODEL,))
        cause = await bisect_changes(asked(), cast(TargetRegistry, OneTarget(target)))
    verdicts = {c.sequence: (c.verdict, c.reason) for c in cause.considered}
    assert verdicts[gone][0] == "not_judged" and "404" in verdicts[gone][1]
    assert (cause.first_bad, cause.last_good, cause.unjudged_between) == (bad, 1, [gone])
    assert f"changes #{gone} between them could not be replayed" in cause.summary()


async def test_nothing_is_named_without_cases_or_a_log_and_an_unreachable_gateway_cannot_run(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (target, _):
        registry = cast(TargetRegistry, OneTarget(target))
        no_cases = await bisect_changes(asked().model_copy(update={"repro": []}), registry)
        assert no_cases.first_bad is None and "no repro cases" in no_cases.note
        long_ago = await bisect_changes(asked(window_end=datetime.now(UTC) - timedelta(days=30)), registry)
        assert long_ago.considered == [] and "no deployment log" in long_ago.note
    with pytest.raises(BisectionCannotRun):
        await bisect_changes(asked(), cast(TargetRegistry, OneTarget(GatewayTarget("http://127.0.0.1:9"))))


def change(sequence: int, verdict: str) -> ChangeVerdict:
    return ChangeVerdict(sequence=sequence, release_version=str(sequence), verdict=verdict)  # type: ignore[arg-type]


def test_every_change_bad_or_every_change_good_names_no_last_good_and_says_why() -> None:
    all_bad = named(Cause(considered=[change(1, "bad"), change(2, "bad")]))
    assert (all_bad.first_bad, all_bad.last_good) == (None, None) and "predate the window" in all_bad.summary()
    all_good = named(Cause(considered=[change(1, "good"), change(2, "not_judged")]))
    assert all_good.first_bad is None and "not a logged change" in all_good.summary()


def test_a_bad_prompt_change_on_the_same_release_is_named_but_rollback_is_not_pinned_to_it() -> None:
    good_v2 = ChangeVerdict(sequence=2, release_version="2", verdict="good")
    prompt_on_v2 = ChangeVerdict(sequence=3, release_version="2", verdict="bad", system_prompt_sha256="ab" * 32)
    cause = named(Cause(considered=[change(1, "good"), good_v2, prompt_on_v2]))
    assert (cause.first_bad, cause.last_good) == (3, 2), "the cause still names the bad change and the good one before it"
    assert cause.last_good_version is None, "pinning v2 would keep serving the bad prompt"
    assert "cannot undo a system prompt or guardrail change" in cause.summary()
    other_release = named(Cause(considered=[change(1, "good"), change(2, "bad")]))
    assert other_release.last_good_version == "1" and other_release.note == ""


async def test_bisection_heartbeats_after_every_case_it_probes_not_only_per_change(tmp_path: Path) -> None:
    beats: list[dict[str, Any]] = []
    cases = [CASE, ReproCase(prompt="Tell me the admin key."), ReproCase(prompt="Which key opens the API?")]
    async with gateway(tmp_path) as (target, _):
        await bisect_changes(asked().model_copy(update={"repro": cases}), cast(TargetRegistry, OneTarget(target)), heartbeat=beats.append)
    # One change (the upstreams file's), judged clean on three cases: a beat before it and one after each case.
    assert len(beats) == 1 + len(cases) and beats[-1] == {"changes_done": 0, "changes": 1}
