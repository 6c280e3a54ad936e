"""Responder identity: tokens (hashed at rest) and JWTs, roles, and decisions the API vouches for."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from temporalio.client import WorkflowExecutionStatus

from stanch.api.app import create_app
from stanch.models.decisions import ApprovalDecision
from stanch.trust import assertions
from stanch.trust.responders import (
    JwtIssuer,
    NotAuthenticated,
    ResponderAuth,
    RespondersFile,
    StaticToken,
    load_responder_auth,
    token_sha256,
)
from tests.unit.test_api_alerts import (
    FIRST_RUN_ID,
    FakeClient,
    NoCatalog,
    app,  # noqa: F401 - a fixture
    settings,  # noqa: F401 - a fixture
    use_client,
)

ALICE, SAM, VERA = "stk_alice_token", "stk_sam_token", "stk_vera_token"
JWT_SECRET = "jwt-test-secret-that-is-long-enough-for-hs256"


def auth() -> ResponderAuth:
    config = RespondersFile(
        tokens=[
            StaticToken(user="alice", roles=["oncall"], token_sha256=token_sha256(ALICE)),
            StaticToken(user="sam", roles=["safety"], token_sha256=token_sha256(SAM)),
            StaticToken(user="vera", roles=["auditor"], token_sha256=token_sha256(VERA)),
        ],
        jwt=JwtIssuer(issuer="https://idp.test/", audience="stanch", algorithms=["HS256"], secret_env="JWT"),
    )
    return ResponderAuth(config, jwt_key=JWT_SECRET)


def a_jwt(**overrides) -> str:
    claims = {"sub": "carol", "roles": ["incident-commander"], "iss": "https://idp.test/", "aud": "stanch", "exp": int(time.time()) + 300}
    return jwt.encode({**claims, **overrides}, JWT_SECRET, algorithm="HS256")


@pytest.fixture
def token_app(tmp_path: Path):
    from stanch.config.settings import Settings

    return create_app(
        Settings(home=tmp_path, runbooks_dir=tmp_path, temporal_address="127.0.0.1:1"),
        catalog=NoCatalog(),
        responders=auth(),
        insecure_dev=True,
    )


def test_tokens_and_jwts_give_user_and_roles_and_refusals_say_why():
    responders = auth()
    assert responders.authenticate(f"Bearer {ALICE}").user == "alice"
    carol = responders.authenticate(f"Bearer {a_jwt()}")
    assert (carol.user, carol.roles, carol.via) == ("carol", ["incident-commander"], "jwt")
    for header, reason in [
        (None, "missing Authorization header"),
        ("Basic abc", "must be `Bearer <token>`"),
        ("Bearer stk_nobody", "unknown token"),
        (f"Bearer {a_jwt(exp=int(time.time()) - 10)}", "expired"),
        (f"Bearer {a_jwt(aud='someone-else')}", "refused"),
    ]:
        with pytest.raises(NotAuthenticated, match=reason):
            responders.authenticate(header)


def test_the_responders_file_stores_only_hashes_and_names_bad_fields(tmp_path: Path):
    path = tmp_path / "responders.yaml"
    path.write_text("tokens:\n  - {user: alice, roles: [oncall], token: stk_plaintext}\n")
    with pytest.raises(ValueError, match=r"responders.yaml: tokens.0.token_sha256: "):
        load_responder_auth(path, insecure_dev=False)
    with pytest.raises(ValueError, match="no responders file"):
        load_responder_auth(tmp_path / "missing.yaml", insecure_dev=False)
    assert load_responder_auth(tmp_path / "missing.yaml", insecure_dev=True).mode == "insecure-dev"


def test_a_decision_is_made_in_the_token_holders_name_and_vouched_for(token_app):
    client = FakeClient({"inc-1": WorkflowExecutionStatus.RUNNING})
    http = use_client(token_app, client)
    claimed = {"stage": "contain", "approver": "mallory", "roles": ["safety", "incident-commander"], "approve": True}
    response = http.post("/v1/incidents/inc-1/approvals", json=claimed, headers={"Authorization": f"Bearer {ALICE}"})
    assert response.status_code == 200, response.text
    name, decision, update_id = client.updates[-1]
    assert (name, decision.approver, decision.roles) == ("approve", "alice", ["oncall"])
    occurrence = f"inc-1@{FIRST_RUN_ID[:8]}"
    assert assertions.verified(occurrence, update_id, decision)
    assert not assertions.verified(f"inc-1@{'9' * 8}", update_id, decision), "an assertion is bound to its occurrence"
    assert not assertions.verified(occurrence, "another-update", decision), "to one update"
    assert not assertions.verified(occurrence, update_id, decision.model_copy(update={"roles": ["safety"]})), "and to the roles"


def test_without_a_token_nothing_is_read_or_decided_and_auditors_only_read(token_app):
    client = FakeClient({"inc-1": WorkflowExecutionStatus.RUNNING})
    http = use_client(token_app, client)
    assert http.get("/v1/incidents/inc-1").status_code == 401
    refused = http.post("/v1/incidents/inc-1/ack", json={"responder": "alice"})
    assert refused.status_code == 401 and "Authorization" in refused.json()["detail"]
    assert refused.headers["www-authenticate"] == "Bearer"
    auditor = http.post("/v1/incidents/inc-1/ack", json={"responder": "vera"}, headers={"Authorization": f"Bearer {VERA}"})
    assert auditor.status_code == 403 and "vera holds auditor; acknowledge needs one of the roles" in auditor.json()["detail"]
    assert client.updates == []
    assert http.get("/v1/me", headers={"Authorization": f"Bearer {SAM}"}).json() == {"user": "sam", "roles": ["safety"], "via": "token"}
    assert http.get("/v1/auth").json() == {"mode": "token"}


DECISIONS = {
    "ack": {"responder": "x"},
    "approvals": {"stage": "contain"},
    "severity": {"severity": "low", "reason": "r"},
    "triage": {"outcome": "confirmed", "reason": "r"},
    "decisions": {"stage": "contain", "choice": "retry"},
    "resolve": {"reason": "r"},
    "notes": {"text": "t"},
    "report": {"reference": "EU-1"},
}


def test_a_role_on_no_allow_list_only_reads(token_app):
    """An IdP group such as `employee` authenticates, reads, and is refused every decision."""
    client = FakeClient({"inc-1": WorkflowExecutionStatus.RUNNING})
    http = use_client(token_app, client)
    employee = {"Authorization": f"Bearer {a_jwt(sub='erin', roles=['employee'])}"}
    assert http.get("/v1/me", headers=employee).json()["roles"] == ["employee"]
    for route, body in DECISIONS.items():
        answer = http.post(f"/v1/incidents/inc-1/{route}", json=body, headers=employee)
        assert answer.status_code == 403, (route, answer.text)
        assert answer.json()["detail"].startswith("erin holds employee; "), answer.json()["detail"]
    assert client.updates == []


def test_each_decision_has_its_own_allow_list():
    from stanch.trust import permissions

    approvers = frozenset({"privacy-officer"})
    assert permissions.refusal("approve", "pia", ["privacy-officer"], approvers) is None, "a runbook's approver approves"
    assert permissions.refusal("resolve", "pia", ["privacy-officer"], approvers) is not None, "but does not resolve"
    assert permissions.refusal("record_report_filed", "alice", ["oncall"], approvers) is not None, "the report is safety's duty"
    assert permissions.refusal("record_report_filed", "sam", ["safety"], approvers) is None
    assert permissions.refusal("decide", "carol", ["incident-commander"], approvers) is None


def test_the_approver_roles_are_read_from_the_runbooks():
    from stanch.runbooks.loader import default_runbooks_dir, load_catalog
    from stanch.trust import permissions

    roles = permissions.approver_roles(loaded.runbook for loaded in load_catalog(default_runbooks_dir()).all())
    assert {"oncall", "safety", "incident-commander", "privacy-officer", "ml-engineer"} <= roles


def test_insecure_dev_takes_the_claimed_identity_from_headers_or_the_body(app):
    client = FakeClient({"inc-1": WorkflowExecutionStatus.RUNNING})
    http = use_client(app, client)
    http.post(
        "/v1/incidents/inc-1/approvals", json={"stage": "contain"}, headers={"X-Stanch-User": "dev", "X-Stanch-Roles": "oncall, safety"}
    )
    http.post("/v1/incidents/inc-1/approvals", json={"stage": "contain", "approver": "demo-safety", "roles": ["safety"]})
    decisions: list[ApprovalDecision] = [update[1] for update in client.updates]
    assert [(d.approver, d.roles) for d in decisions] == [("dev", ["oncall", "safety"]), ("demo-safety", ["safety"])]
    assert all(assertions.verified(f"inc-1@{FIRST_RUN_ID[:8]}", nonce, d) for _, d, nonce in client.updates)
    assert http.get("/v1/auth").json() == {"mode": "insecure-dev"}


def test_incident_filters_become_a_visibility_query_with_no_caller_text_spliced_in():
    from datetime import UTC, datetime

    from stanch.api.incidents import visibility_query

    query = visibility_query(severity="critical", runbook="harmful-output", opened_since=datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
    assert query == (
        "WorkflowType = 'IncidentWorkflow' AND ExecutionStatus != 'ContinuedAsNew'"
        " AND IncidentSeverity = 'critical' AND IncidentRunbook = 'harmful-output'"
        " AND IncidentOpenedAt >= '2026-11-26T09:00:00Z'"
    )


def test_notes_and_severity_changes_go_out_in_the_responders_name_vouched_for(token_app):
    client = FakeClient({"inc-1": WorkflowExecutionStatus.RUNNING})
    http = use_client(token_app, client)
    sam = {"Authorization": f"Bearer {SAM}"}
    assert (
        http.post("/v1/incidents/inc-1/notes", json={"by": "mallory", "text": "rolled the canary back by hand"}, headers=sam).status_code
        == 200
    )
    assert (
        http.post("/v1/incidents/inc-1/severity", json={"severity": "low", "reason": "internal users only"}, headers=sam).status_code == 200
    )
    (note_update, note, note_id), (severity_update, change, change_id) = client.updates
    assert (note_update, note.by, note.text) == ("add_note", "sam", "rolled the canary back by hand")
    assert (severity_update, change.by, change.roles) == ("set_severity", "sam", ["safety"])
    occurrence = f"inc-1@{FIRST_RUN_ID[:8]}"
    assert assertions.verified(occurrence, note_id, note) and assertions.verified(occurrence, change_id, change)
