"""Decision keys for many hosts: from mounted files (a Kubernetes Secret) as well as variables,
and rotated without downtime: the new key signs, retired keys still verify while listed, a key
taken off the list is refused by its id, and a decision recorded before the rotation replays."""

from __future__ import annotations

from pathlib import Path

import pytest

from stanch.models.decisions import ApprovalDecision
from stanch.trust import assertions
from stanch.trust.assertions import DecisionKeyError, DecisionKeys
from stanch.trust.decision_keys import for_api, for_audit, for_worker, generate

OCCURRENCE = "inc-7@0123abcd"
DECISION = ApprovalDecision(stage="contain", approver="alice", roles=["oncall"])


@pytest.fixture(autouse=True)
def restore_trust():
    before = assertions.held()
    yield
    assertions.trust_keys(before)


def signed_by(keys: DecisionKeys, nonce: str) -> ApprovalDecision:
    assertions.trust_keys(keys)
    return DECISION.model_copy(update={"assertion": assertions.sign(OCCURRENCE, nonce, DECISION)})


def kid_of(line: str) -> str:
    return line.partition(":")[0]


def test_keys_come_from_mounted_files_one_a_line_with_comments(tmp_path: Path):
    signing, public = generate()
    _, other_public = generate()
    (tmp_path / "signing").write_text(f"# the API's decision key\n{signing}\n")
    (tmp_path / "public").write_text(f"# current first, then retired\n{public}\n{other_public}\n")
    env = {"STANCH_DECISION_SIGNING_KEY_FILE": str(tmp_path / "signing"), "STANCH_DECISION_PUBLIC_KEYS_FILE": str(tmp_path / "public")}

    api = for_api(tmp_path / "api-home", env)
    assert api.signing is not None and api.signing[0] == kid_of(signing)
    worker = for_worker(tmp_path / "worker-home", {"STANCH_DECISION_PUBLIC_KEYS_FILE": str(tmp_path / "public")})
    assert worker.ids == [kid_of(public), kid_of(other_public)]
    assert for_audit(tmp_path / "audit-home", {"STANCH_DECISION_PUBLIC_KEYS_FILE": str(tmp_path / "public")}).ids == worker.ids
    decision = signed_by(api, "update-1")
    assertions.trust_keys(worker)
    assert assertions.verified(OCCURRENCE, "update-1", decision)
    assert not any((tmp_path / name).exists() for name in ("api-home", "worker-home")), "no key file is made in a home"


def test_a_variable_and_its_file_together_are_refused_naming_both(tmp_path: Path):
    signing, public = generate()
    (tmp_path / "public").write_text(public)
    env = {"STANCH_DECISION_PUBLIC_KEYS": public, "STANCH_DECISION_PUBLIC_KEYS_FILE": str(tmp_path / "public")}
    for load in (for_worker, for_audit):
        with pytest.raises(DecisionKeyError, match="both STANCH_DECISION_PUBLIC_KEYS and STANCH_DECISION_PUBLIC_KEYS_FILE"):
            load(tmp_path, env)
    (tmp_path / "signing").write_text(signing)
    with pytest.raises(DecisionKeyError, match="both STANCH_DECISION_SIGNING_KEY and STANCH_DECISION_SIGNING_KEY_FILE"):
        for_api(tmp_path, {"STANCH_DECISION_SIGNING_KEY": signing, "STANCH_DECISION_SIGNING_KEY_FILE": str(tmp_path / "signing")})


def test_a_missing_or_empty_file_or_one_not_listing_the_signer_names_the_file_and_variable(tmp_path: Path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DecisionKeyError, match=f"{missing} \\(STANCH_DECISION_PUBLIC_KEYS_FILE\\): no such file"):
        for_worker(tmp_path, {"STANCH_DECISION_PUBLIC_KEYS_FILE": str(missing)})
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(DecisionKeyError, match="STANCH_DECISION_PUBLIC_KEYS_FILE\\) holds no key"):
        for_worker(tmp_path, {"STANCH_DECISION_PUBLIC_KEYS_FILE": str(tmp_path / "empty")})
    signing, _ = generate()
    _, someone_elses = generate()
    (tmp_path / "signing").write_text(signing)
    (tmp_path / "public").write_text(someone_elses)
    env = {"STANCH_DECISION_SIGNING_KEY_FILE": str(tmp_path / "signing"), "STANCH_DECISION_PUBLIC_KEYS_FILE": str(tmp_path / "public")}
    with pytest.raises(DecisionKeyError, match=f"STANCH_DECISION_PUBLIC_KEYS_FILE\\) does not list '{kid_of(signing)}'"):
        for_api(tmp_path, env)
    with pytest.raises(DecisionKeyError, match="STANCH_DECISION_SIGNING_KEY is not"):
        for_api(tmp_path, {"STANCH_DECISION_PUBLIC_KEYS_FILE": str(tmp_path / "public")})


