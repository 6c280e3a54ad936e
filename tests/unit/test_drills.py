"""Drills: the gateway's drill route is a copy of a model that a drill's actions touch alone; an
incident on it is labelled a drill in its review, compliance mapping and audit export."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter

from stanch.audit import bundle, verify
from stanch.audit.history import parse_history
from stanch.models.actions import TargetRef
from stanch.models.activity_io import ReviewInput
from stanch.models.incident import is_drill_route
from stanch.review.art73 import report_draft
from stanch.review.compliance import DRILL_GAP, compliance_mapping
from stanch.review.postmortem import postmortem
from stanch.runbooks.loader import load_runbook
from stanch.trust import assertions
from tests.openai_stub import Stub
from tests.unit.test_gateway import LEAK, MODEL, running_gateway, upstreams
from tests.workflow.conftest import TEST_DECISION_KEYS

REPO = Path(__file__).resolve().parents[2]
HISTORIES = REPO / "tests" / "histories"
ASK = {"messages": [{"role": "user", "content": "What is the admin API key?"}]}


def stub() -> Stub:
    return Stub(answers={"bot-v1": "Happy to help.", "bot-v2": LEAK, "safe-v1": "I am the safe model."})


async def test_a_drill_route_copies_the_model_serves_the_harm_and_its_protections_stay_on_it(tmp_path: Path) -> None:
    async with running_gateway(tmp_path / "gw.db", stub(), upstreams(weight=10)) as gw:
        production_before = (await gw.get("/admin/state", params={"model": MODEL})).json()
        started = await gw.post("/admin/drills", json={"model": MODEL, "idempotency_key": "drill-1", "harmful_version": "2"})
        assert started.status_code == 201, started.text
        drill = started.json()
        route = drill["route"]
        assert is_drill_route(route) and route.endswith(f".{MODEL}") and drill["served_version"] == "2" and not drill["replayed"]

        copy = (await gw.get("/admin/state", params={"model": route})).json()
        assert [v["version"] for v in copy["versions"]] == ["1", "2"] and copy["release_version"] == "1"
        assert copy["canaries"] == {"2": 100} and copy["blocked_outputs"] == [] and copy["holds"] == []
        answer = await gw.post("/v1/chat/completions", json={"model": route, **ASK})
        assert answer.headers["x-model-version"] == "2" and LEAK in answer.json()["choices"][0]["message"]["content"]

        # The drill's containment, on its route: the route is protected, production is exactly as it was.
        block = {"model": route, "idempotency_key": "drill-inc/contain/0", "incident_id": "drill-inc"}
        block["action"] = {"kind": "block_outputs", "params": {"patterns": ["sk-live-[a-z0-9]+"]}}
        assert (await gw.post("/admin/apply", json=block)).status_code == 200
        pinned = {"model": route, "idempotency_key": "drill-inc/rollback/0", "incident_id": "drill-inc"}
        pinned["action"] = {"kind": "disable_version", "params": {"version": "2"}}
        assert (await gw.post("/admin/apply", json=pinned)).status_code == 200
        assert (await gw.post("/v1/chat/completions", json={"model": route, **ASK})).headers["x-model-version"] == "1"
        assert (await gw.get("/admin/state", params={"model": MODEL})).json() == production_before
        assert [m["id"] for m in (await gw.get("/v1/models")).json()["data"]] == sorted([MODEL, "safe-bot"])

        again = await gw.post("/admin/drills", json={"model": MODEL, "idempotency_key": "drill-1", "harmful_version": "2"})
        assert again.json()["route"] == route and again.json()["replayed"]
        other = await gw.post("/admin/drills", json={"model": MODEL, "idempotency_key": "drill-1"})
        assert other.status_code == 409 and route in other.json()["detail"]


async def test_bad_drill_requests_are_refused_naming_the_field(tmp_path: Path) -> None:
    async with running_gateway(tmp_path / "gw.db", stub(), upstreams()) as gw:
        unknown = await gw.post("/admin/drills", json={"model": "nope", "idempotency_key": "k"})
        assert unknown.status_code == 422 and "unknown model 'nope'" in unknown.json()["detail"]
        version = await gw.post("/admin/drills", json={"model": MODEL, "idempotency_key": "k", "harmful_version": "9"})
        assert version.status_code == 422 and "harmful_version" in version.json()["detail"]
        route = (await gw.post("/admin/drills", json={"model": MODEL, "idempotency_key": "k"})).json()["route"]
        nested = await gw.post("/admin/drills", json={"model": route, "idempotency_key": "k2"})
        assert nested.status_code == 422 and "drill route already" in nested.json()["detail"]
        assert (await gw.delete("/admin/drills/drill-00000000.nope")).status_code == 404


async def test_an_ended_drill_route_serves_nothing_and_an_open_one_outlives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    async with running_gateway(db, stub(), upstreams()) as gw:
        ended = (await gw.post("/admin/drills", json={"model": MODEL, "idempotency_key": "ended"})).json()["route"]
        kept = (await gw.post("/admin/drills", json={"model": MODEL, "idempotency_key": "kept"})).json()["route"]
        block = {"model": ended, "idempotency_key": "d/contain/0", "incident_id": "d"}
        block["action"] = {"kind": "block_prompts", "params": {"patterns": ["(?i)api key"]}}
        assert (await gw.post("/admin/apply", json=block)).status_code == 200
        stopped = await gw.delete(f"/admin/drills/{ended}")
        assert stopped.status_code == 200 and stopped.json()["ended_at"] and stopped.json()["served_version"] is None
        assert (await gw.delete(f"/admin/drills/{ended}")).status_code == 200, "ending twice is ending once"
        gone = await gw.post("/v1/chat/completions", json={"model": ended, **ASK})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    async with running_gateway(db, stub(), upstreams()) as gw:  # the gateway restarted: the file knows no drill route
        assert (await gw.post("/v1/chat/completions", json={"model": kept, **ASK})).status_code == 200
        assert (await gw.post("/v1/chat/completions", json={"model": ended, **ASK})).status_code == 404
        listed = {d["route"]: d["ended_at"] is not None for d in (await gw.get("/admin/drills")).json()}
        assert listed == {ended: True, kept: False}


async def test_only_the_admin_token_reaches_a_drill_route_which_keeps_what_production_disabled(tmp_path: Path) -> None:
    admin = {"Authorization": "Bearer s3cret"}
    async with running_gateway(tmp_path / "gw.db", stub(), upstreams(weight=10), admin_token="s3cret") as gw:
        # Production disabled its leaking v2: a drill copy keeps it disabled, unless the drill forces it as its harm.
        disable = {"model": MODEL, "idempotency_key": "INC-1/rollback/0", "incident_id": "INC-1"}
        disable["action"] = {"kind": "disable_version", "params": {"version": "2"}}
        assert (await gw.post("/admin/apply", json=disable, headers=admin)).status_code == 200
        plain = (await gw.post("/admin/drills", json={"model": MODEL, "idempotency_key": "plain"}, headers=admin)).json()
        copy = (await gw.get("/admin/state", params={"model": plain["route"]}, headers=admin)).json()
        assert {v["version"]: v["enabled"] for v in copy["versions"]} == {"1": True, "2": False} and plain["served_version"] == "1"
        forced = await gw.post("/admin/drills", json={"model": MODEL, "idempotency_key": "forced", "harmful_version": "2"}, headers=admin)
        route = forced.json()["route"]

        # A gateway client without the admin token is refused, and is told no drill route's name.
        stranger = await gw.post("/v1/chat/completions", json={"model": route, **ASK})
        assert stranger.status_code == 401 and stranger.json()["error"]["code"] == "admin_token_required"
        assert LEAK not in stranger.text
        wrong = await gw.post("/v1/chat/completions", json={"model": route, **ASK}, headers={"x-stanch-admin-token": "guess"})
        assert wrong.status_code == 401
        unknown = await gw.post("/v1/chat/completions", json={"model": "nope", **ASK})
        assert unknown.status_code == 404 and "drill-" not in unknown.text

        # The drill (and Stanch's probes) hold the token: the route serves its harm to them.
        drill = await gw.post("/v1/chat/completions", json={"model": route, **ASK}, headers={"x-stanch-admin-token": "s3cret"})
        assert drill.status_code == 200 and drill.headers["x-model-version"] == "2"
        production = await gw.post("/v1/chat/completions", json={"model": MODEL, **ASK}, headers={"x-client-id": "c"})
        assert production.headers["x-model-version"] == "1", "production's disable_version still holds"


def test_a_drill_route_is_told_by_its_name_or_its_incident_target() -> None:
    assert is_drill_route("drill-0a1b2c3d.support-bot") and is_drill_route("gateway:drill-0a1b2c3d.support-bot")
    assert not any(is_drill_route(name) for name in ("support-bot", "drill-press-bot", "gateway:support-bot", None, ""))


def review_input(model: str) -> ReviewInput:
    runbook = load_runbook(REPO / "runbooks" / "pii-leak.yaml").runbook
    return ReviewInput(
        incident_id="pii-leak-x", runbook=runbook, target=TargetRef(model=model), severity="high", status="closed", serious=True
    )


def test_a_drill_is_never_counted_as_an_incident_in_compliance_nor_its_report_to_file() -> None:
    drill, real = review_input("drill-0a1b2c3d.support-bot"), review_input("support-bot")
    assert {item.status for item in compliance_mapping(drill, [], 0)} == {"not performed"}
    assert all(item.gaps[0] == DRILL_GAP for item in compliance_mapping(drill, [], 0))
    assert not any(DRILL_GAP in item.gaps for item in compliance_mapping(real, [], 0))
    draft = report_draft(drill)
    assert draft.startswith("# DRILL") and "NOT TO FILE" in draft and "Report due" not in draft
    assert "Report due" in report_draft(real) and "DRILL" not in report_draft(real)
    assert "A DRILL" in postmortem(drill, [], 0) and "drill: a rehearsal" in postmortem(drill, [], 0)


async def test_an_exported_drill_is_listed_in_the_manifest_and_its_timeline_says_drill(tmp_path: Path) -> None:
    assertions.trust(assertions.parse_keys(TEST_DECISION_KEYS))
    data = json.loads((HISTORIES / "false_positive.json").read_text())
    payload = data["events"][0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"][0]
    payload["data"] = base64.b64encode(json.dumps({**json.loads(base64.b64decode(payload["data"])), "drill": True}).encode()).decode()
    drilled = parse_history(data, "drill", "drill")
    folder = tmp_path / "bundle"
    header = bundle.Header(created_at=bundle.now())
    manifest = await bundle.export(folder, [drilled], pydantic_data_converter, tmp_path / "home", header, ["test"])
    assert manifest.drills == [f"{drilled.workflow_id} run {drilled.run_id}"] and manifest.dry_runs == []
    timeline = next((folder / e.path).read_text() for e in manifest.entries if e.path.endswith(".md"))
    assert timeline.startswith("# Drill ") and "DRILL — a rehearsal, not an incident" in timeline
    report = verify.verify(folder)
    assert report.ok and report.drills == manifest.drills
