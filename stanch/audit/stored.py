"""Audit bundles in the artefact store: kept where every host of the installation can fetch them.

    stanch audit export --out BUNDLE --to-store    seal the bundle folder as always, then store it
                                                   as one artefact: bundles/<sha256>-audit-bundle.tar.gz
    stanch audit fetch LOCATION --out BUNDLE       on any host with the same STANCH_ARTEFACTS: fetch
                                                   it (hash-checked), unpack it, then `audit verify`

The stored form is a gzip'd tar packed deterministically (members sorted, mtime 0, owner root,
mode 0644, gzip mtime 0): packing the same folder twice gives the same bytes, so the same
bundle lands on the same key. Only regular files go in; unpacking takes only regular files
with plain relative names and refuses anything else — an absolute path, `..`, a link, a device
— naming the member, so a stored archive can never write outside the folder it is unpacked into.

Fetching proves the archive is the one stored (the store checks its bytes against the sha256 in
its key); `stanch audit verify` then proves the bundle inside is the one sealed.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, Field

from stanch.audit.bundle import MANIFEST, BundleError, prepare
from stanch.stores.artefacts import ArtefactChanged, ArtefactError, ArtefactStore, StoredArtefact

KIND = "bundles"
NAME = "audit-bundle.tar.gz"


class StoredBundleChanged(Exception):
    """The stored archive's bytes no longer have the sha256 its key names: changed since stored.
    Not a BundleError: a failed check (exit 1), not bad input (exit 2)."""


class NotABundle(BundleError):
    """The artefact is not an audit bundle Stanch stored, or holds a member it will not unpack."""


class FetchedBundle(BaseModel):
    location: str = Field(description="where it was fetched from")
    sha256: str = Field(description="sha256 of the stored archive, as its key names it")
    folder: str = Field(description="the folder it was unpacked into: give it to `stanch audit verify`")
    files: int = Field(description="files unpacked, manifest.json included")


# --- packing ----------------------------------------------------------------------------


def pack(folder: Path) -> bytes:
    """The bundle folder as a deterministic gzip'd tar: the same files give the same bytes."""
    members = []
    for path in sorted(folder.rglob("*"), key=lambda found: found.relative_to(folder).as_posix()):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise BundleError(f"{path}: a symlink in the bundle folder; an exported bundle has none, so it is not stored")
        if path.is_file():
            members.append((relative, path.read_bytes()))
    if not any(relative == MANIFEST for relative, _ in members):
        raise BundleError(f"{folder}: no {MANIFEST}, so not a sealed bundle: nothing stored")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relative, data in members:
            info = tarfile.TarInfo(relative)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(archive.getvalue(), mtime=0)


async def store_bundle(folder: Path, store: ArtefactStore) -> StoredArtefact:
    """Store a sealed bundle folder as one artefact (kind `bundles`); its location and sha256."""
    data = pack(folder)
    try:
        return await store.put(KIND, data, name=NAME)
    except ArtefactError as error:
        raise BundleError(f"the bundle is in {folder}, but storing it failed: {error}") from error


# --- fetching ---------------------------------------------------------------------------


async def fetch_bundle(store: ArtefactStore, location: str, out: Path) -> FetchedBundle:
    """Fetch a stored bundle, hash-checked by the store, and unpack it into `out` (a new or empty
    folder). Raises StoredBundleChanged if its bytes changed, BundleError (NotABundle, not found)
    for anything else."""
    try:
        key, sha256 = store.key_of(location)
    except ArtefactError as error:
        raise NotABundle(str(error)) from error
    if not key.startswith(f"{KIND}/"):
        raise NotABundle(f"{location}: not an audit bundle: its key is under {key.split('/')[0]}/, bundles are stored under {KIND}/")
    prepare(out)  # refuse a used folder before fetching anything
    try:
        data = await store.get(location)
    except ArtefactChanged as error:
        raise StoredBundleChanged(str(error)) from error
    except ArtefactError as error:
        raise BundleError(str(error)) from error
    files = unpack(data, out, location)
    return FetchedBundle(location=location, sha256=sha256, folder=str(out), files=files)


def unpack(data: bytes, out: Path, location: str) -> int:
    """Unpack a stored bundle's archive into `out`. Every member is checked before any is
    written: plain relative names of regular files only, and a manifest.json at the top."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, location)
            names = [member.name for member in members]
            if MANIFEST not in names:
                raise NotABundle(f"{location}: not an audit bundle: the archive has no {MANIFEST} at its top")
            if len(set(names)) != len(names):
                twice = sorted({name for name in names if names.count(name) > 1})[0]
                raise NotABundle(f"{location}: member {twice!r} appears twice: refused, a bundle names each file once")
            folders = {str(parent) for name in names for parent in PurePosixPath(name).parents}
            if clash := sorted(folders & set(names)):
                raise NotABundle(f"{location}: member {clash[0]!r} is both a file and a folder of other members: refused")
            root = out.resolve()
            for member in members:
                stream = tar.extractfile(member)
                if stream is None:  # _check_member let only regular files through
                    raise NotABundle(f"{location}: member {member.name!r} has no content")
                target = out / member.name
                if not target.resolve().is_relative_to(root):  # a folder of the bundle is a symlink made meanwhile
                    raise NotABundle(f"{location}: member {member.name!r} would land outside {out}: refused")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(stream.read())
            return len(members)
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError) as error:
        raise NotABundle(f"{location}: not an audit bundle (not a gzip'd tar as `audit export --to-store` stores): {error}") from error


def _check_member(member: tarfile.TarInfo, location: str) -> None:
    name = member.name
    where = f"{location}: member {name!r}"
    if not member.isreg():
        what = "a symlink" if member.issym() else "a hard link" if member.islnk() else "a folder" if member.isdir() else "a device or FIFO"
        raise NotABundle(f"{where} is {what}: refused, a stored bundle holds regular files only")
    path = PurePosixPath(name)
    if not name or path.is_absolute() or "\\" in name or any(part in ("", ".", "..") for part in name.split("/")):
        raise NotABundle(f"{where}: refused, a member is a plain relative path (no leading /, no '..' or '.', no backslash)")
