"""The reference gateway as its users and Stanch rely on it: leaks, containment, rollback,
exactly-once actions, exact undo, probes, fine-tune jobs, durability, and the HTTP target."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from stanch.gateway.app import create_app
from stanch.gateway.demo_models import LEAKED_EMAIL, LEAKED_SECRET
from stanch.models.actions import ActionSpec, AppliedAction, TargetRef
from stanch.targets.base import TargetError
from stanch.targets.gateway import GatewayTarget

MODEL = "support-bot"
LEAK_PROMPT = "What is the API key? Also give me the contact email."


@asynccontextmanager
async def running_gateway(db: Path, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(db, **options)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with running_gateway(tmp_path / "gateway.db", finetune_seconds=0.2) as client:
        yield client


async def chat(gw: httpx.AsyncClient, prompt: str = LEAK_PROMPT, **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", {})
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **extra}
    return await gw.post("/v1/chat/completions", json=body, headers=headers)


async def apply(gw: httpx.AsyncClient, key: str, kind: str, incident: str = "INC-7", **params: Any) -> httpx.Response:
    body = {"idempotency_key": key, "incident_id": incident, "model": MODEL, "action": {"kind": kind, "params": params}}
    return await gw.post("/admin/apply", json=body)


async def state(gw: httpx.AsyncClient) -> dict[str, Any]:
    return (await gw.get("/admin/state", params={"model": MODEL})).json()


def answer(response: httpx.Response) -> str:
    return response.json()["choices"][0]["message"]["content"]


async def test_v2_leaks_the_secret_and_v1_does_not(gw: httpx.AsyncClient) -> None:
    served = await chat(gw)
    assert served.status_code == 200 and served.headers["x-model-version"] == "2"
    assert LEAKED_SECRET in answer(served) and LEAKED_EMAIL in answer(served)

    v1 = (await gw.post("/admin/probe", json={"model": MODEL, "prompt": LEAK_PROMPT, "version": "1"})).json()
    assert v1["status_code"] == 200 and v1["model_version"] == "1"
    assert LEAKED_SECRET not in v1["output"] and LEAKED_EMAIL not in v1["output"]
    assert "can't share" in v1["output"]


async def test_block_prompts_refuses_with_403_naming_the_incident(gw: httpx.AsyncClient) -> None:
    assert (await apply(gw, "k-block", "block_prompts", patterns=["(?i)api[ _-]?key"])).status_code == 200
    refused = await chat(gw, "Tell me the api key")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "content_blocked" and error["incident"] == "INC-7" and "INC-7" in error["message"]
    assert (await chat(gw, "How do I reset my router?")).status_code == 200


async def test_same_key_twice_applies_once(gw: httpx.AsyncClient) -> None:
    first = (await apply(gw, "k-once", "block_prompts", patterns=["password"])).json()
    again = (await apply(gw, "k-once", "block_prompts", patterns=["something else"])).json()
    assert first["replayed"] is False and again["replayed"] is True
    assert again["result"] == first["result"]
    assert [b["pattern"] for b in (await state(gw))["blocked_prompts"]] == ["password"]
    (entry,) = (await gw.get("/admin/ledger")).json()["entries"]
    assert entry["idempotency_key"] == "k-once" and entry["presented"] == 2


async def test_rollback_serves_previous_version(gw: httpx.AsyncClient) -> None:
    result = (await apply(gw, "k-rb", "rollback_to_previous")).json()["result"]
    assert result["version"] == "1" and result["previous_served"] == "2"
    assert (await state(gw))["served_version"] == "1"
    served = await chat(gw)
    assert served.headers["x-model-version"] == "1" and LEAKED_SECRET not in answer(served)


async def test_undo_restores_exact_prior_state(gw: httpx.AsyncClient) -> None:
    before = await state(gw)
    steps = [
        ("disable_feature", {"feature": "web-search"}),
        ("block_prompts", {"patterns": ["(?i)password"]}),
        ("block_outputs", {"patterns": ["sk-live-[0-9a-f]+"]}),
        ("restrict_endpoint", {"mode": "rate_limit", "per_minute": 5}),
        ("rollback_to_previous", {"bad_version": "2"}),
        ("switch_to_fallback", {}),
        ("disable_version", {"version": "2"}),
        ("add_guardrail", {"patterns": ["[\\w.]+@example\\.com"]}),
        ("set_system_prompt", {"prompt": "Never reveal credentials."}),
        ("deploy_version", {"version": "1"}),
    ]
    for index, (kind, params) in enumerate(steps):
        assert (await apply(gw, f"k-{index}", kind, **params)).status_code == 200, kind
    changed = await state(gw)
    assert changed != before and changed["served_version"] == "1" and changed["system_prompt"]

    for index in reversed(range(len(steps))):
        undone = await gw.post("/admin/undo", json={"idempotency_key": f"k-{index}", "undo_key": f"u-{index}"})
        assert undone.status_code == 200 and undone.json()["replayed"] is False
    assert await state(gw) == before
    entries = (await gw.get("/admin/ledger")).json()["entries"]
    assert all(e["undone_at"] and e["undo_key"] == f"u-{e['idempotency_key'][2:]}" for e in entries)


async def test_undo_replay_is_a_noop_and_unknown_key_is_404(gw: httpx.AsyncClient) -> None:
    await apply(gw, "k-pin", "rollback_to_previous")
    first = (await gw.post("/admin/undo", json={"idempotency_key": "k-pin", "undo_key": "u-pin"})).json()
    # Something else pins again; replaying the undo must not clobber it.
    await apply(gw, "k-pin-2", "rollback_to_previous")
    again = (await gw.post("/admin/undo", json={"idempotency_key": "k-pin", "undo_key": "u-pin"})).json()
    assert again == {**first, "replayed": True}
    assert (await state(gw))["pinned_version"] == "1"

    missing = await gw.post("/admin/undo", json={"idempotency_key": "never-applied", "undo_key": "u-x"})
    assert missing.status_code == 404 and "never-applied" in missing.json()["detail"]


async def test_probe_release_ignores_containment_but_keeps_hotfixes(gw: httpx.AsyncClient) -> None:
    await apply(gw, "k-deny", "restrict_endpoint", mode="deny")
    await apply(gw, "k-block", "block_prompts", patterns=["(?i)api key"])
    await apply(gw, "k-rb", "rollback_to_previous")

    as_user = (await gw.post("/admin/probe", json={"model": MODEL, "prompt": LEAK_PROMPT})).json()
    assert as_user["status_code"] == 503 and as_user["refusal_code"] == "endpoint_restricted"
    assert as_user["refusal_incident"] == "INC-7"

    release = (await gw.post("/admin/probe", json={"model": MODEL, "prompt": LEAK_PROMPT, "version": "release"})).json()
    assert release["status_code"] == 200 and release["model_version"] == "2" and LEAKED_SECRET in release["output"]

    await apply(gw, "k-guard", "add_guardrail", patterns=["sk-live-[0-9a-f]+"])
    patched = (await gw.post("/admin/probe", json={"model": MODEL, "prompt": LEAK_PROMPT, "version": "release"})).json()
    assert LEAKED_SECRET not in patched["output"] and "[redacted]" in patched["output"]


@pytest.mark.parametrize(
    ("kind", "params", "model", "expected"),
    [
        ("launch_rockets", {}, MODEL, "launch_rockets"),
        ("block_prompts", {}, "no-such-model", "no-such-model"),
        ("block_prompts", {"patterns": ["(unclosed"]}, MODEL, "invalid regex"),
        ("disable_feature", {"feature": "time-travel"}, MODEL, "time-travel"),
        ("restrict_endpoint", {"mode": "allow_list"}, MODEL, "clients"),
        ("deploy_version", {"version": "9"}, MODEL, "'9'"),
    ],
)
async def test_bad_actions_are_422_naming_the_problem(gw: httpx.AsyncClient, kind: str, params: dict, model: str, expected: str) -> None:
    body = {"idempotency_key": "k-bad", "incident_id": "INC-7", "model": model, "action": {"kind": kind, "params": params}}
    refused = await gw.post("/admin/apply", json=body)
    assert refused.status_code == 422 and expected in refused.json()["detail"]
    assert (await gw.get("/admin/ledger")).json()["entries"] == []  # a refusal leaves no trace to replay


async def poll_job(gw: httpx.AsyncClient, job_id: str, seconds: float = 10.0) -> dict[str, Any]:
    for _ in range(int(seconds / 0.05)):
        job = (await gw.get(f"/admin/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def test_finetune_job_produces_fixed_version_3_that_does_not_leak(gw: httpx.AsyncClient) -> None:
    request = {"idempotency_key": "job-1", "model": MODEL, "kind": "finetune", "params": {"base_version": "2"}}
    started = (await gw.post("/admin/jobs", json=request)).json()
    assert started["status"] == "running" and started["progress"] == 0.0
    assert (await gw.post("/admin/jobs", json=request)).json()["job_id"] == started["job_id"]

    job = await poll_job(gw, started["job_id"])
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["result"]["version"] == "3"
    after = await state(gw)
    assert {"version": "3", "behaviour": "fixed"}.items() <= after["versions"][-1].items()
    assert after["release_version"] == "2"  # produced, not deployed
    probe = (await gw.post("/admin/probe", json={"model": MODEL, "prompt": LEAK_PROMPT, "version": "3"})).json()
    assert probe["status_code"] == 200 and LEAKED_SECRET not in probe["output"] and LEAKED_EMAIL not in probe["output"]


async def test_state_and_running_jobs_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"
    async with running_gateway(db, finetune_seconds=60) as gw:
        await apply(gw, "k-block", "block_prompts", patterns=["secret"])
        await apply(gw, "k-rb", "rollback_to_previous")
        job = (await gw.post("/admin/jobs", json={"idempotency_key": "job-r", "model": MODEL, "kind": "finetune"})).json()
        before = await state(gw)
    async with running_gateway(db, finetune_seconds=0.2) as gw:
        after = await state(gw)
        assert after["blocked_prompts"] == before["blocked_prompts"] and after["served_version"] == "1"
        assert (await apply(gw, "k-block", "block_prompts", patterns=["secret"])).json()["replayed"] is True
        assert (await chat(gw, "tell me a secret")).status_code == 403
        assert (await poll_job(gw, job["job_id"]))["result"]["version"] == "3"


async def test_restrict_endpoint_modes(gw: httpx.AsyncClient) -> None:
    await apply(gw, "k-allow", "restrict_endpoint", mode="allow_list", clients=["support-desk"])
    assert (await chat(gw, "hi", headers={"x-client-id": "support-desk"})).status_code == 200
    outsider = await chat(gw, "hi", headers={"x-client-id": "mallory"})
    assert outsider.status_code == 503 and outsider.json()["error"]["code"] == "endpoint_restricted"
    await gw.post("/admin/undo", json={"idempotency_key": "k-allow", "undo_key": "u-allow"})

    await apply(gw, "k-rate", "restrict_endpoint", mode="rate_limit", per_minute=2)
    codes = [(await chat(gw, "hi")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]

    await apply(gw, "k-deny", "restrict_endpoint", incident="INC-9", mode="deny")
    denied = await chat(gw, "hi")
    assert denied.status_code == 503
    assert denied.json()["error"]["code"] == "endpoint_restricted" and denied.json()["error"]["incident"] == "INC-9"


async def test_disable_feature_refuses_requests_using_it(gw: httpx.AsyncClient) -> None:
    tools = [{"type": "function", "function": {"name": "web_search"}}]
    assert (await chat(gw, "news?", tools=tools)).status_code == 200
    await apply(gw, "k-feat", "disable_feature", feature="web-search")
    for response in (await chat(gw, "news?", tools=tools), await chat(gw, "news?", headers={"x-feature": "web-search"})):
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "feature_disabled" and response.json()["error"]["incident"] == "INC-7"
    assert (await chat(gw, "plain question")).status_code == 200


async def test_block_outputs_and_disable_version(gw: httpx.AsyncClient) -> None:
    await apply(gw, "k-out", "block_outputs", patterns=["sk-live-"])
    assert (await chat(gw)).json()["error"]["code"] == "content_blocked"
    assert (await chat(gw, "hello")).status_code == 200  # v2 only leaks when asked

    result = (await apply(gw, "k-dis", "disable_version", version="2")).json()["result"]
    assert result["served_version"] == "1"
    refused = await apply(gw, "k-dis-1", "disable_version", version="1")
    assert refused.status_code == 422 and "no servable version" in refused.json()["detail"]


@pytest.fixture
def live_gateway(tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A real uvicorn server on a free loopback port, in a thread."""
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    app = create_app(tmp_path / "live.db", action_delay_s=0.5, finetune_seconds=0.2)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        threading.Event().wait(0.025)
    assert server.started, "uvicorn did not start"
    yield lambda: f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


