"""Intake authentication: the config file, every scheme through the real app (intake faked),
the start-up refusal, and `stanch api`'s exit code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.testclient import TestClient
from standardwebhooks import Webhook
from typer.testing import CliRunner

from stanch.api.app import create_app
from stanch.api.auth import (
    CredentialRefused,
    authenticate_sender,
    check_credentials,
    webhook_id,
)
from stanch.api.deps import get_intake
from stanch.config.settings import Settings
from stanch.intake.auth import (
    INTAKE_SOURCES,
    IntakeAuthError,
    IntakeAuthPolicy,
    load_intake_auth,
    parse_intake_auth,
)
from stanch.intake.start import IntakeResult
from stanch.models.signals import Signal

SECRET = "s3cr3t-for-tests-only"
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
BODY = json.dumps({"signal_id": "s-1", "model": "support-bot"}).encode()


class NoCatalog:
    def __len__(self) -> int:
        return 0


class RecordingIntake:
    def __init__(self) -> None:
        self.recorded: list[Signal] = []

    async def __call__(self, signal: Signal) -> IntakeResult:
        self.recorded.append(signal)
        return IntakeResult(incident_id="harmful-output-support-bot-1", runbook="harmful-output", dedup_key="k")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"T_SECRET": SECRET, "T_WHSEC": WHSEC, "T_TOKEN": SECRET, "T_PASSWORD": SECRET}.items():
        monkeypatch.setenv(name, value)


def every_other_source_disabled(**sources: Any) -> dict[str, Any]:
    return {name: sources.get(name, {"enabled": False}) for name in INTAKE_SOURCES}


def policy_for(tmp_path: Path, document: dict[str, Any]) -> IntakeAuthPolicy:
    path = tmp_path / "intake-auth.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_intake_auth(path, explicit=True, insecure_dev=False)


def client_for(tmp_path: Path, policy: IntakeAuthPolicy) -> tuple[TestClient, RecordingIntake]:
    settings = Settings(home=tmp_path, runbooks_dir=tmp_path, temporal_address="127.0.0.1:1")
    app = create_app(settings, catalog=NoCatalog(), intake_auth=policy, insecure_dev=True)  # type: ignore[arg-type]
    intake = RecordingIntake()
    app.dependency_overrides[get_intake] = lambda: intake
    return TestClient(app), intake


# --- how each sender signs ------------------------------------------------------------


def hex_hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def standard_webhooks_headers(secret: str, body: bytes, at: float, msg_id: str = "msg_2a7f") -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(at, UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at)), "webhook-signature": signature}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@dataclass
class Scheme:
    credential: dict[str, Any]
    sign: Callable[[str, bytes, float], dict[str, str]]  # (secret, body, signing time) -> headers
    missing_reason: str
    stale_reason_start: str | None = None  # None: the scheme has no timestamp


SCHEMES = {
    "standard_webhooks": Scheme(
        {"standard_webhooks": {"secret_env": "T_WHSEC"}},
        lambda secret, body, at: standard_webhooks_headers(
            WHSEC if secret == SECRET else "whsec_" + base64.b64encode(b"x" * 32).decode(), body, at
        ),
        "missing webhook-id, webhook-timestamp, webhook-signature headers",
        "webhook timestamp is 10 minutes old; the tolerance is 5 minutes",
    ),
    "github_hmac": Scheme(
        {"github_hmac": {"secret_env": "T_SECRET"}},
        lambda secret, body, at: {"X-Hub-Signature-256": "sha256=" + hex_hmac(secret, body)},
        "missing X-Hub-Signature-256 header",
    ),
    "grafana_hmac": Scheme(
        {"grafana_hmac": {"secret_env": "T_SECRET"}},
        lambda secret, body, at: {
            "X-Grafana-Alerting-Signature": hex_hmac(secret, f"{int(at)}:".encode() + body),
            "X-Grafana-Alerting-Signature-Timestamp": str(int(at)),
        },
        "missing X-Grafana-Alerting-Signature header",
        "webhook timestamp is 10 minutes old; the tolerance is 5 minutes",
    ),
    "sentry": Scheme(
        {"sentry": {"secret_env": "T_SECRET"}},
        lambda secret, body, at: {"Sentry-Hook-Signature": hex_hmac(secret, body), "Sentry-Hook-Resource": "metric_alert"},
        "missing Sentry-Hook-Signature header",
    ),
    "bearer": Scheme(
        {"bearer": {"token_env": "T_TOKEN"}},
        lambda secret, body, at: {"Authorization": f"Bearer {secret}"},
        "missing Authorization header",
    ),
    "basic": Scheme(
        {"basic": {"username": "alertmanager", "password_env": "T_PASSWORD"}},
        lambda secret, body, at: basic("alertmanager", secret),
        "missing Authorization header",
    ),
}


@pytest.mark.parametrize("name", SCHEMES)
def test_each_scheme_accepts_the_right_credential_and_says_why_it_refuses_others(env, tmp_path: Path, name: str) -> None:
    scheme = SCHEMES[name]
    http, intake = client_for(tmp_path, policy_for(tmp_path, every_other_source_disabled(generic=[scheme.credential])))
    now = time.time()

    def post(headers: dict[str, str]):
        return http.post("/v1/alerts/generic", content=BODY, headers={"content-type": "application/json", **headers})

    accepted = post(scheme.sign(SECRET, BODY, now))
    assert accepted.status_code == 202, accepted.text
    assert [s.signal_id for s in intake.recorded] == ["s-1"]

    missing = post({})
    assert (missing.status_code, missing.json()["detail"]) == (401, scheme.missing_reason)

    forged = post(scheme.sign("not-the-secret", BODY, now))
    assert forged.status_code == 401
    assert forged.json()["detail"] in {"signature does not match", "bearer token does not match", "username or password does not match"}

    if name not in ("bearer", "basic"):  # those authenticate the sender, not the body
        tampered_body = BODY.replace(b"s-1", b"s-2")
        tampered = http.post(
            "/v1/alerts/generic", content=tampered_body, headers={"content-type": "application/json", **scheme.sign(SECRET, BODY, now)}
        )
        assert (tampered.status_code, tampered.json()["detail"]) == (401, "signature does not match")

    if scheme.stale_reason_start:
        stale = post(scheme.sign(SECRET, BODY, now - 10 * 60))
        assert (stale.status_code, stale.json()["detail"]) == (401, scheme.stale_reason_start)
        future = post(scheme.sign(SECRET, BODY, now + 7 * 60))
        assert future.status_code == 401 and "in the future" in future.json()["detail"]

    assert [s.signal_id for s in intake.recorded] == ["s-1"]  # nothing refused reached intake
    assert SECRET not in (missing.text + forged.text)


def test_bearer_and_basic_refusals_carry_a_www_authenticate_challenge(env, tmp_path: Path) -> None:
    policy = policy_for(tmp_path, every_other_source_disabled(generic=[SCHEMES["bearer"].credential, SCHEMES["basic"].credential]))
    http, _ = client_for(tmp_path, policy)

    missing = http.post("/v1/alerts/generic", json={"signal_id": "s-1"})
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="stanch-intake", Basic realm="stanch-intake", charset="UTF-8"'
    assert missing.json()["detail"] == "no accepted credential: bearer: missing Authorization header; basic: missing Authorization header"

    # The sender tried basic: only basic's reason is worth reporting.
    wrong = http.post("/v1/alerts/generic", json={"signal_id": "s-1"}, headers=basic("alertmanager", "guess"))
    assert wrong.json()["detail"] == "username or password does not match"
    assert http.post("/v1/alerts/generic", json={"signal_id": "s-1"}, headers=basic("alertmanager", SECRET)).status_code == 202


def test_grafana_without_a_timestamp_signs_the_body_alone_unless_timestamps_are_required(env, tmp_path: Path) -> None:
    plain = {"X-Grafana-Alerting-Signature": hex_hmac(SECRET, BODY)}
    http, _ = client_for(tmp_path, policy_for(tmp_path, every_other_source_disabled(generic=[SCHEMES["grafana_hmac"].credential])))
    assert http.post("/v1/alerts/generic", content=BODY, headers={"content-type": "application/json", **plain}).status_code == 202

    strict = every_other_source_disabled(
        generic=[{"grafana_hmac": {"secret_env": "T_SECRET", "require_timestamp": True, "header": "X-Sig"}}]
    )
    http, _ = client_for(tmp_path, policy_for(tmp_path, strict))
    refused = http.post("/v1/alerts/generic", content=BODY, headers={"content-type": "application/json", "X-Sig": hex_hmac(SECRET, BODY)})
    assert (
        refused.json()["detail"] == "missing X-Grafana-Alerting-Signature-Timestamp header; this source only accepts timestamped signatures"
    )


def test_standard_webhooks_id_is_the_idempotency_key_on_request_state(env, tmp_path: Path) -> None:
    # The dependency alone, on a route that shows what intake would see.
    router = APIRouter(prefix="/v1/alerts")

    @router.post("/generic")
    async def show(request: Request) -> dict[str, Any]:
        return {"webhook_id": webhook_id(request), "by": request.state.authenticated_by, "body": (await request.json())["signal_id"]}

    app = FastAPI()
    app.state.intake_auth = policy_for(tmp_path, every_other_source_disabled(generic=[SCHEMES["standard_webhooks"].credential]))
    app.include_router(router, dependencies=[Depends(authenticate_sender)])

    headers = standard_webhooks_headers(WHSEC, BODY, time.time(), msg_id="msg_redelivered_42")
    answer = TestClient(app).post("/v1/alerts/generic", content=BODY, headers={"content-type": "application/json", **headers})
    assert answer.json() == {"webhook_id": "msg_redelivered_42", "by": "standard_webhooks", "body": "s-1"}


def test_malformed_signatures_are_refused_with_a_reason_not_a_crash(env, tmp_path: Path) -> None:
    policy = policy_for(tmp_path, every_other_source_disabled(generic=[SCHEMES["standard_webhooks"].credential]))
    (credential,) = policy.for_source("generic").credentials
    headers = {"webhook-id": "m", "webhook-timestamp": str(int(time.time())), "webhook-signature": "garbage"}
    with pytest.raises(CredentialRefused, match="webhook-signature header is malformed"):
        check_credentials((credential,), BODY, headers)
    with pytest.raises(CredentialRefused, match="not a Unix time"):
        check_credentials((credential,), BODY, {**headers, "webhook-timestamp": "yesterday"})


def test_a_valid_signature_beside_an_entry_of_another_scheme_is_accepted(env, tmp_path: Path) -> None:
    """Standard Webhooks senders may list signatures of several schemes: one valid v1 is enough."""
    policy = policy_for(tmp_path, every_other_source_disabled(generic=[SCHEMES["standard_webhooks"].credential]))
    (credential,) = policy.for_source("generic").credentials
    headers = standard_webhooks_headers(WHSEC, BODY, time.time())
    headers["webhook-signature"] = "v9,not-base64!! " + headers["webhook-signature"]
    assert check_credentials((credential,), BODY, headers).scheme == "standard_webhooks"
    headers["webhook-signature"] = "v1,c2lnbmVkIGJ5IHNvbWVvbmUgZWxzZQ=="
    with pytest.raises(CredentialRefused, match="signature does not match"):
        check_credentials((credential,), BODY, headers)


def test_disabled_source_is_404_and_unconfigured_one_refused(env, tmp_path: Path) -> None:
    http, _ = client_for(tmp_path, policy_for(tmp_path, every_other_source_disabled(generic=[SCHEMES["bearer"].credential])))
    answer = http.post("/v1/alerts/alertmanager", json={"alerts": []})
    assert answer.status_code == 404
    assert answer.json()["detail"] == "intake from 'alertmanager' is disabled on this Stanch installation"


# --- the file --------------------------------------------------------------------------


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> IntakeAuthPolicy:
    path = tmp_path / "intake-auth.yaml"
    path.write_text(text)
    return parse_intake_auth(path, text, env or {})


def test_the_file_resolves_secrets_from_env_and_files_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "grafana").write_text(SECRET + "\n")
    policy = load(
        tmp_path,
        """
