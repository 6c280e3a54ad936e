"""Blast radius as an incident uses it: the measure over a real (in-process) gateway, the
`affected_users_at_least` condition in severity and seriousness, and the review's section."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.exposure import ExposureActivities
from stanch.models.actions import TargetRef
from stanch.models.exposure import Exposure, ExposureInput
from stanch.models.signals import Severity, Signal
from stanch.review.exposure import blast_radius_lines
from stanch.runbooks.conditions import condition_holds, describe, grade, seriousness
from stanch.runbooks.loader import default_runbooks_dir, load_runbook
from stanch.runbooks.schema import Condition
from stanch.targets.gateway import GatewayTarget
from tests.openai_stub import Stub
from tests.unit.test_gateway import LEAK, MODEL, SECRET, chat, upstreams

KEY = base64.b64encode(bytes(range(32))).decode()
SIGNAL = Signal(signal_id="s1", sender="alertmanager", title="support-bot leaks", labels={"alertname": "PiiLeak"})


def test_affected_users_at_least_holds_from_the_count_and_never_unmeasured() -> None:
    condition = Condition(affected_users_at_least=7)
    assert condition_holds(condition, signals=[SIGNAL], affected_users=7)
    assert not condition_holds(condition, signals=[SIGNAL], affected_users=6)
    assert not condition_holds(condition, signals=[SIGNAL], affected_users=None)
    assert describe(condition) == "at least 7 users affected"


@pytest.mark.parametrize("runbook", ["pii-leak", "training-data-leak"])
def test_the_leak_runbooks_call_a_leak_to_a_thousand_users_widespread_with_a_two_day_clock(runbook: str) -> None:
    book = load_runbook(default_runbooks_dir() / f"{runbook}.yaml").runbook
    assert book.exposure.lookback == timedelta(days=7)
    severity, reasons = grade(book, [SIGNAL], ["pii"], affected_users=1000)
    assert severity == Severity.critical and any("blast radius" in reason for reason in reasons)
    serious, days, why = seriousness(book, [SIGNAL], severity, ["pii"], affected_users=1000)
    assert (serious, days) == (True, 2) and "Art. 73(3)" in why
    assert seriousness(book, [SIGNAL], Severity.high, ["pii"], affected_users=7)[0] is False


async def measure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], heartbeats: list | None = None) -> Exposure:
    """Three users get the leaking v2, one the clean v1, through a gateway; then the measure
    (its heartbeats' details go to `heartbeats`)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from stanch.gateway.app import create_app

    stub = Stub(answers={"bot-v1": "Happy to help with your own account.", "bot-v2": LEAK, "safe-v1": "safe"})
    app = create_app(tmp_path / "gw.db", upstreams(weight=0), upstream_transport=httpx.ASGITransport(app=stub.app()))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as gw:
            await gw.post("/admin/deploy", json={"model": MODEL, "version": "2"})
            for user in ("ann", "ben", "cy"):
                assert (await chat(gw, headers={"x-client-id": user, "x-tenant-id": f"tenant-{user}"})).status_code == 200
            await gw.post("/admin/deploy", json={"model": MODEL, "version": "1"})
            assert (await chat(gw, headers={"x-client-id": "dee", "x-tenant-id": "tenant-dee"})).status_code == 200
        target = GatewayTarget("http://gateway", transport=httpx.ASGITransport(app=app))
        deps = SimpleNamespace(targets=SimpleNamespace(get=lambda ref: target))
        now = datetime.now(UTC)
        asked = ExposureInput(
            incident_id="inc-1", target=TargetRef(model=MODEL), since=now - timedelta(days=7), until=now, detectors=["secret"]
        )
        activity_env = ActivityEnvironment()
        activity_env.on_heartbeat = lambda *details: (heartbeats if heartbeats is not None else []).extend(details)
        return await activity_env.run(ExposureActivities(deps).measure_exposure, asked)  # type: ignore[arg-type]


async def test_sampled_answers_are_rescored_and_only_counts_and_ids_come_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    heartbeats: list = []
    content = {"STANCH_GATEWAY_SAMPLES": "content", "STANCH_GATEWAY_SAMPLE_KEY": KEY}
    exposure = await measure(tmp_path, monkeypatch, content, heartbeats)
    # A heartbeat after every answer scored: a slow (judge) detector never outlasts the heartbeat timeout.
    assert [beat["samples_scored"] for beat in heartbeats] == [1, 2, 3, 4]
    assert exposure.measured and exposure.requests_exposed == 4 and exposure.users_exposed == 4
    assert (exposure.users_affected, exposure.affected_user_ids) == (3, ["ann", "ben", "cy"])
    assert exposure.affected_tenant_ids == ["tenant-ann", "tenant-ben", "tenant-cy"] and exposure.affected_versions == ["2"]
    assert SECRET not in exposure.model_dump_json() and "API key" not in exposure.model_dump_json()
    section = "\n".join(blast_radius_lines(exposure))
    assert "3 users" in section and "Deployers to inform (EU AI Act Art. 20)" in section and "`tenant-cy`" in section


async def test_without_content_sampling_exposure_is_counted_and_affected_not_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exposure = await measure(tmp_path, monkeypatch, {"STANCH_GATEWAY_SAMPLES": "counts"})
    assert not exposure.measured and exposure.users_affected is None
    assert (exposure.requests_exposed, exposure.users_exposed, exposure.tenants_exposed) == (4, 4, 4)
    assert "STANCH_GATEWAY_SAMPLES=content" in exposure.detail
    assert "**not measured**" in "\n".join(blast_radius_lines(exposure))
