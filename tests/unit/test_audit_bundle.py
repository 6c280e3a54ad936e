"""Audit bundles: the manifest's hash chain catches every edited, missing, added, removed or
reordered entry and names it; an Ed25519 signature over the head verifies only with its key."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from typer.testing import CliRunner

from stanch.audit import bundle, signing, verify
from stanch.audit.history import load_history_file, parse_history
from stanch.cli.main import app
from stanch.trust import assertions
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
    return [(p.what, p.index, p.path) for p in verify.verify(folder, key).problems]


def test_an_untouched_bundle_verifies(tmp_path):
    manifest = sealed(tmp_path)
    report = verify.verify(tmp_path)
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

    good = verify.verify(folder, signing.load_public(str(public)))
    assert good.ok and good.signature == "valid"
    wrong = verify.verify(folder, signing.load_public(str(other_public)))
    assert wrong.signature == "invalid" and [p.what for p in wrong.problems] == ["signature"]
    assert f"signed by key id {kid}, not by the public key given" in wrong.problems[0].message
    assert verify.verify(folder).signature == "not checked"

    # Whoever rewrites the manifest consistently still cannot sign its new head.
    (folder / "timelines/a.md").write_text("forged\n")
    forged = bundle.seal(
        folder, [bundle.FileRecord(**e.model_dump(include={"path", "kind", "incident"})) for e in manifest.entries], manifest.header
    )
    edit_manifest(folder, lambda m: m.update(signature=manifest.signature.model_dump()))
    assert forged.head != manifest.head
    [resigned] = verify.verify(folder, signing.load_public(str(public))).problems
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
    body = b'{"target_state": {"served_version": "2"}}'
    digest = hashlib.sha256(body).hexdigest()
    snapshot = home / "evidence" / OCCURRENCE / f"{digest}.json"
    snapshot.parent.mkdir(parents=True)
    snapshot.write_bytes(body)
    histories = [history_with_evidence(str(snapshot), digest), load_history_file(HISTORIES / "false_positive.json")]
    folder = tmp_path / "bundle"
    manifest = await bundle.export(folder, histories, pydantic_data_converter, home, bundle.Header(created_at=bundle.now()), ["test"])

    kinds = [(e.kind, e.path.split("/")[-1].split("__")[0]) for e in manifest.entries]
    assert kinds[:4] == [
        ("history", "history-high_severity_restored"),
        ("timeline", "history-high_severity_restored"),
        ("timeline", "history-high_severity_restored"),
        ("evidence", f"{digest}.json"),
    ]
    assert manifest.entries[3].path == f"evidence/{OCCURRENCE}/{digest}.json" and manifest.entries[3].recorded_sha256 == digest
    assert [kind for kind, _ in kinds[4:]] == ["history", "timeline", "timeline"]
    assert manifest.entry_count == 7 and manifest.left_out == [] and manifest.dry_runs == []
    replayable = load_history_file(folder / manifest.entries[0].path)
    assert len(replayable.events) == len(histories[0].events), "histories are written as the Temporal CLI writes them"
    assert "alice (oncall) ✔, sam (safety) ✔" in (folder / manifest.entries[2].path).read_text()
    assert verify.verify(folder).ok
    with pytest.raises(bundle.BundleError, match="not an empty folder"):
        await bundle.export(folder, histories, pydantic_data_converter, home, bundle.Header(created_at=bundle.now()))


# --- evidence: only snapshots, only unchanged ones ----------------------------------------

OCCURRENCE = "history-high_severity_restored@2f8a6cb1"


def history_with_evidence(location: str, sha256: str, name: str = "high_severity_restored.json"):
    """A committed history whose snapshot_evidence result names `location` and `sha256`, as a
    worker's result (or whoever can write one into a history) would."""
    data = json.loads((HISTORIES / name).read_text())
    for event in data["events"]:
        if event["eventType"] != "EVENT_TYPE_ACTIVITY_TASK_COMPLETED":
            continue
        payload = event["activityTaskCompletedEventAttributes"]["result"]["payloads"][0]
        result = json.loads(base64.b64decode(payload["data"]))
        if "location" in result:
            payload["data"] = base64.b64encode(json.dumps({**result, "location": location, "sha256": sha256}).encode()).decode()
    return parse_history(data, name, name)


