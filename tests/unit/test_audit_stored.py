"""Audit bundles in the artefact store: `stanch audit export --to-store` keeps the sealed bundle
as one archive, and `stanch audit fetch` on another home with the same STANCH_ARTEFACTS (a
shared folder, or a bucket on an S3-compatible server over real HTTP on loopback) brings it back
so that `stanch audit verify` passes. A changed archive, or one holding a member that would land
outside the folder, is refused, naming it."""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from typer.testing import CliRunner

from stanch.audit import bundle, stored
from stanch.audit.history import load_history_file
from stanch.cli.main import app
from stanch.stores.artefacts import ArtefactStore, StoredArtefact
from tests.s3 import s3_env, s3_server  # noqa: F401  (fixtures)

HISTORIES = Path(__file__).resolve().parent.parent / "histories"


class TemporalStandIn:
    namespace = "default"


@pytest.fixture
def temporal_with_two_incidents(monkeypatch: pytest.MonkeyPatch) -> None:
    """`audit export` reads two committed histories instead of a Temporal server's."""
    from stanch.audit import history

    async def connect(*args, **kwargs) -> TemporalStandIn:
        return TemporalStandIn()

    async def incidents(client, since):
        for name in ("high_severity_restored.json", "false_positive.json"):
            yield load_history_file(HISTORIES / name)

    monkeypatch.setattr(history, "connect_for_audit", connect)
    monkeypatch.setattr(history, "fetch_incident_histories", incidents)


def audit(*args: str | Path, home: Path, store: str) -> tuple[int, str]:
    """Run `stanch audit …` as this home would (a sync test: the command runs its own event loop)."""
    result = CliRunner().invoke(app, ["audit", *map(str, args)], env={"STANCH_HOME": str(home), "STANCH_ARTEFACTS": store})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def files_in(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_bundle_exported_to_a_shared_folder_is_fetched_on_another_home_and_verifies(
    tmp_path: Path, temporal_with_two_incidents: None
) -> None:
    shared = (tmp_path / "shared-artefacts").as_uri()
    exporter, auditor = tmp_path / "exporter-home", tmp_path / "auditor-home"

    code, output = audit("export", "--out", tmp_path / "exported", "--to-store", "--json", home=exporter, store=shared)
    assert code == 0, output
    exported = json.loads(output)
    location = exported["stored"]["location"]
    assert location == f"{shared}/bundles/{exported['stored']['sha256']}-audit-bundle.tar.gz"
    assert len(exported["entries"]) == 6 and exported["head"], "the manifest, as export --json always printed it"

    code, output = audit("fetch", location, "--out", tmp_path / "fetched", home=auditor, store=shared)
    assert code == 0, output
    assert "7 files" in output and "stanch audit verify" in output
    assert files_in(tmp_path / "fetched") == files_in(tmp_path / "exported"), "byte for byte the folder that was sealed"
    code, output = audit("verify", tmp_path / "fetched", home=auditor, store=shared)
    assert code == 0 and "intact" in output, output


def test_export_to_store_says_where_the_bundle_is_kept(tmp_path: Path, temporal_with_two_incidents: None) -> None:
    shared = (tmp_path / "shared-artefacts").as_uri()
    code, output = audit("export", "--out", tmp_path / "exported", "--to-store", home=tmp_path / "home", store=shared)
    assert code == 0, output
    assert f"stored {shared}/bundles/" in output and "stanch audit fetch" in output
    assert (tmp_path / "exported" / bundle.MANIFEST).is_file(), "the bundle folder is still written locally"


def test_the_same_bundle_packs_to_the_same_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "bundle"
    (folder / "timelines").mkdir(parents=True)
    (folder / bundle.MANIFEST).write_text('{"entries": []}\n')
    (folder / "timelines" / "a.md").write_text("# a\n")
    first = stored.pack(folder)
    os.utime(folder / "timelines" / "a.md", (1_000_000, 1_000_000))
    assert stored.pack(folder) == first, "file times are not part of the archive"
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        assert [(m.name, m.mtime, m.uid, m.mode) for m in tar.getmembers()] == [
            (bundle.MANIFEST, 0, 0, 0o644),
            ("timelines/a.md", 0, 0, 0o644),
        ]


def exported_and_stored(folder: Path, history_names: list[str], store: ArtefactStore) -> StoredArtefact:
    """A bundle of committed histories, sealed in `folder` and kept in `store`, as `audit export
    --to-store` does on the exporting host."""

    async def export() -> StoredArtefact:
        histories = [load_history_file(HISTORIES / name) for name in history_names]
        header = bundle.Header(created_at=bundle.now())
        await bundle.export(folder, histories, pydantic_data_converter, folder.parent / "exporter", header, artefacts=store)
        return await stored.store_bundle(folder, store)

    return asyncio.run(export())


def test_a_bundle_in_a_bucket_is_fetched_from_a_third_home(tmp_path: Path, s3_env: dict[str, str]) -> None:
    bucket = s3_env["STANCH_ARTEFACTS"]
    kept = exported_and_stored(tmp_path / "exported", ["high_severity_restored.json"], ArtefactStore.from_url(bucket))
    assert kept.location == f"{bucket}/bundles/{kept.sha256}-audit-bundle.tar.gz"

    code, output = audit("fetch", kept.location, "--out", tmp_path / "fetched", home=tmp_path / "third-home", store=bucket)
    assert code == 0, output
    assert not (tmp_path / "third-home" / "artefacts").exists(), "fetched from the bucket, not a folder of this home"
    code, output = audit("verify", tmp_path / "fetched", home=tmp_path / "third-home", store=bucket)
    assert code == 0 and "intact" in output, output


def test_a_stored_bundle_that_changed_is_refused(tmp_path: Path) -> None:
    store = ArtefactStore.local(tmp_path / "shared")
    kept = exported_and_stored(tmp_path / "exported", ["false_positive.json"], store)
    # Someone with write access to the store replaces the archive with a bundle of their own.
    other = tmp_path / "other"
    exported_and_stored(other, [], ArtefactStore.local(tmp_path / "elsewhere"))
    (tmp_path / "shared" / store.key_of(kept.location)[0]).write_bytes(stored.pack(other))

    code, output = audit("fetch", kept.location, "--out", tmp_path / "fetched", home=tmp_path / "auditor", store=store.url)
    assert code == 1
    assert "changed" in output and kept.sha256 in output
    assert files_in(tmp_path / "fetched") == {}, "nothing unpacked"


def archive(members: list[tarfile.TarInfo]) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        manifest = tarfile.TarInfo(bundle.MANIFEST)
        manifest.size = 2
        tar.addfile(manifest, io.BytesIO(b"{}"))
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isreg() else None)
    return data.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    ("unsafe", "said"),
    [
        (member("../escaped.txt"), "'../escaped.txt'"),
        (member("evidence/../../escaped.txt"), "'evidence/../../escaped.txt'"),
        (member("{tmp}/out/escaped.txt"), "'{tmp}/out/escaped.txt'"),
        (member("evidence/link", tarfile.SYMTYPE, "/etc/passwd"), "'evidence/link' is a symlink"),
        (member("evidence/hard", tarfile.LNKTYPE, bundle.MANIFEST), "'evidence/hard' is a hard link"),
        (member("evidence/null", tarfile.CHRTYPE), "'evidence/null' is a device or FIFO"),
    ],
)
def test_a_stored_archive_with_a_member_outside_plain_files_is_refused(tmp_path: Path, unsafe: tarfile.TarInfo, said: str) -> None:
    # An absolute name points into this test's folder: were it ever unpacked, the check below sees it.
    unsafe.name, said = unsafe.name.format(tmp=tmp_path), said.format(tmp=tmp_path)
    store = ArtefactStore.local(tmp_path / "shared")
    kept = asyncio.run(store.put(stored.KIND, archive([unsafe]), name=stored.NAME))  # stored as it is: its hash matches

    code, output = audit("fetch", kept.location, "--out", tmp_path / "out" / "fetched", home=tmp_path / "auditor", store=store.url)
    assert code == 2
    assert f"member {said}" in output and "refused" in output
    assert files_in(tmp_path / "out") == {}, "checked before anything is written"


