"""The gateway's sample store as an incident relies on it: who each version served, counted
always; what it answered only when content sampling is on, sealed at rest, bounded per version
and forgotten after its retention; read back over the admin API, behind the admin token."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from stanch.gateway.samples import COUNTS_RETENTION, Party, SampleSettings, SampleSettingsError, SampleStore, ensure_key_file
from stanch.gateway.store import GatewayStore
from tests.openai_stub import Stub
from tests.unit.test_gateway import LEAK, MODEL, SECRET, chat, running_gateway, upstreams

KEY = base64.b64encode(bytes(range(32))).decode()
CONTENT = {"STANCH_GATEWAY_SAMPLES": "content", "STANCH_GATEWAY_SAMPLE_KEY": KEY}
HOUR_AGO = datetime.now(UTC) - timedelta(hours=1)


def sample_store(tmp_path: Path, **settings: object) -> SampleStore:
    return SampleStore(GatewayStore(tmp_path / "gateway.db"), SampleSettings(**settings))  # type: ignore[arg-type]


def test_with_content_off_only_counts_and_ids_are_kept(tmp_path: Path) -> None:
    samples = sample_store(tmp_path)
    for user in ("u1", "u2", "u1"):
        samples.keep(MODEL, "2", Party(user=user, tenant="acme"), f"r-{user}", "What is the API key?", LEAK)
    exposure = samples.exposure(MODEL, HOUR_AGO, datetime.now(UTC))
    assert exposure["content_sampled"] is False
    assert exposure["versions"] == [{"version": "2", "requests": 3, "users": ["u1", "u2"], "tenants": ["acme"], "samples": 0}]
    assert samples.samples(MODEL, HOUR_AGO, datetime.now(UTC))["samples"] == []
    assert SECRET.encode() not in (tmp_path / "gateway.db").read_bytes()


def test_content_is_sealed_at_rest_and_opens_for_rescoring(tmp_path: Path) -> None:
    samples = sample_store(tmp_path, content=True, key=bytes(range(32)))
    samples.keep(MODEL, "2", Party(user="u1", tenant=None), "r-1", "What is the API key of ACME-PROMPT-7?", LEAK)
    samples.store.conn.execute("PRAGMA wal_checkpoint(FULL)")
    on_disk = b"".join(path.read_bytes() for path in tmp_path.iterdir() if path.name.startswith("gateway.db"))
    assert SECRET.encode() not in on_disk and b"ACME-PROMPT-7" not in on_disk
    page = samples.samples(MODEL, HOUR_AGO, datetime.now(UTC))
    assert [(s["request_id"], s["user"], s["version"], s["answer"]) for s in page["samples"]] == [("r-1", "u1", "2", LEAK)]
    assert page["samples"][0]["prompt"] == "What is the API key of ACME-PROMPT-7?"


def test_a_sample_sealed_under_another_key_is_counted_unreadable_not_shown(tmp_path: Path) -> None:
    sample_store(tmp_path, content=True, key=bytes(range(32))).keep(MODEL, "2", Party("u1", None), "r-1", "q", LEAK)
    other = sample_store(tmp_path, content=True, key=bytes(32))
    page = other.samples(MODEL, HOUR_AGO, datetime.now(UTC))
    assert page["samples"] == [] and page["unreadable"] == 1


def test_samples_older_than_the_retention_are_purged(tmp_path: Path) -> None:
    samples = sample_store(tmp_path, content=True, key=bytes(range(32)), retention=timedelta(hours=2))
    samples.keep(MODEL, "2", Party("old", None), "r-old", "q", LEAK, at=datetime.now(UTC) - timedelta(hours=3))
    samples.keep(MODEL, "2", Party("new", None), "r-new", "q", LEAK)
    week = datetime.now(UTC) - timedelta(days=7)
    assert [s["user"] for s in samples.samples(MODEL, week, datetime.now(UTC))["samples"]] == ["new"]
    # Who was served is counted still: exposure outlives content.
    assert samples.exposure(MODEL, week, datetime.now(UTC))["versions"][0]["requests"] == 2


def test_user_and_tenant_ids_are_forgotten_with_the_counts(tmp_path: Path) -> None:
    samples = sample_store(tmp_path)
    long_ago = datetime.now(UTC) - COUNTS_RETENTION - timedelta(days=1)
    samples.keep(MODEL, "2", Party("gone-user", "gone-tenant"), "r-old", "q", LEAK, at=long_ago)
    samples.keep(MODEL, "2", Party("back-user", "acme"), "r-back-old", "q", LEAK, at=long_ago)
    samples.keep(MODEL, "2", Party("back-user", "acme"), "r-back", "q", LEAK)  # served again: kept
    kept = samples.store.query("SELECT kind, name FROM sample_parties ORDER BY kind, name")
    assert [(row["kind"], row["name"]) for row in kept] == [("tenant", "acme"), ("user", "back-user")]
    since_then = samples.exposure(MODEL, long_ago - timedelta(days=1), datetime.now(UTC))["versions"]
    assert [(v["users"], v["tenants"]) for v in since_then] == [(["back-user"], ["acme"])]


def test_each_version_keeps_at_most_its_limit_the_newest(tmp_path: Path) -> None:
    samples = sample_store(tmp_path, content=True, key=bytes(range(32)), limit=3)
    for n in range(5):
        samples.keep(MODEL, "2", Party(f"u{n}", None), f"r-{n}", "q", LEAK)
    samples.keep(MODEL, "1", Party("v1-user", None), "r-v1", "q", "fine")
    kept = samples.samples(MODEL, HOUR_AGO, datetime.now(UTC))["samples"]
    assert [s["request_id"] for s in kept] == ["r-2", "r-3", "r-4", "r-v1"]
    assert {v["version"]: v["requests"] for v in samples.exposure(MODEL, HOUR_AGO, datetime.now(UTC))["versions"]} == {"1": 1, "2": 5}


def test_samples_page_in_order(tmp_path: Path) -> None:
    samples = sample_store(tmp_path, content=True, key=bytes(range(32)))
    for n in range(5):
        samples.keep(MODEL, "2", Party(f"u{n}", None), f"r-{n}", "q", LEAK)
    first = samples.samples(MODEL, HOUR_AGO, datetime.now(UTC), limit=3)
    rest = samples.samples(MODEL, HOUR_AGO, datetime.now(UTC), after=first["next_after"], limit=3)
    assert [s["request_id"] for s in first["samples"] + rest["samples"]] == [f"r-{n}" for n in range(5)]
    assert rest["next_after"] is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"STANCH_GATEWAY_SAMPLES": "content"}, "STANCH_GATEWAY_SAMPLE_KEY"),
        ({**CONTENT, "STANCH_GATEWAY_SAMPLE_KEY": base64.b64encode(b"short").decode()}, "STANCH_GATEWAY_SAMPLE_KEY"),
        ({"STANCH_GATEWAY_SAMPLES": "everything"}, "STANCH_GATEWAY_SAMPLES"),
        ({"STANCH_GATEWAY_SAMPLE_RETENTION": "forever"}, "STANCH_GATEWAY_SAMPLE_RETENTION"),
        ({"STANCH_GATEWAY_SAMPLE_LIMIT": "0"}, "STANCH_GATEWAY_SAMPLE_LIMIT"),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SampleSettingsError, match=named):
        SampleSettings.from_env(env)


def test_content_sampling_is_off_by_default_and_a_key_file_serves(tmp_path: Path) -> None:
    assert SampleSettings.from_env({}).content is False
    key_file = ensure_key_file(tmp_path / "sample.key")
    assert key_file.stat().st_mode & 0o077 == 0
    settings = SampleSettings.from_env({"STANCH_GATEWAY_SAMPLES": "content", "STANCH_GATEWAY_SAMPLE_KEY_FILE": str(key_file)})
    assert settings.content and settings.key is not None and len(settings.key) == 32


async def test_users_served_through_the_gateway_are_read_back_over_the_admin_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CONTENT.items():
        monkeypatch.setenv(name, value)
    stub = Stub(answers={"bot-v1": "fine", "bot-v2": LEAK, "safe-v1": "safe"})
    async with running_gateway(tmp_path / "gateway.db", stub, upstreams(weight=100), admin_token="t0ken") as gw:
        for user in ("alice", "bob"):
            assert (await chat(gw, headers={"x-client-id": user, "x-tenant-id": "acme"})).status_code == 200
        assert (await chat(gw, user="carol", stream=True)).status_code == 200
        since = HOUR_AGO.isoformat()
        assert (await gw.get("/admin/exposure", params={"model": MODEL, "since": since})).status_code == 401
        auth = {"Authorization": "Bearer t0ken"}
        exposure = (await gw.get("/admin/exposure", params={"model": MODEL, "since": since}, headers=auth)).json()
        assert exposure["versions"] == [
            {"version": "2", "requests": 3, "users": ["alice", "bob", "carol"], "tenants": ["acme"], "samples": 3}
        ]
        page = (await gw.get("/admin/exposure/samples", params={"model": MODEL, "since": since}, headers=auth)).json()
        assert [(s["user"], s["answer"]) for s in page["samples"]] == [("alice", LEAK), ("bob", LEAK), ("carol", LEAK)]
