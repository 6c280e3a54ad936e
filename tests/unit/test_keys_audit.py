"""Audit signing keys shared by every host: the export signs with the key a mounted file holds,
verify checks with the public key whose id the bundle names among several (a rotation), and a
bundle signed by a key none of them is fails naming that key id."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from stanch.audit import signing
from stanch.cli.main import app
from tests.unit.test_audit_bundle import sealed


def key_pair(folder: Path, name: str) -> tuple[Path, Path, str]:
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    return private, public, signing.generate(private, public)


def bundle_signed_with(folder: Path, private: Path) -> Path:
    folder.mkdir(parents=True)
    sealed(folder, signing.load_private(str(private)))
    return folder


def verify(*arguments: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["audit", "verify", *arguments], env=env)


def test_rotation_both_bundles_verify_while_the_old_key_is_listed_and_a_removed_key_is_named(tmp_path: Path):
    old_private, old_public, old_kid = key_pair(tmp_path, "2025")
    new_private, new_public, new_kid = key_pair(tmp_path, "2026")
    before = bundle_signed_with(tmp_path / "before", old_private)
    after = bundle_signed_with(tmp_path / "after", new_private)
    public_keys = tmp_path / "audit-public-keys.pem"
    public_keys.write_text(new_public.read_text() + old_public.read_text())
    env = {"STANCH_AUDIT_PUBLIC_KEYS_FILE": str(public_keys)}

    for folder, kid in ((before, old_kid), (after, new_kid)):
        checked = verify(str(folder), "--require-signature", env=env)
        assert checked.exit_code == 0, checked.output
        assert "signature valid" in checked.output and f"signed by key {kid}" in checked.output
    repeated = verify(str(before), "--public-key", str(new_public), "--public-key", str(old_public), "--require-signature")
    assert repeated.exit_code == 0, repeated.output

    public_keys.write_text(new_public.read_text())  # the old key retired everywhere
    assert verify(str(after), "--require-signature", env=env).exit_code == 0
    refused = verify(str(before), "--require-signature", env=env)
    assert refused.exit_code == 1 and f"signed by key id {old_kid}" in refused.output

    _, stranger_public, stranger_kid = key_pair(tmp_path, "stranger")
    several = verify(str(before), "--public-key", str(new_public), "--public-key", str(stranger_public))
    assert several.exit_code == 1
    assert (
        f"signed by key id {old_kid}, and none of the 2 public keys given has that id (given: {new_kid}, {stranger_kid})" in several.output
    )
    assert "signature INVALID" in several.output


def test_the_export_key_comes_from_the_flag_else_the_mounted_file(tmp_path: Path):
    private, _, kid = key_pair(tmp_path, "audit")
    key_pair(tmp_path, "unused")
    from_file = signing.export_key(None, {"STANCH_AUDIT_SIGNING_KEY_FILE": str(private)})
    assert from_file is not None and signing.key_id(from_file.public_key()) == kid
    flag = signing.export_key(str(tmp_path / "unused.pem"), {"STANCH_AUDIT_SIGNING_KEY_FILE": str(private)})
    assert flag is not None and signing.key_id(flag.public_key()) != kid, "an explicit --signing-key wins"
    assert signing.export_key(None, {}) is None, "no key: the bundle is unsigned, as before"
    with pytest.raises(signing.SigningKeyError, match="both STANCH_AUDIT_SIGNING_KEY and STANCH_AUDIT_SIGNING_KEY_FILE"):
        signing.export_key(
            private.read_text(), {"STANCH_AUDIT_SIGNING_KEY": private.read_text(), "STANCH_AUDIT_SIGNING_KEY_FILE": str(private)}
        )
    with pytest.raises(signing.SigningKeyError, match="no such key file \\(named by STANCH_AUDIT_SIGNING_KEY_FILE\\)"):
        signing.export_key(None, {"STANCH_AUDIT_SIGNING_KEY_FILE": str(tmp_path / "absent.pem")})


def test_stanch_audit_export_refuses_a_key_set_twice_before_reaching_temporal(tmp_path: Path):
    private, _, _ = key_pair(tmp_path, "audit")
    env = {"STANCH_AUDIT_SIGNING_KEY": str(private), "STANCH_AUDIT_SIGNING_KEY_FILE": str(private), "STANCH_HOME": str(tmp_path / "home")}
    result = CliRunner().invoke(app, ["audit", "export", "--out", str(tmp_path / "bundle"), "--address", "127.0.0.1:1"], env=env)
    assert result.exit_code == 2
    assert "both STANCH_AUDIT_SIGNING_KEY and STANCH_AUDIT_SIGNING_KEY_FILE are set" in result.output


def test_a_public_keys_file_names_the_key_that_is_not_one(tmp_path: Path):
    _, public, _ = key_pair(tmp_path, "audit")
    private_by_mistake, _, _ = key_pair(tmp_path, "other")
    keys_file = tmp_path / "keys.pem"
    keys_file.write_text(public.read_text() + private_by_mistake.read_text())
    with pytest.raises(signing.SigningKeyError, match=f"{keys_file}, key 2 of 2: .*\\(named by STANCH_AUDIT_PUBLIC_KEYS_FILE\\)"):
        signing.verify_keys([], {"STANCH_AUDIT_PUBLIC_KEYS_FILE": str(keys_file)})
    (tmp_path / "empty.pem").write_text("nothing here\n")
    refused = verify(str(tmp_path), "--public-key", str(tmp_path / "empty.pem"))
    assert refused.exit_code == 2 and "no PEM public key in it" in refused.output