def test_a_member_that_is_both_a_file_and_a_folder_is_refused(tmp_path: Path) -> None:
    store = ArtefactStore.local(tmp_path / "shared")
    kept = asyncio.run(store.put(stored.KIND, archive([member("evidence"), member("evidence/a.json")]), name=stored.NAME))

    code, output = audit("fetch", kept.location, "--out", tmp_path / "out" / "fetched", home=tmp_path / "auditor", store=store.url)
    assert code == 2
    assert "member 'evidence' is both a file and a folder" in output
    assert files_in(tmp_path / "out") == {}, "checked before anything is written"


def test_what_is_not_a_stored_bundle_is_named(tmp_path: Path) -> None:
    store = ArtefactStore.local(tmp_path / "shared")
    evidence = asyncio.run(store.put("evidence", b"{}", name="snapshot.json"))
    garbage = asyncio.run(store.put(stored.KIND, b"not an archive", name=stored.NAME))
    no_manifest = io.BytesIO()
    with tarfile.open(fileobj=no_manifest, mode="w:gz") as tar:
        tar.addfile(member("timelines/a.md"), io.BytesIO(b"x"))
    without = asyncio.run(store.put(stored.KIND, no_manifest.getvalue(), name=stored.NAME))
    absent = f"{store.url}/bundles/{'0' * 64}-audit-bundle.tar.gz"

    for location, said in [
        (evidence.location, "not an audit bundle: its key is under evidence/"),
        (garbage.location, "not an audit bundle (not a gzip'd tar"),
        (without.location, f"no {bundle.MANIFEST}"),
        (absent, "not found in the artefact store"),
    ]:
        out = tmp_path / "fetched" / location.rsplit("/", 1)[-1][:8]
        code, output = audit("fetch", location, "--out", out, home=tmp_path / "auditor", store=store.url)
        assert code == 2 and said in output and location in output, output
