"""The gateway's deployment log: every platform change to what a model serves, in order, as a
snapshot; a past change answers again as it served (admin only); incident actions are no change."""

from __future__ import annotations

from pathlib import Path

from tests.openai_stub import Stub
from tests.unit.test_gateway import ASK, GOOD, LEAK, MODEL, SECRET, running_gateway, upstreams

TOKEN = "gw-admin-deployments"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


async def test_changes_are_logged_in_order_and_a_past_change_answers_as_it_served(tmp_path: Path) -> None:
    stub = Stub(answers={"bot-v1": GOOD, "bot-v2": LEAK, "safe-v1": "safe"})
    async with running_gateway(tmp_path / "gw.db", stub, upstreams(), admin_token=TOKEN) as gateway:
        deployed = [
            await gateway.post("/admin/deploy", json={"model": MODEL, "version": "2", "change_id": "PR-7"}, headers=ADMIN),
            await gateway.post(
                "/admin/deploy",
                json={"model": MODEL, "version": "2", "system_prompt": "Be terse.", "guardrails": ["sk-live-[0-9a-f]+"]},
                headers=ADMIN,
            ),
        ]
        assert [d.json()["sequence"] for d in deployed] == [2, 3], "the upstreams file's deploy is change 1"
        # An incident action is not a change.
        block = {"kind": "block_outputs", "params": {"patterns": ["nothing"]}}
        applied = await gateway.post(
            "/admin/apply", json={"idempotency_key": "k1", "incident_id": "INC-1", "model": MODEL, "action": block}, headers=ADMIN
        )
        assert applied.status_code == 200

        log = (await gateway.get(f"/admin/models/{MODEL}/deployments", headers=ADMIN)).json()["deployments"]
        assert [(d["sequence"], d["release_version"], d["source"]) for d in log] == [
            (1, "1", "upstreams file"),
            (2, "2", "admin deploy"),
            (3, "2", "admin deploy"),
        ]
        assert log[1]["change_id"] == "PR-7" and log[1]["system_prompt"] is None
        assert log[2]["system_prompt"] == "Be terse." and log[2]["guardrails"] == ["sk-live-[0-9a-f]+"]
        since = (await gateway.get(f"/admin/models/{MODEL}/deployments", params={"since": log[1]["deployed_at"]}, headers=ADMIN)).json()
        assert [d["sequence"] for d in since["deployments"]] == [2, 3], "the change in force when the window opened comes first"
        assert (await gateway.get(f"/admin/models/{MODEL}/deployments")).status_code == 401

        def asked(change: str, token: str = TOKEN) -> dict[str, str]:
            return {"x-stanch-deployment": change, "x-stanch-admin-token": token}

        first = await gateway.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK}, headers=asked("1"))
        assert first.status_code == 200 and first.headers["x-model-version"] == "1"
        assert first.json()["choices"][0]["message"]["content"] == GOOD
        second = await gateway.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK}, headers=asked("2"))
        assert SECRET in second.json()["choices"][0]["message"]["content"], "change 2 had no guardrail, and no incident block applies"
        third = await gateway.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK}, headers=asked("3"))
        assert SECRET not in third.json()["choices"][0]["message"]["content"], "change 3's guardrail redacts"
        assert stub.received[-1]["body"]["messages"][0] == {"role": "system", "content": "Be terse."}

        # Users get the latest change's prompt and guardrail too.
        served = await gateway.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK})
        assert SECRET not in served.text and stub.received[-1]["body"]["messages"][0]["content"] == "Be terse."

        assert (
            await gateway.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK}, headers=asked("1", "no"))
        ).status_code == 401
        missing = await gateway.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK}, headers=asked("9"))
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "deployment_not_found"


async def test_a_deploy_with_a_bad_guardrail_is_refused_and_not_logged(tmp_path: Path) -> None:
    async with running_gateway(tmp_path / "gw.db", Stub(answers={}), upstreams()) as gateway:
        refused = await gateway.post("/admin/deploy", json={"model": MODEL, "version": "2", "guardrails": ["(unclosed"]})
        assert refused.status_code == 422 and "guardrails" in refused.json()["detail"]
        log = (await gateway.get(f"/admin/models/{MODEL}/deployments")).json()["deployments"]
        assert [d["sequence"] for d in log] == [1]


async def test_a_rollback_pins_the_target_version_it_names_and_an_empty_one_goes_back_as_before(tmp_path: Path) -> None:
    async with running_gateway(tmp_path / "gw.db", Stub(answers={}), upstreams()) as gateway:
        for version in ("3", "4"):
            register = {"kind": "register_version", "params": {"version": version, "upstream_model": f"bot-v{version}"}}
            await gateway.post(
                "/admin/apply", json={"idempotency_key": f"r{version}", "incident_id": "I", "model": MODEL, "action": register}
            )
        await gateway.post("/admin/deploy", json={"model": MODEL, "version": "4"})

        def rollback(key: str, **params: str) -> dict[str, object]:
            action = {"kind": "rollback_to_previous", "params": {"bad_version": "4", **params}}
            return {"idempotency_key": key, "incident_id": "INC-9", "model": MODEL, "action": action}

        as_before = (await gateway.post("/admin/apply", json=rollback("k-empty", target_version=""))).json()["result"]
        assert as_before["version"] == "3", "no last good change: the highest enabled version below the bad one"
        pinned = (await gateway.post("/admin/apply", json=rollback("k-good", target_version="1"))).json()["result"]
        assert pinned["version"] == "1" and pinned["served_version"] == "1"
        unknown = await gateway.post("/admin/apply", json=rollback("k-bad", target_version="9"))
        assert unknown.status_code == 422 and "no version '9'" in unknown.json()["detail"]
        itself = await gateway.post("/admin/apply", json=rollback("k-same", target_version="4"))
        assert itself.status_code == 422 and "target_version '4' is the version" in itself.json()["detail"]


async def test_a_reset_to_the_upstreams_file_is_a_change_that_drops_the_platform_prompt(tmp_path: Path) -> None:
    stub = Stub(answers={"bot-v1": GOOD, "bot-v2": LEAK, "safe-v1": "safe"})
    async with running_gateway(tmp_path / "gw.db", stub, upstreams()) as gateway:
        await gateway.post("/admin/deploy", json={"model": MODEL, "version": "2", "system_prompt": "Be terse."})
        assert (await gateway.post("/admin/reset")).status_code == 200
        log = (await gateway.get(f"/admin/models/{MODEL}/deployments")).json()["deployments"]
        assert [(d["sequence"], d["release_version"], d["system_prompt"]) for d in log][-1] == (3, "1", None)
        await gateway.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK})
        assert stub.received[-1]["body"]["messages"] == ASK, "no platform prompt is sent after the reset"
