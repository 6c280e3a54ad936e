"""An audit export that cannot read the artefact store stops; only what is true of an artefact
(missing, changed) leaves it out of a sealed bundle."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from stanch.audit.bundle import take_artefact
from stanch.stores.artefacts import ArtefactError, ArtefactNotFound, ArtefactStore


class UnreadableStore(ArtefactStore):
    """A store whose reads fail as they would with wrong credentials or no network."""

    def __init__(self, folder: Path, failure: ArtefactError) -> None:
        local = ArtefactStore.local(folder)
        super().__init__(local.url, local._store)
        self.failure = failure

    async def get(self, location: str) -> bytes:
        raise self.failure


async def stored(tmp_path: Path) -> tuple[ArtefactStore, str, str]:
    store = ArtefactStore.local(tmp_path / "artefacts")
    body = b'{"snapshot": true}'
    artefact = await store.put("evidence", body, name="snapshot.json")
    return store, artefact.location, hashlib.sha256(body).hexdigest()


async def test_a_store_that_cannot_be_read_stops_the_export(tmp_path: Path) -> None:
    _, location, sha256 = await stored(tmp_path)
    outage = UnreadableStore(tmp_path / "artefacts", ArtefactError("s3://bucket: connection refused"))
    with pytest.raises(ArtefactError, match="connection refused"):
        await take_artefact(outage, location, sha256, "evidence")


async def test_a_missing_artefact_is_left_out_with_the_reason(tmp_path: Path) -> None:
    _, location, sha256 = await stored(tmp_path)
    gone = UnreadableStore(tmp_path / "artefacts", ArtefactNotFound(f"{location}: not found in the artefact store"))
    data, why = await take_artefact(gone, location, sha256, "evidence")
    assert data == b"" and "not found in the artefact store" in why


async def test_a_readable_artefact_is_taken(tmp_path: Path) -> None:
    store, location, sha256 = await stored(tmp_path)
    assert await take_artefact(store, location, sha256, "evidence") == (b'{"snapshot": true}', "")
