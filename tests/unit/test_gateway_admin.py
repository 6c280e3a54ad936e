"""The reference gateway's admin API lifts blocks and pins models: outside the local demo it
answers only the token the worker holds, and the gateway refuses to start without one."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from stanch.cli.main import app as cli
from stanch.config.settings import Settings
from stanch.gateway.app import create_app
from stanch.models.actions import ActionSpec, TargetRef
from stanch.targets.base import TargetError
from stanch.targets.gateway import GatewayTarget
from stanch.targets.registry import TargetRegistry
from tests.unit.test_gateway import upstreams

TOKEN = "gw-admin-unit"
BLOCK = ActionSpec(kind="block_prompts", params={"patterns": ["(?i)api key"]})


async def test_the_admin_api_answers_only_the_token(tmp_path: Path) -> None:
    gateway = create_app(tmp_path / "gateway.db", upstreams(), admin_token=TOKEN)
    async with gateway.router.lifespan_context(gateway):
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            refused = await http.post("/admin/apply", json={"model": "support-bot", "kind": "block_prompts", "params": {}, "key": "k"})
            assert refused.status_code == 401 and "STANCH_GATEWAY_ADMIN_TOKEN" in refused.json()["detail"]
            wrong = await http.get("/admin/models", headers={"Authorization": "Bearer not-it"})
            assert wrong.status_code == 401
            assert (await http.get("/healthz")).status_code == 200, "only /admin/* is guarded"

        with pytest.raises(TargetError):
            await GatewayTarget("http://gateway", transport=transport).apply("support-bot", BLOCK, "INC-1/contain/0", "INC-1")
        applied = await GatewayTarget("http://gateway", admin_token=TOKEN, transport=transport).apply(
            "support-bot", BLOCK, "INC-1/contain/0", "INC-1"
        )
        assert applied.inverse is not None


def test_the_workers_default_gateway_sends_the_token_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env({"STANCH_HOME": str(tmp_path), "STANCH_GATEWAY_ADMIN_TOKEN": TOKEN})
    target = TargetRegistry(settings).get(TargetRef(model="support-bot"))
    assert isinstance(target, GatewayTarget) and target.admin_headers == {"Authorization": f"Bearer {TOKEN}"}


def test_the_gateway_refuses_to_start_without_a_token_unless_dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STANCH_GATEWAY_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("STANCH_HOME", str(tmp_path))
    monkeypatch.delenv("STANCH_GATEWAY_UPSTREAMS", raising=False)
    served: list[str | None] = []
    no_file = CliRunner().invoke(cli, ["gateway", "--port", "1", "--dev"])
    assert no_file.exit_code == 2 and str(tmp_path / "upstreams.yaml") in no_file.output and served == []
    (tmp_path / "upstreams.yaml").write_text("models: {m: {release: '1', versions: {'1': {base_url: 'http://x/v1', model: m}}}}")
    monkeypatch.setattr("stanch.gateway.app.serve", lambda *args, admin_token=None, **kwargs: served.append(admin_token))
    refused = CliRunner().invoke(cli, ["gateway", "--port", "1"])
    assert refused.exit_code == 2 and "STANCH_GATEWAY_ADMIN_TOKEN" in refused.output and served == []
    assert CliRunner().invoke(cli, ["gateway", "--port", "1", "--dev"]).exit_code == 0 and served == [None]
    monkeypatch.setenv("STANCH_GATEWAY_ADMIN_TOKEN", TOKEN)
    assert CliRunner().invoke(cli, ["gateway", "--port", "1"]).exit_code == 0 and served == [None, TOKEN]
