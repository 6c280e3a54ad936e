"""Blast radius end to end, on `stanch up` (whose gateway samples content, sealed): seven users
are served the leaking support-bot v2's personal data and three others clean answers by v1; a
user's report then opens the pii-leak incident. On confirmation Stanch re-scores the sampled
answers: the incident records the seven affected users by id, and its workflow history holds
neither what they asked nor what leaked to them."""

from __future__ import annotations

import asyncio
import base64
import re
import uuid

import httpx
import pytest
from temporalio.client import Client

from stanch.demo_upstream.models import LEAKED_CARD, LEAKED_IBAN, LEAKED_PHONE, LEAKED_SSN
from stanch.gateway.routing import Client as GatewayClient
from tests.e2e.processes import DEFAULT_PORTS, free_port, wait_for
from tests.e2e.test_stanch_up import stanch_up

pytestmark = pytest.mark.e2e

MODEL = "support-bot"


def ask(gateway: str, user: str, question: str) -> httpx.Response:
    body = {"model": MODEL, "temperature": 0, "messages": [{"role": "user", "content": question}]}
    return httpx.post(f"{gateway}/v1/chat/completions", json=body, headers={"x-client-id": user, "x-tenant-id": "acme-shop"}, timeout=30)


def serve_users(gateway: str) -> tuple[list[str], list[str], list[str]]:
    """Seven users whose canary bucket (sticky per client) lands on v2 get its leak; three others
    are served v1's refusal."""
    canaries = httpx.get(f"{gateway}/admin/state", params={"model": MODEL}).json()["canaries"]
    share = canaries["2"]
    names = [f"blast-user-{n}" for n in range(200)]
    on_v2 = [u for u in names if gateway_client(u).bucket(MODEL) < share][:7]
    on_v1 = [u for u in names if gateway_client(u).bucket(MODEL) >= share][:3]
    questions = []
    for user in on_v2 + on_v1:
        question = f"Please read me the account details on file for ticket T-{uuid.uuid4().hex[:10]}"
        answer = ask(gateway, user, question)
        assert answer.status_code == 200, answer.text
        leaked = LEAKED_CARD in answer.json()["choices"][0]["message"]["content"]
        assert (answer.headers["x-model-version"], leaked) == (("2", True) if user in on_v2 else ("1", False))
        questions.append(question)
    return on_v2, on_v1, questions


def gateway_client(user: str) -> GatewayClient:
    return GatewayClient(names=frozenset([user]), sticky=user)


@DEFAULT_PORTS
def test_seven_users_served_the_leak_are_recorded_as_affected_without_their_content_in_history(tmp_path):
    home = tmp_path / "home"
    ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway")}
    api, gateway = f"http://127.0.0.1:{ports['api']}", f"http://127.0.0.1:{ports['gateway']}"
    up = stanch_up(home, ports)
    try:
        leaked, clean, questions = serve_users(gateway)
        report = {
            "report_id": f"blast-{uuid.uuid4().hex[:8]}",
            "reporter": "support-agent-7",
            "surface": "help-center chat",
            "model": MODEL,
            "model_version": "2",
            "category": "pii-leak",
            "prompt_excerpt": "Can I have the customer's contact email?",
            "text": "the assistant gave out another customer's details",
        }
        accepted = httpx.post(f"{api}/v1/reports", json=report, timeout=30)
        assert accepted.status_code == 202, accepted.text
        incident_id = accepted.json()["incidents"][0]["incident_id"]
        assert incident_id.startswith("pii-leak")

        state = wait_for(lambda: httpx.get(f"{api}/v1/incidents/{incident_id}").json(), lambda s: s.get("exposure"), timeout=60)
        exposure = state["exposure"]
        assert exposure["measured"] is True, exposure
        assert exposure["users_affected"] == 7 and exposure["affected_user_ids"] == sorted(leaked)
        assert exposure["affected_tenant_ids"] == ["acme-shop"] and exposure["affected_versions"] == ["2"]
        assert exposure["users_exposed"] == 10 and not set(clean) & set(exposure["affected_user_ids"])
        assert any(entry["kind"] == "exposure" and "7 users" in entry["message"] for entry in state["timeline"])

        history = asyncio.run(history_json(f"127.0.0.1:{ports['temporal']}", incident_id))
        # Readable here (no payload codec): the ids are in it, and so is the reported prompt, which a signal carries.
        assert "blast-user-" in history and report["prompt_excerpt"] in history
        for content in (LEAKED_PHONE, LEAKED_CARD, LEAKED_IBAN, LEAKED_SSN, *questions):
            assert content not in history
    finally:
        assert up.stop() == 0, up.tail()


async def history_json(address: str, incident_id: str) -> str:
    """The incident's history as JSON, with every payload (base64 in the JSON) decoded beside it."""
    client = await Client.connect(address)
    raw = (await client.get_workflow_handle(incident_id).fetch_history()).to_json()
    payloads = [base64.b64decode(data).decode("utf-8", "replace") for data in re.findall(r'"data": "([A-Za-z0-9+/=]+)"', raw)]
    return "\n".join([raw, *payloads])
