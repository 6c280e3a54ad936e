"""The regression gate end to end: after the demo incident closes, its repro case guards every
later change. `stanch gate` fails the leaking version naming the case and the incident, passes
the fixed one, and `POST /v1/gate` gives the same verdicts to a CI account's bearer token, as
an Argo Rollouts web metric calls it. A candidate guardrail config that redacts the leak is judged
through the gateway: the leaking version passes under it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from stanch.trust.responders import token_sha256
from tests.e2e.processes import DEFAULT_PORTS, free_port
from tests.e2e.test_stanch_up import stanch_up

pytestmark = pytest.mark.e2e

TOKENS = {
    "olga": ("oncall", "stk_olga_gate"),
    "sasha": ("safety", "stk_sasha_gate"),
    "ci": ("gate", "stk_ci_gate"),  # a pipeline's service account: it runs the gate and nothing else
    "vera": ("auditor", "stk_vera_gate"),
}
LEAKING, MODEL = "2", "support-bot"


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[user][1]}"}


@DEFAULT_PORTS
def test_after_the_demo_incident_the_gate_fails_the_leaking_version_and_passes_the_fixed_one(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "responders.yaml").write_text(
        "tokens:\n" + "".join(f"  - {{user: {u}, roles: [{r}], token_sha256: {token_sha256(t)}}}\n" for u, (r, t) in TOKENS.items())
    )
    ports = {name: free_port() for name in ("temporal", "ui", "api", "gateway")}
    api = f"http://127.0.0.1:{ports['api']}"
    env = {**os.environ, "STANCH_HOME": str(home), "STANCH_GATEWAY_URL": f"http://127.0.0.1:{ports['gateway']}"}

    def stanch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stanch", *args], capture_output=True, text=True, timeout=120, env=env)

    up = stanch_up(home, ports)
    try:
        demo = stanch("demo", "--api", api, "--oncall-token", TOKENS["olga"][1], "--safety-token", TOKENS["sasha"][1])
        assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-2000:]
        incident = httpx.get(f"{api}/v1/incidents", headers=bearer("olga")).json()[0]
        state = httpx.get(f"{api}/v1/incidents/{incident['id']}", headers=bearer("olga")).json()
        assert state["status"] == "closed"
        fixed = next(a["result"]["version"] for a in state["actions"] if a["kind"] == "deploy_finetune")

        cases = json.loads(stanch("gate", "cases", "--model", MODEL, "--json").stdout)
        assert cases and {case["incident_id"] for case in cases} == {state["id"]}, "the incident's review added its repro case"
        key = cases[0]["case_key"]

        leaking = stanch("gate", "--model", MODEL, "--candidate", LEAKING)
        assert leaking.returncode == 1, leaking.stdout + leaking.stderr
        assert f"regressed: case {key} (incident {state['id']})" in leaking.stdout
        # The same version under a candidate guardrail config that redacts the key: judged as users
        # would get it through the gateway, it passes.
        guardrails = tmp_path / "guardrails.yaml"
        guardrails.write_text("- 'sk-live-[A-Za-z0-9]{8,}'\n")
        guarded = stanch("gate", "--model", MODEL, "--candidate", LEAKING, "--guardrails-file", str(guardrails), "--json")
        assert guarded.returncode == 0, guarded.stdout + guarded.stderr
        assert json.loads(guarded.stdout)["guardrails_count"] == 1
        passing = stanch("gate", "--model", MODEL, "--candidate", fixed, "--json")
        assert passing.returncode == 0, passing.stdout + passing.stderr
        assert json.loads(passing.stdout)["verdict"] == "pass" and json.loads(passing.stdout)["checked"] == len(cases)

        # As Argo's web metric asks: a JSON body, a bearer token, `$.verdict` read from a 200.
        def analysis(candidate: str, user: str = "ci") -> httpx.Response:
            return httpx.post(f"{api}/v1/gate", json={"model": MODEL, "candidate": candidate}, headers=bearer(user), timeout=60)

        failed = analysis(LEAKING)
        assert failed.status_code == 200 and failed.json()["verdict"] == "fail"
        assert [(c["case_key"], c["incident_id"]) for c in failed.json()["cases"] if c["result"] == "regressed"] == [(key, state["id"])]
        assert "What is the admin API key" not in failed.text and "sk-live" not in failed.text
        assert analysis(fixed).json()["verdict"] == "pass"
        assert analysis(fixed, user="vera").status_code == 403, "an auditor reads incidents; it does not run the gate"
    finally:
        assert up.stop() == 0, up.tail()
