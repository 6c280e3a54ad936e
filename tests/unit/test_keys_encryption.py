"""Encryption keys shared by every host from a mounted file, rotated without downtime: the new
key (first in the file) encrypts, older keys listed after it decrypt, and a payload under a key
taken off the list is refused naming its key id."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from typer.testing import CliRunner

from stanch.cli.main import app
from stanch.config.settings import Settings
from stanch.temporal.codec import DecryptionError, EncryptionCodec, EncryptionKeyError, load_encryption_keys, new_key_line


def codec_from(keys_file: Path, home: Path) -> EncryptionCodec:
    keys = load_encryption_keys(Settings.from_env({"STANCH_HOME": str(home), "STANCH_ENCRYPTION_KEYS_FILE": str(keys_file)}))
    assert keys is not None
    return EncryptionCodec(keys)


def test_rotation_through_the_mounted_file_new_key_encrypts_old_decrypts_removed_is_named(tmp_path: Path):
    old, new = new_key_line("2025-q4"), new_key_line("2026-q1")
    keys_file = tmp_path / "secret" / "encryption-keys"
    keys_file.parent.mkdir()
    keys_file.write_text(f"# mounted from the stanch-keys Secret\n{old}\n")
    written_before = codec_from(keys_file, tmp_path).encrypt(Payload(data=b'"the prompt"'))

    keys_file.write_text(f"{new}\n{old}\n")  # the new key first, the old one kept to read old histories
    rotated = codec_from(keys_file, tmp_path)
    written_after = rotated.encrypt(Payload(data=b'"the answer"'))
    assert written_after.metadata["encryption-key-id"] == b"2026-q1"
    assert rotated.decrypt(written_before).data == b'"the prompt"'
    assert rotated.decrypt(written_after).data == b'"the answer"'

    keys_file.write_text(f"{new}\n")  # the old key retired: what it wrote can no longer be read
    with pytest.raises(DecryptionError, match="key id '2025-q4', which is not configured"):
        codec_from(keys_file, tmp_path).decrypt(written_before)


def test_the_variable_and_the_file_together_are_refused_naming_both(tmp_path: Path):
    (tmp_path / "keys").write_text(new_key_line("a") + "\n")
    settings = Settings.from_env(
        {"STANCH_HOME": str(tmp_path), "STANCH_ENCRYPTION_KEYS": new_key_line("b"), "STANCH_ENCRYPTION_KEYS_FILE": str(tmp_path / "keys")}
    )
    with pytest.raises(EncryptionKeyError, match="both STANCH_ENCRYPTION_KEYS and STANCH_ENCRYPTION_KEYS_FILE are set"):
        load_encryption_keys(settings)


def test_keygen_write_rotates_the_mounted_file_in_place(tmp_path: Path):
    keys_file = tmp_path / "encryption-keys"
    keys_file.write_text(new_key_line("2025-q4") + "\n")
    env = {"STANCH_HOME": str(tmp_path / "home"), "STANCH_ENCRYPTION_KEYS_FILE": str(keys_file)}
    result = CliRunner().invoke(app, ["codec", "keygen", "--kid", "2026-q1", "--write"], env=env)
    assert result.exit_code == 0, result.output
    keys = load_encryption_keys(Settings.from_env(env))
    assert keys is not None and [kid for kid, _ in keys] == ["2026-q1", "2025-q4"]
