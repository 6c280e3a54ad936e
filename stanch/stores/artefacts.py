"""The artefact store: evidence snapshots and review documents, kept by content hash where every
host of an installation can read them back.

    STANCH_ARTEFACTS unset      a folder on this machine, HOME/artefacts (one machine: `make run`)
    file:///absolute/folder     that folder (a shared mount, or a folder of your choosing)
    s3://bucket/prefix          an S3-compatible bucket (AWS S3, MinIO, Ceph, GCS interoperability)

A bucket's credentials, endpoint and region come from the standard AWS environment variables,
read by obstore itself: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN),
AWS_ENDPOINT_URL (or AWS_ENDPOINT) for a store that is not AWS, AWS_REGION, and
AWS_ALLOW_HTTP=true for a plain-HTTP endpoint such as one on loopback. None of them ever goes
into a location, so none ends up in workflow history.

Every artefact is stored under `<kind>/<sha256 of its bytes>[-<name>]`, and its location is
the store's URL plus that key: `s3://bucket/prefix/evidence/<sha256>-snapshot.json`. Storing
the same bytes twice writes the same key (harmless), and reading one back checks its bytes
against the sha256 its key names, so a changed artefact is refused, never passed on.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.store import LocalStore, S3Store
from pydantic import BaseModel, Field

from stanch.config.settings import Settings

if TYPE_CHECKING:
    from obstore.store import RetryConfig

VARIABLE = "STANCH_ARTEFACTS"
# What `check()` stores and reads back at a worker's start (`health/<sha256>-check.txt`).
HEALTH_KIND = "health"
HEALTH_CHECK = b"Stanch can store artefacts here and read them back.\n"
# Kinds and names become parts of a key: plain, one level deep, nothing to climb out with.
_KIND = re.compile(r"[a-z0-9][a-z0-9-]{0,63}\Z")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
# `<kind>/<sha256>[-<name>]`: the only keys this store writes, so the only ones it reads.
# A store that does not answer fails a step in seconds, not minutes: Temporal retries the activity.
_RETRY: RetryConfig = {"max_retries": 3, "retry_timeout": timedelta(seconds=30)}
_KEY = re.compile(r"(?P<kind>[a-z0-9][a-z0-9-]{0,63})/(?P<sha256>[0-9a-f]{64})(?:-[A-Za-z0-9][A-Za-z0-9._-]{0,127})?\Z")


class ArtefactError(Exception):
    """An artefact cannot be stored or read back; the message names the location and why."""


class ArtefactStoreConfigError(ArtefactError):
    """STANCH_ARTEFACTS names no store Stanch can use."""


class ArtefactNotFound(ArtefactError):
    """No artefact at that location in this store."""


class ArtefactChanged(ArtefactError):
    """The artefact's bytes no longer have the sha256 its key names."""


class StoredArtefact(BaseModel):
    sha256: str = Field(description="sha256 of the bytes, hex: also part of the key")
    location: str = Field(description="where any host with the same STANCH_ARTEFACTS reads it back: the store's URL and the key")
    size: int = Field(description="bytes")