alertmanager:
  - basic: {username: alertmanager, password_env: AM_PASSWORD}
grafana:
  credentials:
    - grafana_hmac: {secret_file: secrets/grafana}
pagerduty: {enabled: false}
""",
        {"AM_PASSWORD": "pw"},
    )
    (am,) = policy.for_source("alertmanager").credentials
    (grafana,) = policy.for_source("grafana").credentials
    assert (am.scheme, am.username, am.secret) == ("basic", "alertmanager", "pw")
    assert (grafana.scheme, grafana.secret, grafana.header) == ("grafana_hmac", SECRET, "X-Grafana-Alerting-Signature")
    assert not policy.for_source("pagerduty").enabled
    assert SECRET not in repr(policy)
    assert policy.open_sources() == ["datadog", "sentry", "cloudevents", "generic", "reports", "findings"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "grafana:\n  - grafana_hmac: {secret: hunter2}\n",
            "grafana.credentials.0.grafana_hmac: `secret` would put a secret in this file, which is refused",
        ),
        (
            "generic:\n  - bearer: {token: hunter2}\n",
            "generic.credentials.0.bearer: `token` would put a secret in this file, which is refused: name an environment variable with "
            "token_env",
        ),
        (
            "alertmanager:\n  - basic: {username: am, password: hunter2}\n",
            "alertmanager.credentials.0.basic: `password` would put a secret",
        ),
        (
            "sentry:\n  - sentry: {secret_env: 'hunter2 pasted here'}\n",
            "sentry.credentials.0.sentry.secret_env: must be the name of an environment variable",
        ),
        ("pagerdoody: []\n", "pagerdoody: unknown intake source; the sources are alertmanager,"),
        ("generic:\n  - hmac: {secret_env: X}\n", "generic.credentials.0: unknown credential scheme 'hmac'"),
        (
            "generic:\n  - bearer: {token_env: A, token_file: b}\n",
            "generic.credentials.0.bearer: give exactly one of token_env or token_file, not both",
        ),
        ("generic:\n  - bearer: {}\n", "generic.credentials.0.bearer: give exactly one of token_env or token_file"),
        ("generic:\n  enabled: maybe\n", "generic.enabled: "),
        (
            "generic:\n  - bearer: {token_env: UNSET_VAR}\n",
            "generic.credentials.0.bearer.token_env: environment variable UNSET_VAR is not set or empty",
        ),
        (
            "generic:\n  - standard_webhooks: {secret_env: EMPTYISH}\n",
            "generic.credentials.0.standard_webhooks: not a Standard Webhooks secret",
        ),
        ("generic: [\n", "line 2, column 1: YAML syntax error"),
        ("- generic\n", "(file): expected a mapping of source names, got list"),
    ],
)
def test_config_errors_name_file_and_field_and_never_echo_a_secret(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(IntakeAuthError) as error:
        load(tmp_path, text, {"EMPTYISH": "whsec_"})
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'intake-auth.yaml'}: ")
    assert expected in message
    assert "hunter2" not in message


def test_every_problem_of_a_kind_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(IntakeAuthError) as schema_errors:
        load(tmp_path, "nope: []\ngeneric:\n  - hmac: {secret_env: A}\n")
    assert [line.split(": ")[1] for line in schema_errors.value.lines] == ["nope", "generic.credentials.0"]

    with pytest.raises(IntakeAuthError) as secret_errors:
        load(tmp_path, "generic:\n  - bearer: {token_env: A}\ngrafana:\n  - sentry: {secret_file: missing}\n")
    assert [line.split(": ")[1] for line in secret_errors.value.lines] == [
        "grafana.credentials.0.sentry.secret_file",
        "generic.credentials.0.bearer.token_env",
    ]


# --- refusing to start -----------------------------------------------------------------


def test_an_enabled_source_without_credentials_stops_start_up_naming_it(env, tmp_path: Path) -> None:
    document = every_other_source_disabled(generic=[SCHEMES["bearer"].credential])
    del document["sentry"]
    document["findings"] = {"enabled": True}
    policy = policy_for(tmp_path, document)
    with pytest.raises(IntakeAuthError, match=r"intake sources sentry, findings are enabled with no credential in .*intake-auth.yaml"):
        policy.require_credentials()
    with pytest.raises(IntakeAuthError, match="sentry, findings"):
        create_app(Settings(home=tmp_path, runbooks_dir=tmp_path), catalog=NoCatalog(), intake_auth=policy, insecure_dev=True)  # type: ignore[arg-type]

    policy_for(tmp_path, every_other_source_disabled(generic=[SCHEMES["bearer"].credential])).require_credentials()


def test_no_file_is_refused_unless_insecure_dev_which_opens_everything(tmp_path: Path) -> None:
    missing = tmp_path / "intake-auth.yaml"
    with pytest.raises(IntakeAuthError, match="no intake auth file at .* pass --insecure-dev"):
        load_intake_auth(missing, explicit=False, insecure_dev=False)
    with pytest.raises(IntakeAuthError, match="the intake auth file does not exist"):
        load_intake_auth(missing, explicit=True, insecure_dev=True)  # named on purpose: a typo must not open the API

    policy = load_intake_auth(missing, explicit=False, insecure_dev=True)
    http, _ = client_for(tmp_path, policy)
    assert http.post("/v1/alerts/generic", json={"signal_id": "s-1"}).status_code == 202
    health = http.get("/healthz").json()
    assert health["intake_auth"] == "insecure-dev"
    assert set(INTAKE_SOURCES) <= set(health["intake_open_sources"])


def cli_env(tmp_path: Path) -> dict[str, str | None]:
    return {"STANCH_HOME": str(tmp_path), "T_TOKEN": SECRET, "STANCH_INTAKE_AUTH": None}


def test_stanch_api_exits_non_zero_naming_the_unprotected_source(tmp_path: Path) -> None:
    from stanch.cli.main import app

    path = tmp_path / "auth.yaml"
    path.write_text(yaml.safe_dump({**every_other_source_disabled(generic=[SCHEMES["bearer"].credential]), "datadog": []}))
    result = CliRunner().invoke(app, ["api", "--intake-auth", str(path)], env=cli_env(tmp_path))
    assert result.exit_code == 1
    assert "refusing to start" in result.output and "intake source datadog is enabled with no credential" in result.output

    result = CliRunner().invoke(app, ["api"], env=cli_env(tmp_path))  # no file at HOME/intake-auth.yaml
    assert result.exit_code == 1 and "no intake auth file at" in result.output


def test_stanch_api_starts_with_insecure_dev_and_says_so_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from stanch.cli.main import app

    served: list[FastAPI] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, *_, **__: served.append(server.config.app))
    result = CliRunner().invoke(app, ["api", "--insecure-dev"], env=cli_env(tmp_path))
    assert result.exit_code == 0, result.output
    assert "INSECURE (--insecure-dev)" in result.output and "alertmanager" in result.output
    assert served[0].state.intake_auth.mode == "insecure-dev"

    # A complete file (and someone to respond) starts without the flag, and quietly.
    (tmp_path / "responders.yaml").write_text("tokens: [{user: alice, roles: [oncall], token_sha256: " + "a" * 64 + "}]\n")
    path = tmp_path / "auth.yaml"
    path.write_text(yaml.safe_dump(every_other_source_disabled(generic=[SCHEMES["bearer"].credential])))
    result = CliRunner().invoke(app, ["api", "--intake-auth", str(path)], env=cli_env(tmp_path))
    assert result.exit_code == 0, result.output
    assert "INSECURE" not in result.output
    assert served[1].state.intake_auth.mode == "enforced"


def test_stanch_up_runs_the_api_insecure_dev_and_passes_the_file_through(tmp_path: Path) -> None:
    from stanch.cli.up import UpPlan

    plan = UpPlan(Settings(home=tmp_path), True, 7233, 8233, 8200, 8300, 90.0, intake_auth=tmp_path / "auth.yaml")
    assert plan.api_command(["py"]) == [
        "py",
        "api",
        "--host",
        "127.0.0.1",
        "--port",
        "8200",
        "--insecure-dev",
        "--intake-auth",
        str(tmp_path / "auth.yaml"),
    ]
    assert UpPlan(Settings(home=tmp_path), True, 7233, 8233, 8200, 8300, 90.0).api_command(["py"])[-1] == "--insecure-dev"


def test_a_report_without_its_own_id_is_named_by_the_webhook_id_across_re_rendered_retries(env, tmp_path: Path) -> None:
    policy = policy_for(tmp_path, every_other_source_disabled(reports=[SCHEMES["standard_webhooks"].credential]))
    http, intake = client_for(tmp_path, policy)
    for sent_at in ("10:00:00", "10:00:07"):  # the sender's retry re-renders its body
        body = json.dumps(
            {
                "reporter": "agent-7",
                "surface": "chat",
                "model": "support-bot",
                "prompt_excerpt": "api key?",
                "response_excerpt": f"(at {sent_at})",
                "category": "harmful-output",
            }
        ).encode()
        headers = {**standard_webhooks_headers(WHSEC, body, time.time(), msg_id="msg_report_9"), "content-type": "application/json"}
        assert http.post("/v1/reports", content=body, headers=headers).status_code == 202
    assert [s.signal_id for s in intake.recorded] == ["user_report:webhook-msg_report_9"] * 2
