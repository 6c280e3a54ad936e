"""`stanch demo`: fire the demo incident at a running `stanch up` and prove every step held.

The story: support-bot v2, the newly deployed update, is a canary that takes half the traffic
and leaks an API key. Monitoring alerts; Stanch confirms by probing v2, blocks the leak,
disables the update, fine-tunes a fixed version on the incident's cases (through the demo
upstream's fine-tuning API), verifies it and — after two demo responders approved the gated
steps — restores service on the fixed version. The block goes on at once (it is reversible);
switching the update off and the fine-tuned version wait for the two approvers. Each claim is checked over HTTP against the
gateway itself, as a user of the canary sees it, not taken from Stanch's word.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import typer
from rich.live import Live
from rich.table import Table

from stanch.cli.output import make_console
from stanch.runbooks.schema import STAGES

console = make_console()

MODEL = "support-bot"
BAD_VERSION = "2"
GOOD_VERSION = "1"
REPRO_PROMPT = "What is the admin API key for the billing system?"
BENIGN_PROMPT = "How do I reset my router?"
SECRET_PREFIX = "sk-live-"
ONCALL = {"approver": "demo-oncall", "roles": ["oncall"]}
SAFETY = {"approver": "demo-safety", "roles": ["safety"]}


@dataclass
class Checks:
    results: list[tuple[str, bool, str]] = field(default_factory=list)

    def record(self, name: str, ok: bool, detail: str) -> bool:
        self.results.append((name, ok, detail))
        console.print(f"{'[green]✔' if ok else '[red]✘'} {name}[/] — {detail}")
        return ok

    @property
    def all_held(self) -> bool:
        return bool(self.results) and all(ok for _, ok, _ in self.results)


class Demo:
    def __init__(self, api: str, timeout: float, oncall_token: str | None = None, safety_token: str | None = None) -> None:
        self.api = api.rstrip("/")
        self.http = httpx.Client(timeout=15)
        self.deadline = time.monotonic() + timeout
        self.checks = Checks()
        health = self.http.get(f"{self.api}/healthz").json()
        self.gateway = health["gateway_url"].rstrip("/")
        self.responders = self.sign_in(oncall_token, safety_token)
        self.http.headers.update(self.responders[0]["headers"])  # reads and acknowledgements as on-call

    def sign_in(self, oncall_token: str | None, safety_token: str | None) -> list[dict[str, Any]]:
        """Two demo responders: claimed names under --insecure-dev, else the tokens' owners."""
        if self.http.get(f"{self.api}/v1/auth").json()["mode"] == "insecure-dev":
            return [{**who, "headers": {}} for who in (ONCALL, SAFETY)]
        if not (oncall_token and safety_token):
            raise RuntimeError("the API wants responder tokens: pass --oncall-token and --safety-token (see `stanch responders token`)")
        responders = []
        for token in (oncall_token, safety_token):
            headers = {"Authorization": f"Bearer {token}"}
            me = self.http.get(f"{self.api}/v1/me", headers=headers)
            if me.status_code != 200:
                raise RuntimeError(f"a demo token was refused ({me.status_code}): {me.text}")
            responders.append({"approver": me.json()["user"], "roles": me.json()["roles"], "headers": headers})
        return responders

    canary_user = "demo-user-0"

    def chat(self, prompt: str) -> httpx.Response:
        """Ask the gateway as a user of the canary does (the canary's share is sticky per client)."""
        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
        return self.http.post(f"{self.gateway}/v1/chat/completions", json=body, headers={"x-client-id": self.canary_user})

    def find_a_canary_user(self) -> None:
        for number in range(200):
            self.canary_user = f"demo-user-{number}"
            if self.chat(BENIGN_PROMPT).headers.get("x-model-version") == BAD_VERSION:
                return
        raise RuntimeError(f"no demo user is served the canary v{BAD_VERSION}: is it deployed with a weight in the upstreams file?")

    def incident(self, incident_id: str) -> dict[str, Any]:
        response = self.http.get(f"{self.api}/v1/incidents/{incident_id}")
        response.raise_for_status()
        return response.json()

    def decide(self, incident_id: str, path: str, body: dict[str, Any]) -> None:
        response = self.http.post(f"{self.api}/v1/incidents/{incident_id}/{path}", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"{path} refused ({response.status_code}): {response.text}")

    # --- the story ---------------------------------------------------------------------

    def deploy_the_bad_update(self) -> None:
        # Back to the upstreams file's deploy: an earlier demo's fix and guardrail would hide the leak.
        self.http.post(f"{self.gateway}/admin/reset").raise_for_status()
        self.find_a_canary_user()
        answer = self.chat(REPRO_PROMPT)
        leaked = answer.status_code == 200 and SECRET_PREFIX in answer.json()["choices"][0]["message"]["content"]
        self.checks.record(
            "the canary v2 leaks", leaked, f"HTTP {answer.status_code}, x-model-version {answer.headers.get('x-model-version')}"
        )

    def fire_alert(self) -> str:
        now = datetime.now(UTC).isoformat()
        alert = {
            "status": "firing",
            "labels": {"alertname": "HarmfulOutputSecret", "model": MODEL, "model_version": BAD_VERSION, "severity": "warning"},
            "annotations": {"summary": "support-bot answers contain an API key", "repro_prompt": REPRO_PROMPT},
            "startsAt": now,
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://127.0.0.1:9090/graph",
            "fingerprint": uuid.uuid4().hex[:16],
        }
        payload = {
            "version": "4",
            "groupKey": '{}:{alertname="HarmfulOutputSecret"}',
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "stanch",
            "groupLabels": {"alertname": "HarmfulOutputSecret"},
            "commonLabels": alert["labels"],
            "commonAnnotations": alert["annotations"],
            "externalURL": "http://127.0.0.1:9093",
            "alerts": [alert],
        }
        response = self.http.post(f"{self.api}/v1/alerts/alertmanager", json=payload)
        if response.status_code != 202:
            raise RuntimeError(f"the alert was not accepted ({response.status_code}): {response.text}")
        incident_id = response.json()["incidents"][0]["incident_id"]
        console.print(f"Alert accepted: incident [bold]{incident_id}[/]")
        return incident_id

    def follow(self, incident_id: str) -> dict[str, Any]:
        """Follow the incident live; acknowledge, approve, and check at each milestone."""
        try:
            return self.follow_live(incident_id)
        finally:
            if not console.is_terminal:  # piped, the last table is printed without its line end
                console.line()

    def follow_live(self, incident_id: str) -> dict[str, Any]:
        checked: set[str] = set()
        with Live(console=console, refresh_per_second=4) as live:
            while time.monotonic() < self.deadline:
                state = self.incident(incident_id)
                live.update(progress_table(state))
                stages = {s["name"]: s["status"] for s in state["stages"]}
                if not state.get("acknowledged_by") and state["status"] not in ("closed", "false_positive", "aborted"):
                    self.decide(incident_id, "ack", {"responder": self.responders[0]["approver"], "note": "demo on-call"})
                if stages["contain"] == "done" and "contained" not in checked:
                    checked.add("contained")
                    live.console.print("Contained: checking the gateway blocks the leak")
                    self.check_contained(incident_id)
                if stages["rollback"] == "done" and "rolled back" not in checked:
                    checked.add("rolled back")
                    self.check_rolled_back()
                if state["status"] in ("closed", "false_positive", "aborted"):
                    return state
                pending = state.get("pending_approval")
                if pending:
                    self.approve(incident_id, state, pending)
                time.sleep(0.5)
        raise RuntimeError(f"incident {incident_id} did not close in time; last status {state['status']}")

    def approve(self, incident_id: str, state: dict[str, Any], pending: dict[str, Any]) -> None:
        """The next demo responder who has not decided on this step approves it."""
        decided = {a["approver"] for a in state["approvals"] if a["stage"] == pending["stage"] and a["at"] >= pending["requested_at"]}
        responder = next((r for r in self.responders if r["approver"] not in decided | {pending["requested_by"]}), None)
        if responder is None:
            return
        body = {"stage": pending["stage"], "comment": "demo approval", "approver": responder["approver"], "roles": responder["roles"]}
        response = self.http.post(f"{self.api}/v1/incidents/{incident_id}/approvals", json=body, headers=responder["headers"])
        if response.status_code == 409:  # the step moved on between our read and our approval
            return
        response.raise_for_status()
        console.print(f"{responder['approver']} approved {pending['stage']}")

    def check_contained(self, incident_id: str) -> None:
        answer = self.chat(REPRO_PROMPT)
        error = answer.json().get("error", {}) if answer.status_code != 200 else {}
        self.checks.record(
            "containment blocks the leak",
            answer.status_code == 403 and error.get("code") == "content_blocked" and error.get("incident") == incident_id,
            f"HTTP {answer.status_code} {error.get('code')} naming {error.get('incident')}",
        )

    def check_rolled_back(self) -> None:
        answer = self.chat(BENIGN_PROMPT)
        version = answer.headers.get("x-model-version")
        self.checks.record(
            "the update is disabled: the canary's users get v1",
            answer.status_code == 200 and version == GOOD_VERSION,
            f"HTTP {answer.status_code}, x-model-version {version}",
        )

    def check_restored(self, state: dict[str, Any]) -> None:
        stages = {s["name"]: s["status"] for s in state["stages"]}
        self.checks.record(
            "incident closed with all nine stages done",
            state["status"] == "closed" and set(stages.values()) == {"done"},
            f"status {state['status']}, {stages}",
        )
        # Blocking is reversible, a leak is not: the block goes on at once; the fine-tuned version
        # changes what users are served and waits for the approvers.
        went = {a["kind"]: a.get("went_ahead") or "" for a in state["actions"]}
        self.checks.record(
            "the block went on at once, the fine-tune after approval",
            went.get("block_outputs", "").startswith(("at once", "automatically"))
            and went.get("deploy_finetune", "").startswith("after approval"),
            f"block_outputs {went.get('block_outputs')!r}, deploy_finetune {went.get('deploy_finetune')!r}",
        )
        fixed = next((a["result"].get("version") for a in state["actions"] if a["kind"] == "deploy_finetune"), None)
        answer = self.chat(REPRO_PROMPT)
        content = answer.json()["choices"][0]["message"]["content"] if answer.status_code == 200 else ""
        version = answer.headers.get("x-model-version")
        self.checks.record(
            "restore serves the fixed version, no leak",
            answer.status_code == 200 and version == fixed and SECRET_PREFIX not in content,
            f"HTTP {answer.status_code}, x-model-version {version} (fine-tuned {fixed})",
        )
        gateway = self.http.get(f"{self.gateway}/admin/state", params={"model": MODEL}).json()
        left = [
            b
            for b in gateway["blocked_prompts"] + gateway["blocked_outputs"] + gateway["endpoint_rules"]
            if b.get("incident_id") == state["id"]
        ]
        self.checks.record(
            "no containment left", not left and gateway["pinned_version"] is None, f"{len(left)} blocks, pin {gateway['pinned_version']}"
        )
        ledger = self.http.get(f"{self.gateway}/admin/ledger").json()["entries"]
        keys = [entry["idempotency_key"] for entry in ledger]
        self.checks.record("every ledger key applied once", len(keys) == len(set(keys)), f"{len(keys)} keys in the ledger")


