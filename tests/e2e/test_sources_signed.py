"""Each sender's documented payload, sent as the sender sends it — headers, signatures,
batching — to a real API process with authentication on; forged and stale requests are
refused with the reason and open nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from stanch.temporal.devserver import wait_for_port
from stanch.trust.responders import token_sha256
from tests.e2e.processes import Process, free_port, wait_for, wait_http

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).parent.parent / "fixtures"
VIEWER_TOKEN = "stk_viewer_" + uuid.uuid4().hex
SECRETS = {
    "AM_PASSWORD": "am-" + uuid.uuid4().hex,
    "GRAFANA_SECRET": "gf-" + uuid.uuid4().hex,
    "PD_TOKEN": "pd-" + uuid.uuid4().hex,
    "DD_TOKEN": "dd-" + uuid.uuid4().hex,
    "SENTRY_SECRET": "se-" + uuid.uuid4().hex,
    "CE_WHSEC": "whsec_" + base64.b64encode(uuid.uuid4().bytes * 2).decode(),
    "GENERIC_HMAC": "gh-" + uuid.uuid4().hex,
    "REPORTS_TOKEN": "rp-" + uuid.uuid4().hex,
}
INTAKE_AUTH = """
alertmanager: [{basic: {username: alertmanager, password_env: AM_PASSWORD}}]
grafana: [{grafana_hmac: {secret_env: GRAFANA_SECRET}}]
pagerduty: [{bearer: {token_env: PD_TOKEN}}]
datadog: [{bearer: {token_env: DD_TOKEN}}]
sentry: [{sentry: {secret_env: SENTRY_SECRET}}]
cloudevents: [{standard_webhooks: {secret_env: CE_WHSEC}}]
generic: [{github_hmac: {secret_env: GENERIC_HMAC}}]
reports: [{bearer: {token_env: REPORTS_TOKEN}}]
findings: [{bearer: {token_env: REPORTS_TOKEN}}]
"""


def hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def standard_webhook_headers(body: bytes, *, age_s: float = 0) -> dict[str, str]:
    message_id, stamp = f"msg_{uuid.uuid4().hex}", time.time() - age_s
    from datetime import UTC, datetime

    signature = Webhook(SECRETS["CE_WHSEC"]).sign(message_id, datetime.fromtimestamp(stamp, UTC), body.decode())
    return {"webhook-id": message_id, "webhook-timestamp": str(int(stamp)), "webhook-signature": signature}


def signed(source: str, fixture: str) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) exactly as that sender would deliver the fixture."""
    data = json.loads((FIXTURES / fixture).read_text())
    headers: dict[str, str] = {"content-type": "application/json"}
    if source == "sentry" or fixture == "cloudevents/binary.json":
        headers.update(data["headers"])
        data = data["body"]
    if fixture == "cloudevents/structured.json":
        headers["content-type"] = "application/cloudevents+json"
    if fixture == "cloudevents/batch.json":
        headers["content-type"] = "application/cloudevents-batch+json"
    body = json.dumps(data).encode()
    path = {"reports": "/v1/reports", "findings": "/v1/findings"}.get(source, f"/v1/alerts/{source}")
    if source == "alertmanager":
        headers["authorization"] = "Basic " + base64.b64encode(f"alertmanager:{SECRETS['AM_PASSWORD']}".encode()).decode()
    elif source == "grafana":
        headers["X-Grafana-Alerting-Signature"] = hex_hmac(SECRETS["GRAFANA_SECRET"], body)
    elif source in ("pagerduty", "datadog", "reports", "findings"):
        token = {"pagerduty": "PD_TOKEN", "datadog": "DD_TOKEN"}.get(source, "REPORTS_TOKEN")
        headers["authorization"] = f"Bearer {SECRETS[token]}"
    elif source == "sentry":
        headers["Sentry-Hook-Signature"] = hex_hmac(SECRETS["SENTRY_SECRET"], body)
    elif source == "cloudevents":
        headers.update(standard_webhook_headers(body))
    elif source == "generic":
        headers["X-Hub-Signature-256"] = "sha256=" + hex_hmac(SECRETS["GENERIC_HMAC"], body)
    return path, body, headers