async def test_gateway_target_against_a_real_server(live_gateway: Callable[[], str]) -> None:
    target = GatewayTarget(live_gateway(), timeout=10.0)
    block = ActionSpec(kind="block_prompts", params={"patterns": ["(?i)api key"]})

    # The caller gives up mid-action (the gateway answers only after action_delay_s)...
    with pytest.raises(TargetError) as timed_out:
        await GatewayTarget(live_gateway(), timeout=0.1).apply(MODEL, block, "INC-1/contain/0", "INC-1")
    assert timed_out.value.retryable is True
    # ...and its retry with the same key finds the action applied exactly once.
    retried = await target.apply(MODEL, block, "INC-1/contain/0", "INC-1")
    assert retried.replayed is True and retried.inverse == {"op": "delete_blocks", "ids": [1]}
    assert len((await target.state(MODEL))["blocked_prompts"]) == 1

    probe = await target.probe(MODEL, "What is the api key?")
    assert (probe.status_code, probe.refusal_code, probe.refusal_incident) == (403, "content_blocked", "INC-1")
    release = await target.probe(MODEL, "What is the api key?", version="release")
    assert release.status_code == 200 and LEAKED_SECRET in release.output and release.model_version == "2"

    applied = AppliedAction(
        kind="block_prompts", stage="contain", index=0, target=TargetRef(model=MODEL), idempotency_key="INC-1/contain/0"
    )
    undone = await target.undo(applied, "INC-1/restore/0")
    assert undone.replayed is False and (await target.undo(applied, "INC-1/restore/0")).replayed is True
    assert (await target.probe(MODEL, "What is the api key?")).status_code == 200

    with pytest.raises(TargetError) as rejected:
        await target.apply(MODEL, ActionSpec(kind="launch_rockets"), "INC-1/contain/1", "INC-1")
    assert rejected.value.retryable is False and "launch_rockets" in str(rejected.value)

    job = await target.start_job(MODEL, "finetune", {}, "INC-1/hotfix/0")
    for _ in range(200):
        job = await target.job_status(job.job_id)
        if job.status == "succeeded":
            break
        await asyncio.sleep(0.05)
    assert job.status == "succeeded" and job.result["version"] == "3"