def test_rotation_new_key_signs_old_still_verifies_and_a_removed_key_is_refused_by_id(tmp_path: Path):
    old_signing, old_public = generate()
    new_signing, new_public = generate()
    before = for_api(tmp_path, {"STANCH_DECISION_SIGNING_KEY": old_signing, "STANCH_DECISION_PUBLIC_KEYS": old_public})
    old_decision = signed_by(before, "before-rotation")

    # Step 1 on every worker: list the new public key beside the old one. Step 2 on the API: sign with the new key.
    both = f"{new_public}\n{old_public}"
    after = for_api(tmp_path, {"STANCH_DECISION_SIGNING_KEY": new_signing, "STANCH_DECISION_PUBLIC_KEYS": both})
    new_decision = signed_by(after, "after-rotation")
    assert assertions.key_of(new_decision.assertion) == ("ed25519", kid_of(new_signing))
    assertions.trust_keys(for_worker(tmp_path, {"STANCH_DECISION_PUBLIC_KEYS": both}))
    assert assertions.check(OCCURRENCE, "after-rotation", new_decision) is None
    assert assertions.check(OCCURRENCE, "before-rotation", old_decision) is None, "the retired key still verifies while listed"

    # Step 3, once nothing in flight carries the old key: take it off the list.
    assertions.trust_keys(for_worker(tmp_path, {"STANCH_DECISION_PUBLIC_KEYS": new_public}))
    reason = assertions.check(OCCURRENCE, "before-rotation", old_decision)
    assert reason is not None and f"signed with key {kid_of(old_signing)!r}, which this worker does not trust" in reason
    assert assertions.check(OCCURRENCE, "after-rotation", new_decision) is None


def test_a_decision_recorded_before_rotation_keeps_its_verdict_after_the_key_is_gone(tmp_path: Path):
    """The verdict on an approval signal is a local activity's result in history, and an accepted
    update is its own verdict: replay reads them and asks no key. Before verdicts were recorded,
    the handler checked on replay: a key no longer held then stands as recorded."""
    old_signing, old_public = generate()
    _, new_public = generate()
    old_api = for_api(tmp_path, {"STANCH_DECISION_SIGNING_KEY": old_signing, "STANCH_DECISION_PUBLIC_KEYS": old_public})
    decision = signed_by(old_api, "approval-1")
    recorded = assertions.verdict(assertions.ApprovalToVerify(occurrence=OCCURRENCE, nonce="approval-1", decision=decision))
    assert recorded.vouched and recorded.key_id == kid_of(old_signing)
    history_text = recorded.model_dump_json()

    assertions.trust_keys(for_worker(tmp_path, {"STANCH_DECISION_PUBLIC_KEYS": new_public}))  # rotated, old key removed
    replayed = assertions.Verdict.model_validate_json(history_text)
    assert replayed.vouched, "what history recorded stands"
    assert assertions.legacy_verdict(OCCURRENCE, "approval-1", decision, replaying=True)
    assert not assertions.legacy_verdict(OCCURRENCE, "approval-1", decision, replaying=False), "outside replay it vouches for nothing"
    fresh = assertions.verdict(assertions.ApprovalToVerify(occurrence=OCCURRENCE, nonce="approval-1", decision=decision))
    assert not fresh.vouched and kid_of(old_signing) in fresh.reason


async def test_a_committed_history_replays_on_a_worker_holding_only_a_rotated_key():
    """The whole workflow: the committed histories' decisions were signed with keys this worker
    no longer holds, and they replay unchanged."""
    from tests.workflow.test_replay import HISTORIES, replay
    from workflows.incident import IncidentWorkflow

    _, new_public = generate()
    assertions.trust_keys(for_worker(Path("/nonexistent"), {"STANCH_DECISION_PUBLIC_KEYS": new_public}))
    path = next(path for path in HISTORIES if path.name == "high_severity_restored.json")
    assert await replay(IncidentWorkflow, path) is None
