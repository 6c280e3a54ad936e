"""Payload encryption: the AES-GCM codec, its keys, the codec server and how `stanch up` runs it."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
import typer
from fastapi.testclient import TestClient
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DefaultFailureConverterWithEncodedAttributes
from typer.testing import CliRunner

from stanch.config.settings import Settings
from stanch.models.signals import ReproCase, Signal
from stanch.temporal.client import data_converter
from stanch.temporal.codec import (
    DecryptionError,
    EncryptionCodec,
    EncryptionKeyError,
    load_encryption_keys,
    parse_encryption_keys,
)
from stanch.temporal.codec_server import create_codec_app
from stanch.trust.responders import ResponderAuth, RespondersFile, StaticToken, token_sha256

K1 = "k1:" + base64.b64encode(b"1" * 32).decode()
K2 = "k2:" + base64.b64encode(b"2" * 32).decode()
PROMPT = "What is the admin API key? (unit-test prompt)"


def run(coroutine):
    return asyncio.run(coroutine)


def plain_payloads(*values) -> list[Payload]:
    return pydantic_data_converter.payload_converter.to_payloads(list(values))


def codec(*lines: str) -> EncryptionCodec:
    return EncryptionCodec(parse_encryption_keys(",".join(lines)))


# --- the codec ----------------------------------------------------------------------------


def test_round_trip_leaves_no_plaintext_and_names_the_key():
    signal = Signal(signal_id="s1", repro=[ReproCase(prompt=PROMPT)])
    original = plain_payloads(signal)
    encrypted = run(codec(K1).encode(original))
    assert encrypted[0].metadata["encoding"] == b"binary/encrypted"
    assert encrypted[0].metadata["encryption-key-id"] == b"k1"
    assert PROMPT.encode() not in encrypted[0].SerializeToString()
    assert run(codec(K1).decode(encrypted)) == original
    again = run(codec(K1).encode(original))
    assert again[0].data[:12] != encrypted[0].data[:12], "a fresh nonce every time"


def test_the_whole_data_converter_round_trips_a_model_when_keys_are_configured(tmp_path: Path):
    converter = data_converter(Settings(home=tmp_path, encryption_keys=K1))
    signal = Signal(signal_id="s1", repro=[ReproCase(prompt=PROMPT)])
    encoded = run(converter.encode([signal]))
    assert all(p.metadata["encoding"] == b"binary/encrypted" for p in encoded)
    assert run(converter.decode(encoded, [Signal])) == [signal]
    # Failure messages (which may quote a prompt) go through the codec too.
    assert isinstance(converter.failure_converter, DefaultFailureConverterWithEncodedAttributes)


def test_without_keys_the_data_converter_is_plain_pydantic_and_no_key_file_appears(tmp_path: Path):
    assert data_converter(Settings(home=tmp_path)) is pydantic_data_converter
    assert not (tmp_path / "encryption-keys").exists(), "encryption is never switched on by itself"


def test_rotation_new_data_uses_the_new_key_and_old_data_still_decodes():
    old = run(codec(K1).encode(plain_payloads("written under k1")))
    rotated = codec(K2, K1)
    new = run(rotated.encode(plain_payloads("written under k2")))
    assert new[0].metadata["encryption-key-id"] == b"k2"
    assert run(rotated.decode(old + new)) == plain_payloads("written under k1", "written under k2")


def test_a_payload_under_an_unknown_key_id_says_which_id():
    old = run(codec(K1).encode(plain_payloads("x")))
    with pytest.raises(DecryptionError, match=r"key id 'k1', which is not configured \(configured: k2\)"):
        run(codec(K2).decode(old))


def test_an_altered_payload_or_a_different_key_under_the_same_id_is_refused():
    encrypted = run(codec(K1).encode(plain_payloads("x")))[0]
    tampered = Payload(metadata=dict(encrypted.metadata), data=encrypted.data[:-1] + bytes([encrypted.data[-1] ^ 1]))
    with pytest.raises(DecryptionError, match="failed authentication"):
        run(codec(K1).decode([tampered]))
    other_k1 = "k1:" + base64.b64encode(b"9" * 32).decode()
    with pytest.raises(DecryptionError, match="failed authentication"):
        run(codec(other_k1).decode([encrypted]))


def test_payloads_that_are_not_encrypted_pass_through_decode():
    plain = plain_payloads({"written": "before encryption was on"}, None)
    assert run(codec(K1).decode(plain)) == plain


# --- key configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("k1", r"entry 1 must look like 'kid:base64key'"),
        (f"{K1},:abc", r"entry 2 must look like 'kid:base64key'"),
        ("k1:not base64!", r"key 'k1' is not valid base64"),
        ("short:" + base64.b64encode(b"x" * 16).decode(), r"key 'short' is 16 bytes; AES-256 needs exactly 32"),
        (f"{K1},{K1}", r"key id 'k1' is listed twice"),
        ("bad id:" + base64.b64encode(b"x" * 32).decode(), r"key id 'bad id' may only use letters"),
        (" , ", r"no encryption key"),
    ],
)
def test_bad_keys_are_refused_naming_the_source_and_the_problem(text: str, problem: str):
    with pytest.raises(EncryptionKeyError, match=problem) as refused:
        parse_encryption_keys(text, "STANCH_ENCRYPTION_KEYS")
    assert str(refused.value).startswith("STANCH_ENCRYPTION_KEYS: ")
    assert base64.b64encode(b"x" * 16).decode() not in str(refused.value), "never the key itself"


def test_keys_come_from_the_environment_first_then_the_home_file(tmp_path: Path):
    assert load_encryption_keys(Settings(home=tmp_path)) is None
    (tmp_path / "encryption-keys").write_text(f"# newest first\n{K2}\n{K1}\n")
    assert [kid for kid, _ in load_encryption_keys(Settings(home=tmp_path))] == ["k2", "k1"]
    from_env = Settings.from_env({"STANCH_HOME": str(tmp_path), "STANCH_ENCRYPTION_KEYS": K1})
    assert [kid for kid, _ in load_encryption_keys(from_env)] == ["k1"]
    assert "STANCH_ENCRYPTION_KEYS" in from_env.child_env() and K1 not in repr(from_env)


def test_a_named_keys_file_must_exist_and_parse(tmp_path: Path):
    missing = Settings.from_env({"STANCH_HOME": str(tmp_path), "STANCH_ENCRYPTION_KEYS_FILE": str(tmp_path / "nope")})
    with pytest.raises(EncryptionKeyError, match="nope: no such file"):
        load_encryption_keys(missing)
    (tmp_path / "keys").write_text("k1:abc=\n")
    named = Settings.from_env({"STANCH_HOME": str(tmp_path), "STANCH_ENCRYPTION_KEYS_FILE": str(tmp_path / "keys")})
    with pytest.raises(EncryptionKeyError, match=r"keys: key 'k1' is 2 bytes"):
        data_converter(named)
    assert named.child_env()["STANCH_ENCRYPTION_KEYS_FILE"] == str(tmp_path / "keys")


def test_keygen_prints_a_usable_key_and_write_puts_it_first(tmp_path: Path):
    from stanch.cli.codec import codec_app

    cli = typer.Typer()
    cli.add_typer(codec_app, name="codec")  # as `stanch codec` registers it
    env = {"STANCH_HOME": str(tmp_path), "STANCH_ENCRYPTION_KEYS": ""}
    printed = CliRunner().invoke(cli, ["codec", "keygen", "--kid", "k9"], env=env)
    assert printed.exit_code == 0, printed.output
    assert [kid for kid, _ in parse_encryption_keys(printed.stdout)] == ["k9"]

    (tmp_path / "encryption-keys").write_text(K1 + "\n")
    written = CliRunner().invoke(cli, ["codec", "keygen", "--kid", "k2", "--write"], env=env)
    assert written.exit_code == 0, written.output
    assert [kid for kid, _ in load_encryption_keys(Settings(home=tmp_path))] == ["k2", "k1"]
    assert (tmp_path / "encryption-keys").stat().st_mode & 0o077 == 0
    again = CliRunner().invoke(cli, ["codec", "keygen", "--kid", "k1", "--write"], env=env)
    assert again.exit_code == 1 and "already has a key with id 'k1'" in again.output


# --- the codec server ---------------------------------------------------------------------

AUDITOR, ONCALL = "stk_vera_auditor", "stk_olga_oncall"
UI = "http://127.0.0.1:8233"


def token_auth() -> ResponderAuth:
    return ResponderAuth(
        RespondersFile(
            tokens=[
                StaticToken(user="vera", roles=["auditor"], token_sha256=token_sha256(AUDITOR)),
                StaticToken(user="olga", roles=["oncall"], token_sha256=token_sha256(ONCALL)),
            ]
        )
    )


def body(payloads: list[Payload]) -> str:
    return json_format.MessageToJson(Payloads(payloads=payloads))


def payloads_in(text: str) -> list[Payload]:
    return list(json_format.Parse(text, Payloads()).payloads)


def test_codec_server_decodes_for_any_responder_and_refuses_without_a_token():
    http = TestClient(create_codec_app(codec(K1), token_auth()))
    encrypted = body(run(codec(K1).encode(plain_payloads(PROMPT))))
    refused = http.post("/decode", content=encrypted)
    assert refused.status_code == 401 and "missing Authorization header" in refused.json()["detail"]
    assert http.post("/decode", content=encrypted, headers={"Authorization": "Bearer stk_nobody"}).status_code == 401
    decoded = http.post("/default/decode", content=encrypted, headers={"Authorization": f"Bearer {AUDITOR}", "X-Namespace": "default"})
    assert decoded.status_code == 200, decoded.text
    assert payloads_in(decoded.text) == plain_payloads(PROMPT)


def test_codec_server_encodes_only_for_responders_who_act():
    http = TestClient(create_codec_app(codec(K1), token_auth()))
    plain = body(plain_payloads(PROMPT))
    assert http.post("/encode", content=plain, headers={"Authorization": f"Bearer {AUDITOR}"}).status_code == 403
    encoded = http.post("/encode", content=plain, headers={"Authorization": f"Bearer {ONCALL}"})
    assert encoded.status_code == 200
    assert run(codec(K1).decode(payloads_in(encoded.text))) == plain_payloads(PROMPT)


def test_codec_server_says_what_is_wrong_with_a_request():
    http = TestClient(create_codec_app(codec(K2), token_auth()))
    headers = {"Authorization": f"Bearer {AUDITOR}"}
    assert "protobuf JSON" in http.post("/decode", content="not json", headers=headers).json()["detail"]
    unknown = http.post("/decode", content=body(run(codec(K1).encode(plain_payloads("x")))), headers=headers)
    assert unknown.status_code == 400 and "key id 'k1'" in unknown.json()["detail"]


def test_codec_server_lets_the_temporal_ui_origin_preflight_with_its_headers():
    http = TestClient(create_codec_app(codec(K1), token_auth()))
    asked = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,x-namespace,content-type"}
    preflight = http.options("/decode", headers={"Origin": UI, **asked})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == UI
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "x-namespace" in allowed
    foreign = http.options("/decode", headers={"Origin": "http://elsewhere.example", **asked})
    assert foreign.status_code == 400 and "access-control-allow-origin" not in foreign.headers


def test_codec_server_cli_needs_keys_and_a_responders_file_unless_insecure_dev(tmp_path: Path, monkeypatch):
    from stanch.cli.codec import codec_server
    from stanch.temporal import codec_server as server_module

    served = []
    monkeypatch.setattr(server_module, "serve", lambda host, port, app: served.append((host, port, app)))
    cli = typer.Typer()
    cli.command()(codec_server)
    env = {"STANCH_HOME": str(tmp_path), "STANCH_ENCRYPTION_KEYS": "", "STANCH_RESPONDERS": ""}

    no_keys = CliRunner().invoke(cli, [], env=env)
    assert no_keys.exit_code == 1 and "encryption is not configured" in no_keys.output
    env["STANCH_ENCRYPTION_KEYS"] = K1
    no_responders = CliRunner().invoke(cli, [], env=env)
    assert no_responders.exit_code == 1 and "no responders file" in no_responders.output
    insecure = CliRunner().invoke(cli, ["--insecure-dev", "--port", "8499"], env=env)
    assert insecure.exit_code == 0, insecure.output
    host, port, app = served[-1]
    assert (host, port) == ("127.0.0.1", 8499)
    assert TestClient(app).get("/healthz").json() == {"status": "ok", "key_ids": ["k1"], "auth": "insecure-dev"}
    assert TestClient(app).post("/decode", content=body(run(codec(K1).encode(plain_payloads("x"))))).status_code == 200


# --- stanch up ----------------------------------------------------------------------------


def test_stanch_up_runs_the_codec_server_and_points_the_ui_at_it_only_when_encrypted(tmp_path: Path):
    from stanch.cli.up import UpPlan

    plain = UpPlan(Settings(home=tmp_path), True, 7233, 8233, 8200, 8300, 90.0)
    assert "--ui-codec-endpoint" not in plain.dev_server_command()
    assert "the codec server" not in plain.ports()

    settings = Settings(home=tmp_path, ui_url="http://127.0.0.1:9233")
    encrypted = UpPlan(settings, True, 7233, 9233, 8200, 8300, 90.0, codec_port=9400, encrypted=True)
    command = encrypted.dev_server_command()
    assert command[command.index("--ui-codec-endpoint") + 1] == "http://127.0.0.1:9400"
    assert encrypted.ports()["the codec server"] == 9400
    assert encrypted.codec_command(["py"]) == [
        "py", "codec-server", "--host", "127.0.0.1", "--port", "9400", "--insecure-dev",
        "--ui-origin", "http://127.0.0.1:9233", "--ui-origin", "http://localhost:9233",
    ]  # fmt: skip