class ArtefactStore:
    """A content-addressed store over a local folder or an S3-compatible bucket (obstore)."""

    def __init__(self, url: str, store: LocalStore | S3Store) -> None:
        self.url = url.rstrip("/")
        self._store = store

    @classmethod
    def from_url(cls, url: str) -> ArtefactStore:
        """The store a `file:///…` or `s3://bucket/prefix` URL names; anything else is refused,
        naming STANCH_ARTEFACTS."""
        parts = urlsplit(url)
        if "@" in parts.netloc:
            raise _config_error(url, "credentials do not belong in the URL: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead")
        if parts.query or parts.fragment:
            raise _config_error(
                url,
                "a store URL has no query (?) or fragment (#) part: "
                "credentials go in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, the endpoint in AWS_ENDPOINT_URL",
            )
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise _config_error(url, "a folder is named by an absolute path: file:///absolute/folder")
            return cls.local(Path(unquote(parts.path)))
        if parts.scheme == "s3":
            if not parts.netloc:
                raise _config_error(url, "no bucket: s3://bucket/prefix")
            prefix = parts.path.strip("/")
            try:
                # Credentials, endpoint and region: obstore reads the AWS_* environment variables.
                store = S3Store(parts.netloc, prefix=prefix or None, retry_config=_RETRY)
            except Exception as error:  # obstore's configuration errors have no common base to catch
                raise _config_error(url, f"the bucket's settings (AWS_* variables) are not usable: {error}") from error
            return cls(f"s3://{parts.netloc}/{prefix}" if prefix else f"s3://{parts.netloc}", store)
        raise _config_error(url, "expected file:///absolute/folder or s3://bucket/prefix")

    @classmethod
    def local(cls, folder: Path) -> ArtefactStore:
        """A store in a folder on this machine, created if missing."""
        folder = folder.expanduser().resolve()
        try:
            store = LocalStore(folder, mkdir=True)
        except Exception as error:
            raise _config_error(folder.as_uri(), f"cannot use the folder {folder}: {error}") from error
        return cls(folder.as_uri(), store)

    async def put(self, kind: str, data: bytes, *, name: str | None = None) -> StoredArtefact:
        """Store `data` under `<kind>/<sha256>[-<name>]`. The same bytes always land on the same
        key, so storing them again (a retried activity) changes nothing."""
        if not _KIND.match(kind):
            raise ValueError(f"artefact kind {kind!r}: lower-case letters, digits and '-' only")
        if name is not None and not _NAME.match(name):
            raise ValueError(f"artefact name {name!r}: letters, digits, '.', '_' and '-' only, starting with a letter or digit")
        digest = hashlib.sha256(data).hexdigest()
        key = f"{kind}/{digest}" + (f"-{name}" if name else "")
        try:
            await obstore.put_async(self._store, key, data)
        except FileNotFoundError as error:  # obstore's NotFoundError is one: no such bucket
            raise ArtefactError(
                f"cannot store {kind}/{digest} in the artefact store {self.url}: no such bucket: {_first_line(error)}"
            ) from error
        except (ObstoreError, OSError) as error:
            raise ArtefactError(f"cannot store {kind}/{digest} in the artefact store {self.url}: {_first_line(error)}") from error
        return StoredArtefact(sha256=digest, location=f"{self.url}/{key}", size=len(data))

    async def check(self) -> None:
        """Store a tiny artefact and read it back, so a store this process cannot use (no such
        bucket, wrong credentials or endpoint, a folder it may not write) stops a worker as it
        starts instead of failing the first incident's evidence step. The artefact is the same
        bytes every time: every worker writes the same key, however many start at once."""
        try:
            stored = await self.put(HEALTH_KIND, HEALTH_CHECK, name="check.txt")
            await self.get(stored.location)
        except ArtefactError as error:
            raise ArtefactError(f"the artefact store cannot be used: {error}. Check {self._settings_to_check()}") from error

    def _settings_to_check(self) -> str:
        if self.url.startswith("s3://"):
            return (
                f"that {VARIABLE}={self.url} names a bucket that exists, and AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
                "(AWS_SESSION_TOKEN), AWS_ENDPOINT_URL, AWS_REGION and AWS_ALLOW_HTTP for that bucket"
            )
        return f"that this process may write the folder {VARIABLE} names ({self.url}; unset, HOME/artefacts)"

    async def get(self, location: str) -> bytes:
        """The artefact's bytes, checked against the sha256 its key names.

        A location recorded in this store is read where it says. One recorded in another store
        (a host's own folder, a bucket since renamed) is looked up by its key here: its content
        is what its hash says, wherever it is kept."""
        key, sha256 = self.key_of(location)
        elsewhere = "" if location.startswith(self.url + "/") else f" (recorded in another store; looked up by its key {key})"
        try:
            found = await obstore.get_async(self._store, key)
            data = bytes(await found.bytes_async())
        except FileNotFoundError as error:  # obstore's NotFoundError is one
            raise ArtefactNotFound(f"{location}: not found in the artefact store {self.url}{elsewhere}") from error
        except (ObstoreError, OSError) as error:
            raise ArtefactError(f"{location}: cannot read it from the artefact store {self.url}: {_first_line(error)}") from error
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ArtefactChanged(
                f"{location}: its content has sha256 {actual}, not the {sha256} its name records: changed since it was stored"
            )
        return data

    def key_of(self, location: str) -> tuple[str, str]:
        """The key (`<kind>/<sha256>[-<name>]`) a location names, and the sha256 in it. Only such
        keys are read: a location cannot name any other object or file."""
        if location.startswith(self.url + "/"):
            key = location[len(self.url) + 1 :]
        else:
            key = "/".join(urlsplit(location).path.rstrip("/").split("/")[-2:])
        matched = _KEY.match(key)
        if matched is None:
            raise ArtefactError(f"{location}: not an artefact location (expected <store URL>/<kind>/<sha256>[-<name>])")
        return key, matched["sha256"]


def is_artefact_location(location: str) -> bool:
    """Whether a recorded location is an artefact store's URL, not a plain file path (as older
    histories recorded evidence: a path on the worker that wrote it)."""
    return urlsplit(location).scheme in ("file", "s3")


def store_from_settings(settings: Settings) -> ArtefactStore:
    """The store STANCH_ARTEFACTS names; unset, the folder HOME/artefacts."""
    if settings.artefacts_url:
        return ArtefactStore.from_url(settings.artefacts_url)
    return ArtefactStore.local(settings.home / "artefacts")


def shown_url(url: str) -> str:
    """The URL as an error may repeat it: no user or password, and no query or fragment, where a
    secret may have been put (`?aws_secret_access_key=...`); `…` marks what was left out."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"…@{host}" if "@" in parts.netloc else host
    shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return shown + ("?…" if parts.query else "") + ("#…" if parts.fragment else "")


def _first_line(error: Exception) -> str:
    # obstore's messages go on with a multi-line debug dump of the request: the first line says it.
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _config_error(url: str, why: str) -> ArtefactStoreConfigError:
    return ArtefactStoreConfigError(f"{VARIABLE}={shown_url(url)}: {why}")
