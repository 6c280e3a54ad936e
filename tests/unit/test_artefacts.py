"""The artefact store in a local folder: what is stored is read back by its location, the same
bytes land on the same key, a changed or missing artefact is refused with its location, and a
STANCH_ARTEFACTS Stanch cannot use is refused naming the variable."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stanch.cli.main import app
from stanch.config.settings import Settings
from stanch.stores.artefacts import (
    ArtefactChanged,
    ArtefactError,
    ArtefactNotFound,
    ArtefactStore,
    ArtefactStoreConfigError,
    StoredArtefact,
    is_artefact_location,
    store_from_settings,
)

SNAPSHOT = b'{"target_state":{"served_version":"2"}}'
DIGEST = hashlib.sha256(SNAPSHOT).hexdigest()


async def test_an_artefact_is_read_back_by_its_location_from_another_store_instance(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    stored = await store_from_settings(settings).put("evidence", SNAPSHOT, name="snapshot.json")

    folder = (tmp_path / "home" / "artefacts").resolve()
    assert isinstance(stored, StoredArtefact)
    assert stored == StoredArtefact(sha256=DIGEST, location=(folder / "evidence" / f"{DIGEST}-snapshot.json").as_uri(), size=len(SNAPSHOT))
    assert await store_from_settings(settings).get(stored.location) == SNAPSHOT
    assert is_artefact_location(stored.location) and not is_artefact_location("/home/stanch/evidence/inc@1/abc.json")


async def test_a_file_url_names_the_folder(tmp_path: Path) -> None:
    shared = tmp_path / "shared mount"
    store = store_from_settings(Settings(home=tmp_path / "home", artefacts_url=shared.as_uri()))
    stored = await store.put("reviews", b"# Postmortem\n", name="postmortem.md")
    assert (shared / "reviews").is_dir() and [p.name for p in (shared / "reviews").iterdir()] == [stored.location.rsplit("/", 1)[1]]
    assert await ArtefactStore.from_url(shared.as_uri()).get(stored.location) == b"# Postmortem\n"


async def test_storing_the_same_bytes_twice_is_harmless(tmp_path: Path) -> None:
    store = ArtefactStore.local(tmp_path / "artefacts")
    first, again = await store.put("evidence", SNAPSHOT), await store.put("evidence", SNAPSHOT)
    assert first == again
    assert len(list((tmp_path / "artefacts" / "evidence").iterdir())) == 1
    other = await store.put("evidence", SNAPSHOT + b" ")
    assert other.location != first.location and other.sha256 != first.sha256


async def test_a_changed_artefact_is_refused_naming_its_location_and_both_hashes(tmp_path: Path) -> None:
    store = ArtefactStore.local(tmp_path / "artefacts")
    stored = await store.put("evidence", SNAPSHOT, name="snapshot.json")
    tampered = b'{"target_state":{"served_version":"3"}}'
    (tmp_path / "artefacts" / "evidence" / f"{DIGEST}-snapshot.json").write_bytes(tampered)

    with pytest.raises(ArtefactChanged) as refused:
        await store.get(stored.location)
    message = str(refused.value)
    assert stored.location in message and DIGEST in message and hashlib.sha256(tampered).hexdigest() in message


async def test_a_missing_artefact_says_which_store_it_was_looked_for_in(tmp_path: Path) -> None:
    store = ArtefactStore.local(tmp_path / "artefacts")
    location = f"{store.url}/evidence/{DIGEST}-snapshot.json"
    with pytest.raises(ArtefactNotFound, match=f"not found in the artefact store {store.url}"):
        await store.get(location)


async def test_a_location_recorded_in_another_store_is_looked_up_here_by_its_content_key(tmp_path: Path) -> None:
    """A folder moved, a bucket renamed: the key is the content's hash, so this store's copy is it."""
    here = ArtefactStore.local(tmp_path / "here")
    await here.put("evidence", SNAPSHOT, name="snapshot.json")
    elsewhere = f"s3://old-bucket/stanch/evidence/{DIGEST}-snapshot.json"
    assert await here.get(elsewhere) == SNAPSHOT
    with pytest.raises(ArtefactNotFound, match="recorded in another store"):
        await here.get(f"file:///elsewhere/evidence/{'0' * 64}-snapshot.json")


@pytest.mark.parametrize(
    "location",
    ["file:///etc/passwd", "s3://bucket/stanch/evidence/not-a-hash.json", f"file:///x/evidence/{DIGEST}/../../secret", "/tmp/x.json"],
)
async def test_only_content_addressed_keys_are_read(tmp_path: Path, location: str) -> None:
    with pytest.raises(ArtefactError, match="not an artefact location"):
        await ArtefactStore.local(tmp_path / "artefacts").get(location)


async def test_a_kind_or_name_that_could_climb_out_is_refused(tmp_path: Path) -> None:
    store = ArtefactStore.local(tmp_path / "artefacts")
    for kind, name in [("../evidence", None), ("evidence", "../../x"), ("Evidence", None), ("evidence", ".hidden")]:
        with pytest.raises(ValueError):
            await store.put(kind, SNAPSHOT, name=name)
    assert not any((tmp_path / "artefacts").rglob("*.*"))


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://host/folder", "expected file:///absolute/folder or s3://bucket/prefix"),
        ("artefacts", "expected file:///absolute/folder or s3://bucket/prefix"),
        ("file://relative/folder", "absolute path"),
        ("s3://", "no bucket"),
        ("s3://bucket/prefix?region=eu-west-1", "no query"),
    ],
)
def test_a_url_stanch_cannot_use_is_refused_naming_the_variable(tmp_path: Path, url: str, why: str) -> None:
    with pytest.raises(ArtefactStoreConfigError) as refused:
        store_from_settings(Settings(home=tmp_path, artefacts_url=url))
    assert str(refused.value).startswith("STANCH_ARTEFACTS=") and why in str(refused.value)


def test_credentials_in_the_url_are_refused_without_repeating_them(tmp_path: Path) -> None:
    with pytest.raises(ArtefactStoreConfigError) as refused:
        ArtefactStore.from_url("s3://AKIAEXAMPLE:very-secret@bucket/prefix")
    assert "very-secret" not in str(refused.value) and "AWS_SECRET_ACCESS_KEY" in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket/prefix?aws_secret_access_key=very-secret",
        "s3://bucket/prefix#very-secret",
        "s3://AKIAEXAMPLE:very-secret@bucket/prefix?region=eu-west-1",
    ],
)
def test_a_secret_in_the_query_is_refused_without_repeating_it(tmp_path: Path, url: str) -> None:
    with pytest.raises(ArtefactStoreConfigError) as refused:
        store_from_settings(Settings(home=tmp_path, artefacts_url=url))
    assert str(refused.value).startswith("STANCH_ARTEFACTS=s3://")
    assert "very-secret" not in str(refused.value) and "AWS_SECRET_ACCESS_KEY" in str(refused.value)


async def test_a_usable_folder_passes_the_start_check_and_keeps_one_check_artefact(tmp_path: Path) -> None:
    store = ArtefactStore.local(tmp_path / "artefacts")
    await store.check()
    await ArtefactStore.local(tmp_path / "artefacts").check()  # another worker on the same folder
    assert len(list((tmp_path / "artefacts" / "health").iterdir())) == 1


def test_the_setting_comes_from_STANCH_ARTEFACTS_and_reaches_child_processes(tmp_path: Path) -> None:
    settings = Settings.from_env({"STANCH_HOME": str(tmp_path), "STANCH_ARTEFACTS": "s3://bucket/stanch"})
    assert settings.artefacts_url == "s3://bucket/stanch"
    assert settings.child_env()["STANCH_ARTEFACTS"] == "s3://bucket/stanch"
    assert "STANCH_ARTEFACTS" not in Settings(home=tmp_path).child_env()


def test_audit_export_refuses_a_store_url_it_cannot_use_before_connecting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANCH_ARTEFACTS", "ftp://nowhere/artefacts")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:9")  # never reached
    result = CliRunner().invoke(app, ["audit", "export", "--out", str(tmp_path / "bundle"), "--home", str(tmp_path / "home")])
    assert result.exit_code == 2
    assert "STANCH_ARTEFACTS=ftp://nowhere/artefacts" in result.output and "s3://bucket/prefix" in result.output
    assert not (tmp_path / "bundle").exists()


def test_the_worker_refuses_a_store_url_it_cannot_use_before_connecting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STANCH_ARTEFACTS", "ftp://nowhere/artefacts")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:9")  # never reached
    result = CliRunner().invoke(app, ["worker"])
    assert result.exit_code == 1
    assert "refusing to start" in result.output and "STANCH_ARTEFACTS=ftp://nowhere/artefacts" in result.output
    assert "Temporal at" not in result.output