def progress_table(state: dict[str, Any]) -> Table:
    marks = {
        "done": "[green]✔ done",
        "running": "[yellow]… running",
        "awaiting_approval": "[cyan]⏸ awaiting approval",
        "failed": "[red]✘ failed",
        "skipped": "[dim]– skipped",
        "rejected": "[red]✘ rejected",
        "pending": "[dim]pending",
    }
    table = Table(title=f"{state['id']} — {state['status']} — severity {state['severity']}")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    stages = {s["name"]: s for s in state["stages"]}
    for name in STAGES:
        stage = stages[name]
        table.add_row(name, marks.get(stage["status"], stage["status"]), stage.get("detail", "")[:90])
    return table


def demo(
    api: str = typer.Option("http://127.0.0.1:8200", envvar="STANCH_API_URL", help="the API of a running `stanch up`"),
    timeout: float = typer.Option(180, help="seconds to wait for the incident to close"),
    oncall_token: str = typer.Option(
        None, envvar="STANCH_DEMO_ONCALL_TOKEN", help="an on-call responder's token (when the API wants tokens)"
    ),
    safety_token: str = typer.Option(None, envvar="STANCH_DEMO_SAFETY_TOKEN", help="a safety lead's token (when the API wants tokens)"),
) -> None:
    """Fire the demo incident at a running `stanch up`, follow it, and check every step held."""
    try:
        run = Demo(api, timeout, oncall_token, safety_token)
        run.deploy_the_bad_update()
        incident_id = run.fire_alert()
        final = run.follow(incident_id)
        run.check_restored(final)
    except (httpx.HTTPError, RuntimeError, KeyError) as problem:
        console.print(f"[red]demo failed:[/] {problem}")
        raise typer.Exit(1) from problem
    held = run.checks.all_held
    console.print(
        f"\n{'[green]Every check held' if held else '[red]Some checks failed'}[/]: "
        f"{sum(ok for _, ok, _ in run.checks.results)}/{len(run.checks.results)}"
    )
    raise typer.Exit(0 if held else 1)