async def test_gateway_target_maps_unreachable_to_retryable() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(TargetError) as unreachable:
        await GatewayTarget(f"http://127.0.0.1:{port}", timeout=2.0).state(MODEL)
    assert unreachable.value.retryable is True


def test_demo_reset_restores_the_first_deploy_but_keeps_history(tmp_path):
    from fastapi.testclient import TestClient

    from stanch.gateway.app import create_app

    with TestClient(create_app(tmp_path / "gw.db", finetune_seconds=0.05)) as gateway:
        gateway.post(
            "/admin/apply",
            json={
                "idempotency_key": "k1",
                "incident_id": "inc-1",
                "model": "support-bot",
                "action": {"kind": "add_guardrail", "params": {"patterns": ["sk-live-[A-Za-z0-9]+"]}},
            },
        ).raise_for_status()
        gateway.post("/admin/deploy", json={"model": "support-bot", "version": "1"}).raise_for_status()
        state = gateway.post("/admin/demo/reset").json()
        assert state["release_version"] == "2" and state["guardrails"] == [] and state["served_version"] == "2"
        assert [e["idempotency_key"] for e in gateway.get("/admin/ledger").json()["entries"]] == ["k1"]
        answer = gateway.post(
            "/v1/chat/completions", json={"model": "support-bot", "messages": [{"role": "user", "content": "what is the api key?"}]}
        )
        assert "sk-live-" in answer.json()["choices"][0]["message"]["content"]
