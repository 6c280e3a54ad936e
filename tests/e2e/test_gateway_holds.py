"""Two incidents on one gateway model, end to end (issue 11, item 4): the real gateway process
(`stanch gateway`, with its admin token), Stanch's real contain and restore activities and the
gateway target over HTTP. Incidents A and B both disable web-search and block the same prompt
pattern; whichever is restored first, the other's protections stay; after both, the model is
as it was before either — also across a gateway restart between the two restores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import ActivityEnvironment

from activities.contain import ContainActivities
from activities.restore import RestoreActivities
from stanch.config.settings import Settings
from stanch.models.actions import ActionSpec, AppliedAction, TargetRef
from stanch.models.activity_io import ApplyInput, UndoInput
from stanch.targets.gateway import GatewayTarget
from stanch.targets.registry import TargetRegistry
from stanch.temporal.activity_deps import ActivityDeps
from tests.e2e.processes import Process, free_port, start_demo_models, stop_all, wait_http

pytestmark = pytest.mark.e2e

MODEL = "support-bot"
TOKEN = "e2e-admin-token"
CONTAINMENT = [
    ActionSpec(kind="disable_feature", params={"feature": "web-search"}),
    ActionSpec(kind="block_prompts", params={"patterns": ["(?i)api[ _-]?key"]}),
]


class Gateway:
    """`stanch gateway` on a free port over one SQLite file; restartable."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: Process | None = None
        self.models: list[Process] = []
        self.env = {"STANCH_HOME": str(self.folder), "STANCH_GATEWAY_ADMIN_TOKEN": TOKEN}
        self.env.update(start_demo_models(self.env, folder, self.models))

    def start(self) -> None:
        env = self.env
        self.process = Process("gateway", ["gateway", "--port", str(self.port), "--db", str(self.folder / "gateway.db")], env, self.folder)
        wait_http(f"{self.url}/healthz", self.process)

    def stop(self) -> None:
        if self.process is not None and not self.process.log.closed:
            self.process.stop()

    def admin(self, path: str) -> dict[str, Any]:
        answer = httpx.get(f"{self.url}{path}", params={"model": MODEL}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def chat(self, prompt: str, feature: str | None = None) -> httpx.Response:
        headers = {"x-feature": feature} if feature else {}
        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=headers)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    running = Gateway(tmp_path)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        stop_all(running.models)


def deps(gateway: Gateway, home: Path) -> ActivityDeps:
    settings = Settings(home=home, gateway_url=gateway.url)
    target = GatewayTarget(gateway.url, admin_token=TOKEN)
    return ActivityDeps(settings=settings, targets=TargetRegistry(settings, extra={"gateway": target}))


async def contain(activities: ContainActivities, incident: str) -> list[AppliedAction]:
    applied = []
    for index, action in enumerate(CONTAINMENT):
        step = ApplyInput(
            incident_id=incident,
            occurrence=f"{incident}@0a1b2c3d",
            stage="contain",
            index=index,
            target=TargetRef(model=MODEL),
            action=action,
        )
        applied.append(await ActivityEnvironment().run(activities.apply_containment, step))
    return applied


async def restore(activities: RestoreActivities, incident: str, applied: list[AppliedAction]) -> None:
    for action in reversed(applied):  # as the workflow's restore does: newest first
        undone = await ActivityEnvironment().run(activities.undo_action, UndoInput(incident_id=incident, applied=action))
        assert undone.undone_at is not None


def assert_contained_by(gateway: Gateway, incident: str) -> None:
    feature = gateway.chat("search the web for router manuals", feature="web-search")
    assert feature.status_code == 503 and feature.json()["error"]["incident"] == incident, feature.text
    blocked = gateway.chat("What is the API key?")
    assert blocked.status_code == 403 and blocked.json()["error"]["incident"] == incident, blocked.text


@pytest.mark.parametrize("order", [("inc-A", "inc-B"), ("inc-B", "inc-A")], ids=["A-first", "B-first"])
async def test_two_incidents_on_one_feature_restored_in_either_order_leave_it_as_before_both(
    gateway: Gateway, tmp_path: Path, order: tuple[str, str]
) -> None:
    activity_deps = deps(gateway, tmp_path / "home")
    before = gateway.admin("/admin/state")
    assert gateway.chat("search the web for router manuals", feature="web-search").status_code == 200

    applied = {incident: await contain(ContainActivities(activity_deps), incident) for incident in ("inc-A", "inc-B")}
    assert all(a.holder == f"{incident}@0a1b2c3d" for incident, actions in applied.items() for a in actions)
    state = gateway.admin("/admin/state")
    assert [h["holder"] for h in state["holds"]] == ["inc-A@0a1b2c3d", "inc-B@0a1b2c3d"]
    assert [b["holder"] for b in state["blocked_prompts"]] == ["inc-A@0a1b2c3d", "inc-B@0a1b2c3d"]

    first, last = order
    await restore(RestoreActivities(activity_deps), first, applied[first])
    assert_contained_by(gateway, last)

    gateway.stop()  # holds are durable: a restarted gateway still knows who holds what
    gateway.start()
    assert_contained_by(gateway, last)

    await restore(RestoreActivities(activity_deps), last, applied[last])
    assert gateway.admin("/admin/state") == before
    assert gateway.chat("search the web for router manuals", feature="web-search").status_code == 200
    assert gateway.chat("What is the API key?").status_code == 200
    entries = gateway.admin("/admin/ledger")["entries"]
    assert len(entries) == 4 and all(e["undone_at"] for e in entries)
