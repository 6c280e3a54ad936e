"""Decision keys: the API signs with an Ed25519 key only it holds, workers and auditors verify
with public keys, legacy HMAC keys only verify old assertions, and a process whose keys cannot
work together refuses to start naming the variable to set."""

from __future__ import annotations

import base64
import hashlib
import hmac
import stat
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from stanch.models.decisions import ApprovalDecision, ResolveRequest
from stanch.trust import assertions, decision_keys
from stanch.trust.assertions import DecisionKeyError, DecisionKeys
from stanch.trust.decision_keys import PUBLIC_FILE, SIGNING_FILE, for_api, for_audit, for_worker, generate, public_line

OCCURRENCE = "inc-1@abcd1234"
DECISION = ApprovalDecision(stage="contain", approver="alice", roles=["oncall"])


@pytest.fixture(autouse=True)
def restore_trust():
    before = assertions.held()
    yield
    assertions.trust_keys(before)


def test_the_api_signs_with_ed25519_and_a_verifier_needs_only_the_public_key(tmp_path: Path):
    api = for_api(tmp_path / "home", {})
    assertions.trust_keys(api)
    signed = DECISION.model_copy(update={"assertion": assertions.sign(OCCURRENCE, "update-1", DECISION)})
    scheme, kid, signature = signed.assertion.split(":")
    assert scheme == "ed25519" and kid == api.signing[0] and len(base64.b64decode(signature)) == 64

    worker = for_worker(tmp_path / "home", {})
    assert worker.signing is None and set(worker.public) == {kid}, "a worker holds no signing key"
    assertions.trust_keys(worker)
    assert assertions.verified(OCCURRENCE, "update-1", signed)
    assert not assertions.verified(OCCURRENCE, "update-2", signed), "bound to its update"
    assert not assertions.verified("inc-1@99999999", "update-1", signed), "and to its occurrence"
    assert not assertions.verified(OCCURRENCE, "update-1", signed.model_copy(update={"roles": ["safety"]})), "and to every field"
    with pytest.raises(DecisionKeyError, match="only the Stanch API signs"):
        assertions.sign(OCCURRENCE, "update-3", DECISION)  # what a worker holds cannot forge an approval


def test_a_legacy_hmac_assertion_verifies_old_runs_only(tmp_path: Path):
    key = b"k" * 32
    request = ResolveRequest(by="carol", reason="old")
    digest = hmac.new(key, assertions._message(OCCURRENCE, "u-1", request), hashlib.sha256).hexdigest()
    old = request.model_copy(update={"assertion": f"old:{digest}"})
    assertions.trust_keys(DecisionKeys(legacy={"old": key}))
    assert assertions.key_of(old.assertion) == ("hmac", "old")
    assert assertions.verified(OCCURRENCE, "u-1", old, legacy=True), "an old history's assertion still verifies"
    assert "no longer vouches for a new decision" in (assertions.check(OCCURRENCE, "u-1", old) or "")
    # The legacy path on replay: a key held here is checked; one not held is taken as recorded.
    assert not assertions.legacy_verdict(OCCURRENCE, "u-1", old.model_copy(update={"assertion": "old:00"}), replaying=True)
    assertions.trust_none()
    assert assertions.legacy_verdict(OCCURRENCE, "u-1", old, replaying=True)
    assert not assertions.legacy_verdict(OCCURRENCE, "u-1", old, replaying=False), "outside replay, an unknown key vouches for nothing"
    assert not assertions.legacy_verdict(OCCURRENCE, "u-1", request, replaying=True), "no assertion: never vouched, no key needed"


def test_one_machine_needs_no_configuration_and_whoever_starts_first_makes_the_pair(tmp_path: Path):
    home = tmp_path / "home"
    worker = for_worker(home, {})  # the worker may start first
    api = for_api(home, {})
    assert stat.S_IMODE((home / SIGNING_FILE).stat().st_mode) == 0o600
    assert set(worker.public) == set(api.public) == {api.signing[0]}
    assert for_api(home, {}).signing[0] == api.signing[0], "made once, then read"
    assert "decision-signing-key" not in (home / PUBLIC_FILE).read_text() and (home / PUBLIC_FILE).read_text().count(":") == 1


def test_a_verifier_with_only_the_public_file_never_makes_a_signing_key(tmp_path: Path):
    _, public = generate()
    (tmp_path / PUBLIC_FILE).write_text(public + "\n")
    keys = for_worker(tmp_path, {})
    assert list(keys.public) == [public.partition(":")[0]] and not (tmp_path / SIGNING_FILE).exists()
    assert for_audit(tmp_path / "elsewhere", {}).public == {}, "an audit creates nothing"
    assert not (tmp_path / "elsewhere").exists()


def test_the_api_refuses_without_its_signing_key_when_keys_come_from_the_environment(tmp_path: Path):
    _, public = generate()
    with pytest.raises(DecisionKeyError, match="STANCH_DECISION_PUBLIC_KEYS is set but STANCH_DECISION_SIGNING_KEY is not"):
        for_api(tmp_path, {"STANCH_DECISION_PUBLIC_KEYS": public})
    with pytest.raises(DecisionKeyError, match="STANCH_DECISION_SIGNING_KEY"):
        for_api(tmp_path, {"STANCH_DECISION_KEYS": "k1:" + base64.b64encode(b"k" * 32).decode()})
    assert not (tmp_path / SIGNING_FILE).exists(), "no quiet fallback to a key no worker knows"
    lenient = for_api(tmp_path, {"STANCH_DECISION_PUBLIC_KEYS": public}, insecure_dev=True)
    assert lenient.signing is not None and (tmp_path / SIGNING_FILE).exists(), "--insecure-dev: the home folder's keys"


