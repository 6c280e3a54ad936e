"""Audit bundles: the manifest's hash chain catches every edited, missing, added, removed or
reordered entry and names it; an Ed25519 signature over the head verifies only with its key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from typer.testing import CliRunner

from stanch import assertions
from stanch.audit import bundle, signing
from stanch.audit.history import load_history_file
from stanch.cli.main import app
from tests.workflow.conftest import TEST_DECISION_KEYS

HISTORIES = Path(__file__).resolve().parent.parent / "histories"
FILES = {
    "histories/a.json": '{"events": []}\n',
    "timelines/a.md": "# Incident a\n",
    "timelines/a.json": '{"incident_id": "a"}\n',
    "evidence/a@1234/snap.json": '{"target_state": {}}\n',
}


def sealed(folder: Path, key=None) -> bundle.Manifest:
    for relative, text in FILES.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    kinds = {"histories": "history", "timelines": "timeline", "evidence": "evidence"}
    records = [bundle.FileRecord(path=p, kind=kinds[p.split("/")[0]], incident="a run 1") for p in FILES]
    return bundle.seal(folder, records, bundle.Header(created_at=bundle.now(), query="test"), key)


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / bundle.MANIFEST).read_text())
    change(manifest)
    (folder / bundle.MANIFEST).write_text(json.dumps(manifest, indent=2))


def problems(folder: Path, key=None) -> list[tuple[str, int | None, str | None]]:
    return [(p.what, p.index, p.path) for p in bundle.verify(folder, key).problems]


def test_an_untouched_bundle_verifies(tmp_path):
    manifest = sealed(tmp_path)
    report = bundle.verify(tmp_path)
    assert report.ok and report.entries == 4 and report.head == manifest.head == manifest.entries[-1].chain
    assert report.signature == "unsigned"


def test_one_flipped_byte_names_that_entry(tmp_path):
    sealed(tmp_path)
    path = tmp_path / "timelines/a.md"
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))
    assert problems(tmp_path) == [("edited", 1, "timelines/a.md")]


def test_a_removed_file_is_missing(tmp_path):
    sealed(tmp_path)
    (tmp_path / "evidence/a@1234/snap.json").unlink()
    assert problems(tmp_path) == [("missing", 3, "evidence/a@1234/snap.json")]


def test_an_entry_removed_from_the_manifest_is_named(tmp_path):
    sealed(tmp_path)
    edit_manifest(tmp_path, lambda m: m["entries"].pop(1))
    found = problems(tmp_path)
    assert ("removed", 1, None) in found
    assert ("unlisted", None, "timelines/a.md") in found, "its file is still there, now listed by nobody"
    assert ("chain", 1, "timelines/a.json") in found


def test_the_last_entry_removed_from_the_manifest_breaks_the_head(tmp_path):
    sealed(tmp_path)
    edit_manifest(tmp_path, lambda m: m["entries"].pop())
    found = problems(tmp_path)
    assert ("head", None, None) in found and ("unlisted", None, "evidence/a@1234/snap.json") in found


def test_an_added_file_is_unlisted(tmp_path):
    sealed(tmp_path)
    (tmp_path / "histories/b.json").write_text("{}")
    assert problems(tmp_path) == [("unlisted", None, "histories/b.json")]


def test_swapped_entries_are_reordered(tmp_path):
    sealed(tmp_path)

    def swap(manifest):
        entries = manifest["entries"]
        entries[0], entries[2] = entries[2], entries[0]

    edit_manifest(tmp_path, swap)
    found = problems(tmp_path)
    assert ("reordered", 0, "timelines/a.json") in found and ("reordered", 2, "histories/a.json") in found
    assert {what for what, _, _ in found} == {"reordered"}, "a move is reported once, not as a broken chain after it"


def test_a_manifest_entry_rewritten_to_match_an_edited_file_breaks_the_chain(tmp_path):
    """Editing a file and its sha256 in the manifest is caught by the chain (and the signature)."""
    sealed(tmp_path)
    (tmp_path / "timelines/a.md").write_text("# Incident a, rewritten\n")
    digest, size = bundle.file_digest(tmp_path / "timelines/a.md")
    edit_manifest(tmp_path, lambda m: m["entries"][1].update(sha256=digest, size=size))
    assert problems(tmp_path) == [("chain", 1, "timelines/a.md")]


def test_ed25519_signature_verifies_with_its_key_only(tmp_path):
    private, public = tmp_path / "keys/audit.pem", tmp_path / "keys/audit.pub.pem"
    other_private, other_public = tmp_path / "keys/other.pem", tmp_path / "keys/other.pub.pem"
    kid = signing.generate(private, public)
    signing.generate(other_private, other_public)
    assert private.stat().st_mode & 0o777 == 0o600
    folder = tmp_path / "bundle"
    folder.mkdir()
    manifest = sealed(folder, signing.load_private(str(private)))
    assert manifest.signature.key_id == kid

    good = bundle.verify(folder, signing.load_public(str(public)))
    assert good.ok and good.signature == "valid"
    wrong = bundle.verify(folder, signing.load_public(str(other_public)))
    assert wrong.signature == "invalid" and [p.what for p in wrong.problems] == ["signature"]
    assert f"signed by key id {kid}, not by the public key given" in wrong.problems[0].message
    assert bundle.verify(folder).signature == "not checked"

    # Whoever rewrites the manifest consistently still cannot sign its new head.
    (folder / "timelines/a.md").write_text("forged\n")
    forged = bundle.seal(folder, [bundle.FileRecord(**e.model_dump(include={"path", "kind", "incident"})) for e in manifest.entries], manifest.header)
    edit_manifest(folder, lambda m: m.update(signature=manifest.signature.model_dump()))
    assert forged.head != manifest.head
    [resigned] = bundle.verify(folder, signing.load_public(str(public))).problems
    assert resigned.what == "signature" and "the entries changed after the bundle was signed" in resigned.message


def test_signing_key_from_pem_text_and_refusals(tmp_path):
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    signing.generate(private, public)
    assert signing.key_id(signing.load_private(private.read_text()).public_key()) == signing.key_id(signing.load_public(str(public)))
    with pytest.raises(signing.SigningKeyError, match="exists"):
        signing.generate(private, public)
    with pytest.raises(signing.SigningKeyError, match="no such key file"):
        signing.load_private(str(tmp_path / "absent.pem"))
    with pytest.raises(signing.SigningKeyError, match="not an unencrypted PEM private key"):
        signing.load_private(str(public))


def test_cli_keygen_verify_and_exit_codes(tmp_path):
    runner = CliRunner()
    keygen = runner.invoke(app, ["audit", "keygen", str(tmp_path / "audit.pem")])
    assert keygen.exit_code == 0, keygen.output
    assert (tmp_path / "audit.pub.pem").exists()
    folder = tmp_path / "bundle"
    folder.mkdir()
    sealed(folder, signing.load_private(str(tmp_path / "audit.pem")))

    ok = runner.invoke(app, ["audit", "verify", str(folder), "--public-key", str(tmp_path / "audit.pub.pem")])
    assert ok.exit_code == 0 and "intact" in ok.output and "signature valid" in ok.output
    (folder / "histories/a.json").write_text('{"events": ["edited"]}\n')
    broken = runner.invoke(app, ["audit", "verify", str(folder), "--json"])
    assert broken.exit_code == 1
    report = json.loads(broken.output)
    assert [(p["what"], p["path"]) for p in report["problems"]] == [("edited", "histories/a.json")]
    assert runner.invoke(app, ["audit", "verify", str(tmp_path / "nowhere")]).exit_code == 2
    not_a_bundle = runner.invoke(app, ["audit", "verify", str(tmp_path)])
    assert not_a_bundle.exit_code == 1 and "no manifest.json" in not_a_bundle.output


async def test_export_writes_histories_timelines_and_evidence_then_verifies(tmp_path):
    assertions.trust(assertions.parse_keys(TEST_DECISION_KEYS))
    home = tmp_path / "home"
    # The committed histories point at /evidence/<id>.json; on this machine it is under STANCH_HOME.
    snapshot = home / "evidence" / "evidence" / "history-high_severity_restored.json"
    snapshot.parent.mkdir(parents=True)
    snapshot.write_text('{"target_state": {"served_version": "2"}}')
    histories = [load_history_file(HISTORIES / name) for name in ("high_severity_restored.json", "false_positive.json")]
    folder = tmp_path / "bundle"
    manifest = await bundle.export(folder, histories, pydantic_data_converter, home, bundle.Header(created_at=bundle.now()), ["test"])

    kinds = [(e.kind, e.path.split("/")[-1].split("__")[0]) for e in manifest.entries]
    assert kinds[:4] == [
        ("history", "history-high_severity_restored"),
        ("timeline", "history-high_severity_restored"),
        ("timeline", "history-high_severity_restored"),
        ("evidence", "history-high_severity_restored.json"),
    ]
    assert [kind for kind, _ in kinds[4:]] == ["history", "timeline", "timeline"]
    replayable = load_history_file(folder / manifest.entries[0].path)
    assert len(replayable.events) == len(histories[0].events), "histories are written as the Temporal CLI writes them"
    assert "alice (oncall) ✔, sam (safety) ✔" in (folder / manifest.entries[2].path).read_text()
    # The stand-in evidence does not hash to what its history recorded: said, not hidden.
    assert any("does not match the sha256 its history recorded" in w for w in manifest.warnings)
    assert bundle.verify(folder).ok
    with pytest.raises(bundle.BundleError, match="not an empty folder"):
        await bundle.export(folder, histories, pydantic_data_converter, home, bundle.Header(created_at=bundle.now()))