async def export_one(tmp_path: Path, history, home: Path) -> tuple[Path, bundle.Manifest]:
    folder = tmp_path / f"bundle-{len(list(tmp_path.glob('bundle-*')))}"
    manifest = await bundle.export(folder, [history], pydantic_data_converter, home, bundle.Header(created_at=bundle.now()), ["test"])
    return folder, manifest


def bundled_evidence(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in (folder / "evidence").rglob("*")) if (folder / "evidence").exists() else []


@pytest.mark.parametrize("secret", ["decision-keys", "encryption-keys"])
async def test_export_never_copies_a_file_outside_the_evidence_folder(tmp_path, secret):
    """A history names its evidence; whoever can write an activity result must not be able to pull
    the installation's keys (or /etc/passwd) into a bundle meant for a regulator."""
    assertions.trust(assertions.parse_keys(TEST_DECISION_KEYS))
    home = tmp_path / "home"
    (home / "evidence" / OCCURRENCE).mkdir(parents=True)
    keys = home / secret
    keys.write_text("k1:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==\n")
    keys_digest = hashlib.sha256(keys.read_bytes()).hexdigest()
    # Symlinked into the evidence folder: resolved before the check, so still outside.
    (home / "evidence" / OCCURRENCE / f"{keys_digest}.json").symlink_to(keys)
    passwd_digest = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() if Path("/etc/passwd").is_file() else "0" * 64
    for location, digest in [
        ("/etc/passwd", passwd_digest),
        (str(keys), keys_digest),
        (str(home / "evidence" / ".." / secret), keys_digest),
        (f"/elsewhere/../{secret}", keys_digest),
        (str(home / "evidence" / OCCURRENCE / f"{keys_digest}.json"), keys_digest),
    ]:
        folder, manifest = await export_one(tmp_path, history_with_evidence(location, digest), home)
        assert bundled_evidence(folder) == [], location
        assert not any(entry.kind == "evidence" for entry in manifest.entries), location
        [left] = manifest.left_out
        assert left.location == location and left.recorded_sha256 == digest
        assert "outside the evidence folder" in left.reason or "not found" in left.reason, left.reason
        assert verify.verify(folder).ok
    assert "outside the evidence folder" in manifest.left_out[0].reason, "the symlink is refused for where it points"


async def test_export_leaves_out_a_snapshot_that_changed_since_its_history_recorded_it(tmp_path):
    assertions.trust(assertions.parse_keys(TEST_DECISION_KEYS))
    home = tmp_path / "home"
    body = b'{"target_state": {"served_version": "2"}}'
    digest = hashlib.sha256(body).hexdigest()
    snapshot = home / "evidence" / OCCURRENCE / f"{digest}.json"
    snapshot.parent.mkdir(parents=True)
    snapshot.write_bytes(b'{"target_state": {"served_version": "3"}}')  # changed after the snapshot
    folder, manifest = await export_one(tmp_path, history_with_evidence(str(snapshot), digest), home)
    assert bundled_evidence(folder) == [], "a changed snapshot is left out, not copied with a warning"
    [left] = manifest.left_out
    assert left.incident.startswith("history-high_severity_restored run ") and left.recorded_sha256 == digest
    assert f"not the {digest} its history recorded" in left.reason
    # The committed histories name /evidence/<id>.json with a made-up digest: found, but not it.
    folder, manifest = await export_one(tmp_path, load_history_file(HISTORIES / "high_severity_restored.json"), home)
    assert [left.location for left in manifest.left_out] == ["/evidence/history-high_severity_restored.json"]
    assert "not found" in manifest.left_out[0].reason

    # verify and the CLI say what was left out and why.
    report = verify.verify(folder)
    assert report.ok and [left.location for left in report.left_out] == ["/evidence/history-high_severity_restored.json"]
    shown = CliRunner().invoke(app, ["audit", "verify", str(folder)])
    assert shown.exit_code == 0 and "left out at export" in shown.output and "/evidence/history-high_severity_restored.json" in shown.output