def test_the_api_refuses_a_signing_key_whose_public_half_the_verifiers_do_not_list(tmp_path: Path):
    signing, public = generate()
    other_signing, other_public = generate()
    env = {"STANCH_DECISION_SIGNING_KEY": signing, "STANCH_DECISION_PUBLIC_KEYS": other_public}
    with pytest.raises(DecisionKeyError) as refused:
        for_api(tmp_path, env)
    assert "STANCH_DECISION_PUBLIC_KEYS does not list" in str(refused.value) and public in str(refused.value), "says what to add"
    kid = signing.partition(":")[0]
    same_id = f"{kid}:{other_public.partition(':')[2]}"
    with pytest.raises(DecisionKeyError, match="with another public key"):
        for_api(tmp_path, {**env, "STANCH_DECISION_PUBLIC_KEYS": same_id})
    keys = for_api(tmp_path, {**env, "STANCH_DECISION_PUBLIC_KEYS": f"{other_public},{public}"})  # rotated: both listed
    assert keys.signing[0] == kid and set(keys.public) == {kid, other_public.partition(":")[0]}
    assert other_signing  # the retired key's private half is nowhere needed


def test_a_worker_configured_from_the_environment_needs_public_keys(tmp_path: Path):
    signing, public = generate()
    for env in ({"STANCH_DECISION_SIGNING_KEY": signing}, {"STANCH_DECISION_KEYS": "k1:" + base64.b64encode(b"k" * 32).decode()}):
        with pytest.raises(DecisionKeyError, match="set but STANCH_DECISION_PUBLIC_KEYS is not"):
            for_worker(tmp_path, env)
    legacy = "k1:" + base64.b64encode(b"k" * 32).decode()
    keys = for_worker(tmp_path, {"STANCH_DECISION_PUBLIC_KEYS": public, "STANCH_DECISION_KEYS": legacy})
    assert keys.signing is None and list(keys.public) == [public.partition(":")[0]] and list(keys.legacy) == ["k1"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("nokey", "must look like"),
        ("k:!!!", "not valid base64"),
        ("k:" + base64.b64encode(b"short").decode(), "is 5 bytes"),
    ],
)
def test_malformed_keys_say_what_is_wrong(text: str, says: str):
    with pytest.raises(DecisionKeyError, match=says):
        decision_keys.parse_public_keys(text)
    with pytest.raises(DecisionKeyError, match=says):
        decision_keys.parse_signing_key(text)


def test_stanch_worker_refuses_to_start_naming_the_variable(tmp_path: Path):
    from stanch.cli.main import app

    signing, _ = generate()
    env = {"STANCH_HOME": str(tmp_path), "STANCH_DECISION_SIGNING_KEY": signing, "STANCH_DECISION_PUBLIC_KEYS": None}
    result = CliRunner().invoke(app, ["worker"], env=env)
    assert result.exit_code == 1, result.output
    assert "refusing to start: decision keys" in result.output and "Set STANCH_DECISION_PUBLIC_KEYS" in result.output


def test_stanch_api_refuses_to_start_when_its_key_is_not_among_the_public_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import uvicorn

    from stanch.cli.main import app

    served: list = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, *_, **__: served.append(server.config.app))
    (tmp_path / "responders.yaml").write_text("tokens: [{user: alice, roles: [oncall], token_sha256: " + "a" * 64 + "}]\n")
    from stanch.intake.auth import INTAKE_SOURCES

    auth = {name: {"enabled": False} for name in INTAKE_SOURCES}
    (tmp_path / "auth.yaml").write_text(yaml.safe_dump(auth))
    signing, public = generate()
    other = public_line("other", Ed25519PrivateKey.generate().public_key())
    env = {"STANCH_HOME": str(tmp_path), "STANCH_INTAKE_AUTH": None, "STANCH_DECISION_SIGNING_KEY": signing}
    refused = CliRunner().invoke(
        app, ["api", "--intake-auth", str(tmp_path / "auth.yaml")], env={**env, "STANCH_DECISION_PUBLIC_KEYS": other}
    )
    assert refused.exit_code != 0 and "refusing to start" in refused.output, refused.output
    assert "STANCH_DECISION_PUBLIC_KEYS does not list" in refused.output and not served
    started = CliRunner().invoke(
        app, ["api", "--intake-auth", str(tmp_path / "auth.yaml")], env={**env, "STANCH_DECISION_PUBLIC_KEYS": public}
    )
    assert started.exit_code == 0, started.output
    assert served and assertions.held().signing is not None


def test_stanch_api_insecure_dev_falls_back_to_the_home_keys_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import uvicorn

    from stanch.cli.main import app

    served: list = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, *_, **__: served.append(server.config.app))
    _, public = generate()
    env = {"STANCH_HOME": str(tmp_path), "STANCH_INTAKE_AUTH": None, "STANCH_DECISION_PUBLIC_KEYS": public}
    started = CliRunner().invoke(app, ["api", "--insecure-dev"], env={**env, "STANCH_DECISION_SIGNING_KEY": None})
    assert started.exit_code == 0, started.output
    assert "INSECURE (--insecure-dev): STANCH_DECISION_PUBLIC_KEYS is set but STANCH_DECISION_SIGNING_KEY is not" in started.output
    assert served and (tmp_path / SIGNING_FILE).exists()
