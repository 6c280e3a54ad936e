"""Production is not dev: the API enforces authentication unless a caller opts out, and a
non-loopback `stanch api` starts only with its responders and intake auth files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import Result
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from stanch.api.app import create_app
from stanch.config.settings import Settings
from stanch.intake.auth import INTAKE_SOURCES, IntakeAuthError
from stanch.trust.responders import token_sha256

TOKEN = "production-test-token"


class NoCatalog:
    def __len__(self) -> int:
        return 0


def write_responders(home: Path) -> Path:
    path = home / "responders.yaml"
    path.write_text(yaml.safe_dump({"tokens": [{"user": "alice", "roles": ["oncall"], "token_sha256": token_sha256(TOKEN)}]}))
    return path


def write_intake_auth(home: Path) -> Path:
    path = home / "intake-auth.yaml"
    sources = {name: {"enabled": False} for name in INTAKE_SOURCES}
    path.write_text(yaml.safe_dump({**sources, "generic": [{"bearer": {"token_env": "T_INTAKE_TOKEN"}}]}))
    return path


def test_create_app_enforces_by_default_and_names_the_missing_file(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, runbooks_dir=tmp_path)
    with pytest.raises(IntakeAuthError, match=f"no intake auth file at {tmp_path / 'intake-auth.yaml'}"):
        create_app(settings, catalog=NoCatalog())  # type: ignore[arg-type]


def test_create_app_without_a_responders_file_refuses_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_INTAKE_TOKEN", "intake-secret")
    write_intake_auth(tmp_path)
    with pytest.raises(ValueError, match=f"{tmp_path / 'responders.yaml'}: no responders file"):
        create_app(Settings(home=tmp_path, runbooks_dir=tmp_path), catalog=NoCatalog())  # type: ignore[arg-type]


def test_create_app_with_both_files_enforces_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_INTAKE_TOKEN", "intake-secret")
    write_intake_auth(tmp_path)
    write_responders(tmp_path)
    app = create_app(Settings(home=tmp_path, runbooks_dir=tmp_path, temporal_address="127.0.0.1:1"), catalog=NoCatalog())  # type: ignore[arg-type]
    http = TestClient(app)
    assert http.get("/healthz").json()["intake_auth"] == "enforced"
    assert http.get("/v1/auth").json() == {"mode": "token"}
    assert http.post("/v1/alerts/generic", json={"signal_id": "s-1"}).status_code == 401
    assert http.get("/v1/me").status_code == 401
    assert http.get("/v1/me", headers={"Authorization": f"Bearer {TOKEN}"}).json()["user"] == "alice"


def test_create_app_opens_only_when_asked(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path, runbooks_dir=tmp_path), catalog=NoCatalog(), insecure_dev=True)  # type: ignore[arg-type]
    http = TestClient(app)
    assert http.get("/healthz").json()["intake_auth"] == "insecure-dev"
    assert http.get("/v1/auth").json() == {"mode": "insecure-dev"}


# --- `stanch api` on a non-loopback address ----------------------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[FastAPI]:
    """The apps `stanch api` would serve; nothing binds a port."""
    import uvicorn

    apps: list[FastAPI] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, *_, **__: apps.append(server.config.app))
    return apps


def stanch_api(home: Path, *args: str) -> Result:
    from stanch.cli.main import app

    env = {"STANCH_HOME": str(home), "STANCH_INTAKE_AUTH": None, "STANCH_RESPONDERS": None, "T_INTAKE_TOKEN": "intake-secret"}
    return CliRunner().invoke(app, ["api", *args], env=env)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::"])
def test_insecure_dev_is_refused_on_any_address_but_loopback(tmp_path: Path, served: list[FastAPI], host: str) -> None:
    write_intake_auth(tmp_path)
    write_responders(tmp_path)
    result = stanch_api(tmp_path, "--host", host, "--insecure-dev")
    assert result.exit_code == 1
    assert f"--insecure-dev is for a loopback address only: on {host}" in " ".join(result.output.split())
    assert served == []


def test_a_non_loopback_api_without_its_files_refuses_naming_both(tmp_path: Path, served: list[FastAPI]) -> None:
    result = stanch_api(tmp_path, "--host", "0.0.0.0")
    assert result.exit_code == 1
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "refusing to serve 0.0.0.0 (not loopback) without authentication" in output
    assert f"the responders file {tmp_path / 'responders.yaml'}" in output
    assert f"the intake auth file {tmp_path / 'intake-auth.yaml'}" in output
    assert served == []

    write_responders(tmp_path)
    output = " ".join(stanch_api(tmp_path, "--host", "0.0.0.0").output.split())
    assert "the intake auth file" in output and "the responders file" not in output
    assert served == []


def test_a_non_loopback_api_with_its_files_starts_with_authentication_on(tmp_path: Path, served: list[FastAPI]) -> None:
    write_responders(tmp_path)
    write_intake_auth(tmp_path)
    result = stanch_api(tmp_path, "--host", "0.0.0.0")
    assert result.exit_code == 0, result.output
    assert "INSECURE" not in result.output
    [app] = served
    assert (app.state.intake_auth.mode, app.state.responders.mode) == ("enforced", "token")


def test_loopback_keeps_insecure_dev_for_the_local_demo(tmp_path: Path, served: list[FastAPI]) -> None:
    result = stanch_api(tmp_path, "--insecure-dev")
    assert result.exit_code == 0, result.output
    assert served[0].state.intake_auth.mode == "insecure-dev"