DELIVERIES = [
    ("alertmanager", "alertmanager_v4.json"),
    ("grafana", "grafana/firing_two_alerts.json"),
    ("grafana", "grafana/resolved.json"),
    ("pagerduty", "pagerduty/trigger.json"),
    ("pagerduty", "pagerduty/resolve.json"),
    ("datadog", "datadog/triggered.json"),
    ("datadog", "datadog/recovered.json"),
    ("sentry", "sentry/metric_alert_critical.json"),
    ("sentry", "sentry/issue_alert.json"),
    ("cloudevents", "cloudevents/structured.json"),
    ("cloudevents", "cloudevents/binary.json"),
    ("cloudevents", "cloudevents/batch.json"),
    ("reports", "reports/harmful_output.json"),
    ("findings", "findings/red_team.json"),
]


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("signed")
    ports = {name: free_port() for name in ("temporal", "ui", "api")}
    (tmp / "intake-auth.yaml").write_text(INTAKE_AUTH)
    (tmp / "home").mkdir()
    (tmp / "home" / "responders.yaml").write_text(
        f"tokens: [{{user: vera, roles: [viewer], token_sha256: {token_sha256(VIEWER_TOKEN)}}}]\n"
    )
    env = {"STANCH_HOME": str(tmp / "home"), "TEMPORAL_ADDRESS": f"127.0.0.1:{ports['temporal']}", **SECRETS}
    temporal = Process(
        "dev-server", ["dev-server", "--home", str(tmp / "home"), "--port", str(ports["temporal"]), "--ui-port", str(ports["ui"])], env, tmp
    )
    wait_for_port("127.0.0.1", ports["temporal"], 60)
    api_process = Process("api", ["api", "--port", str(ports["api"]), "--intake-auth", str(tmp / "intake-auth.yaml")], env, tmp)
    url = f"http://127.0.0.1:{ports['api']}"
    try:
        wait_http(f"{url}/readyz", api_process)
        yield url
    finally:
        api_process.stop()
        temporal.stop()


def listed_incidents(api: str) -> set[str]:
    reply = httpx.get(f"{api}/v1/incidents", params={"limit": 1000}, headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}, timeout=30)
    return {incident["id"] for incident in reply.json()}


def test_each_senders_payload_signed_as_sent_opens_or_joins_incidents(api: str):
    assert httpx.get(f"{api}/healthz").json()["intake_auth"] == "enforced"
    opened: set[str] = set()
    for source, fixture in DELIVERIES:
        path, body, headers = signed(source, fixture)
        answer = httpx.post(f"{api}{path}", content=body, headers=headers, timeout=30)
        assert answer.status_code == 202, f"{fixture}: {answer.status_code} {answer.text}"
        incidents = answer.json()["incidents"]
        assert incidents, f"{fixture} carried no signal"
        opened.update(item["incident_id"] for item in incidents)
        again = httpx.post(
            f"{api}{path}",
            content=body,
            headers=headers if source != "cloudevents" else {**headers, **standard_webhook_headers(body)},
            timeout=30,
        )

        def named(reply):
            return [(item["incident_id"], item["signal_id"]) for item in reply.json()["incidents"]]

        assert named(again) == named(answer), f"{fixture}: a redelivery names the same incidents"
        assert not any(item["opened"] for item in again.json()["incidents"]), f"{fixture}: a redelivery opens nothing"
    assert any(incident.startswith("harmful-output-") for incident in opened)
    assert wait_for(lambda: listed_incidents(api), lambda ids: ids >= opened, timeout=30) >= opened


@pytest.mark.parametrize(
    "source, fixture",
    [
        (s, f)
        for s, f in DELIVERIES
        if f
        in {
            "alertmanager_v4.json",
            "grafana/firing_two_alerts.json",
            "pagerduty/trigger.json",
            "sentry/issue_alert.json",
            "cloudevents/structured.json",
            "reports/harmful_output.json",
        }
    ],
)
def test_forged_credentials_are_refused_with_the_reason_and_open_nothing(api: str, source: str, fixture: str):
    before = listed_incidents(api)
    path, body, headers = signed(source, fixture)
    forged = {
        key: value
        for key, value in headers.items()
        if key.lower() not in {"authorization", "x-grafana-alerting-signature", "sentry-hook-signature", "webhook-signature"}
    }
    missing = httpx.post(f"{api}{path}", content=body, headers=forged, timeout=30)
    assert missing.status_code == 401 and missing.json()["detail"], missing.text
    if source in ("grafana", "sentry", "cloudevents", "generic"):  # signatures cover the body; tokens do not
        tampered = httpx.post(f"{api}{path}", content=body.replace(b"support-bot", b"support-bop"), headers=headers, timeout=30)
        assert tampered.status_code == 401 and "signature" in tampered.json()["detail"].lower(), tampered.text
    time.sleep(1)
    assert listed_incidents(api) == before


def test_a_stale_standard_webhook_is_refused_naming_its_age(api: str):
    path, body, headers = signed("cloudevents", "cloudevents/structured.json")
    stale = httpx.post(f"{api}{path}", content=body, headers={**headers, **standard_webhook_headers(body, age_s=600)}, timeout=30)
    assert stale.status_code == 401
    assert "minutes old" in stale.json()["detail"]