async def test_a_dry_run_is_exported_and_labelled(tmp_path):
    assertions.trust(assertions.parse_keys(TEST_DECISION_KEYS))
    data = json.loads((HISTORIES / "false_positive.json").read_text())
    payload = data["events"][0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"][0]
    payload["data"] = base64.b64encode(json.dumps({**json.loads(base64.b64decode(payload["data"])), "dry_run": True}).encode()).decode()
    rehearsal = parse_history(data, "dry", "dry")
    real = load_history_file(HISTORIES / "high_severity_restored.json")
    folder = tmp_path / "bundle"
    manifest = await bundle.export(
        folder, [real, rehearsal], pydantic_data_converter, tmp_path / "home", bundle.Header(created_at=bundle.now()), ["test"]
    )
    assert manifest.dry_runs == [f"{rehearsal.workflow_id} run {rehearsal.run_id}"]
    timelines = {e.path: (folder / e.path).read_text() for e in manifest.entries if e.path.endswith(".md")}
    assert [path for path, text in timelines.items() if "DRY RUN" in text] == [
        f"timelines/{bundle.file_stem(rehearsal.workflow_id, rehearsal.run_id)}.md"
    ]
    report = verify.verify(folder)
    assert report.ok and report.dry_runs == manifest.dry_runs
    shown = CliRunner().invoke(app, ["audit", "verify", str(folder)])
    assert f"dry run (a rehearsal, not an incident): {rehearsal.workflow_id}" in shown.output


# --- verify: symlinks, indices, truncation, what unsigned proves ---------------------------


def test_a_symlinked_folder_pointing_outside_the_bundle_is_refused(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    sealed(folder)
    outside = tmp_path / "outside-timelines"
    (folder / "timelines").rename(outside)
    (folder / "timelines").symlink_to(outside, target_is_directory=True)
    report = verify.verify(folder)
    assert not report.ok
    assert {(p.what, p.path) for p in report.problems} == {("symlink", "timelines/a.md"), ("symlink", "timelines/a.json")}
    assert all("timelines is a symbolic link" in p.message for p in report.problems)


def test_a_symlinked_file_and_a_symlinked_manifest_are_refused(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    sealed(folder)
    copy = tmp_path / "a.md"
    copy.write_bytes((folder / "timelines/a.md").read_bytes())
    (folder / "timelines/a.md").unlink()
    (folder / "timelines/a.md").symlink_to(copy)
    (folder / "histories/extra.json").symlink_to(tmp_path / "nowhere.json")
    found = problems(folder)
    assert ("symlink", 1, "timelines/a.md") in found and ("symlink", None, "histories/extra.json") in found
    assert {what for what, _, _ in found} == {"symlink"}

    (folder / "timelines/a.md").unlink()
    (folder / "timelines/a.md").write_bytes(copy.read_bytes())
    (folder / "histories/extra.json").unlink()
    assert verify.verify(folder).ok
    manifest = tmp_path / "manifest.json"
    (folder / bundle.MANIFEST).rename(manifest)
    (folder / bundle.MANIFEST).symlink_to(manifest)
    assert problems(folder) == [("symlink", None, None)]


def test_a_huge_index_is_out_of_range_and_does_not_hang(tmp_path):
    sealed(tmp_path)
    edit_manifest(tmp_path, lambda m: m["entries"][3].update(index=10**15))
    started = time.monotonic()
    found = problems(tmp_path)
    assert time.monotonic() - started < 5
    assert ("index", 3, "evidence/a@1234/snap.json") in found
    assert ("removed", 3, None) in found, "entry 3 is no longer there"
    edit_manifest(tmp_path, lambda m: m.update(entry_count=10**15))
    started = time.monotonic()
    report = verify.verify(tmp_path)
    assert time.monotonic() - started < 5
    assert ("chain", 0) in {(p.what, p.index) for p in report.problems}, "the header is covered by the chain's first link"
    assert any(p.what == "removed" and "entries 3–" in p.message for p in report.problems), "one run, not 10**15 problems"


def test_negative_and_duplicate_indices_are_problems(tmp_path):
    sealed(tmp_path)
    edit_manifest(tmp_path, lambda m: (m["entries"][0].update(index=-1), m["entries"][2].update(index=1)))
    found = problems(tmp_path)
    assert ("index", 0, "histories/a.json") in found and ("manifest", 1, None) in found and ("removed", 0, None) in found


def truncate(folder: Path) -> None:
    """Drop the last entry and its file and set the head back: a consistent truncated tail."""
    manifest = json.loads((folder / bundle.MANIFEST).read_text())
    last = manifest["entries"].pop()
    (folder / last["path"]).unlink()
    manifest["head"] = manifest["entries"][-1]["chain"]
    (folder / bundle.MANIFEST).write_text(json.dumps(manifest, indent=2))


def test_a_truncated_tail_is_caught_by_the_entry_count_in_the_header(tmp_path):
    sealed(tmp_path)
    truncate(tmp_path)
    report = verify.verify(tmp_path)
    assert [(p.what, p.index) for p in report.problems] == [("removed", 3)]
    assert (
        "removed from the end of the manifest: the header, which the chain covers, records 4 entries and 3 are listed"
        in report.problems[0].message
    )


def test_a_format_1_bundle_still_verifies_and_says_what_it_cannot_show(tmp_path):
    """Format 1 had no entry count: its chain verifies as it did, and a truncation goes unseen."""
    sealed(tmp_path)

    def as_format_1(manifest):
        for name in bundle.FORMAT_2_FIELDS:
            del manifest[name]
        manifest["format"] = "stanch-audit-bundle/1"
        previous = bundle.genesis(bundle.Header.model_validate(manifest))
        for entry in manifest["entries"]:
            entry["chain"] = previous = bundle.link(previous, bundle.ManifestEntry.model_validate(entry))
        manifest["head"] = previous

    edit_manifest(tmp_path, as_format_1)
    report = verify.verify(tmp_path)
    assert report.ok and report.sealed_entries is None and "records no entry count" in report.proves
    truncate(tmp_path)
    assert verify.verify(tmp_path).ok, "the limit of an unsigned format-1 chain, said in `proves`"


def test_verify_says_what_an_unsigned_bundle_proves_and_require_signature(tmp_path):
    runner = CliRunner()
    folder = tmp_path / "bundle"
    folder.mkdir()
    sealed(folder)
    plain = runner.invoke(app, ["audit", "verify", str(folder)])
    assert plain.exit_code == 0 and "✓ intact" in plain.output
    assert "unsigned: the hash chain shows any file or entry edited" in plain.output
    assert "it cannot show a consistent rewrite" in plain.output
    required = runner.invoke(app, ["audit", "verify", str(folder), "--require-signature"])
    assert required.exit_code == 1 and "a signature is required (--require-signature), and the bundle is unsigned" in required.output

    assert runner.invoke(app, ["audit", "keygen", str(tmp_path / "k.pem")]).exit_code == 0
    signed = tmp_path / "signed"
    signed.mkdir()
    sealed(signed, signing.load_private(str(tmp_path / "k.pem")))
    unchecked = runner.invoke(app, ["audit", "verify", str(signed), "--require-signature"])
    assert unchecked.exit_code == 1 and "pass --public-key" in unchecked.output
    checked = runner.invoke(app, ["audit", "verify", str(signed), "--require-signature", "--public-key", str(tmp_path / "k.pub.pem")])
    assert checked.exit_code == 0 and "signature valid" in checked.output and "as the key's holder sealed them" in checked.output
    # Signed, a consistent truncation (or any rewrite) no longer passes.
    truncate(signed)
    edit_manifest(signed, lambda m: m.update(entry_count=3))
    forged = runner.invoke(
        app, ["audit", "verify", str(signed), "--require-signature", "--public-key", str(tmp_path / "k.pub.pem"), "--json"]
    )
    assert forged.exit_code == 1 and "signature" in {p["what"] for p in json.loads(forged.output)["problems"]}


def test_a_path_with_a_control_character_is_named_not_a_traceback(tmp_path):
    sealed(tmp_path)
    edit_manifest(tmp_path, lambda m: m["entries"][0].update(path="histories/a\u0000.json"))
    report = verify.verify(tmp_path)
    assert any(p.what == "manifest" and "control character" in p.message for p in report.problems), report.problems
