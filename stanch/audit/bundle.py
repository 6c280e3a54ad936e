"""An audit bundle: incident histories, their timelines and evidence, sealed by a hash chain.

    BUNDLE/
      manifest.json                          header, entries, head, optional signature
      histories/<workflow id>__<run id>.json as `temporal workflow show --output json` writes it
      timelines/<workflow id>__<run id>.md   the timeline derived from that history, for people
      timelines/<workflow id>__<run id>.json the same as data
      evidence/<occurrence>/<sha256>.json    the evidence snapshot each history points at

Every file is an entry of the manifest: its path, sha256 and size. The entries are chained:
the genesis is sha256 of the manifest header (canonical JSON), each entry's `chain` is
sha256(previous chain + the entry's canonical JSON without its chain), and the head is the
last chain. `verify` recomputes all of it and names what does not match: an edited, missing,
added or reordered file or entry. Anyone able to rewrite the whole bundle can rewrite the chain
too; an Ed25519 signature over the head (signing.py), checked with a public key obtained
separately, is what rules that out.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydantic import BaseModel, Field, ValidationError
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter

from stanch.audit import signing
from stanch.audit.render import to_markdown
from stanch.audit.timeline import build_timeline

FORMAT = "stanch-audit-bundle/1"
MANIFEST = "manifest.json"
Kind = Literal["history", "timeline", "evidence"]


class BundleError(Exception):
    """The bundle cannot be written where asked; the message says why."""


class ManifestEntry(BaseModel):
    index: int = Field(description="position when sealed: a moved entry no longer sits at its index")
    path: str = Field(description="relative to the bundle, with forward slashes")
    kind: Kind
    incident: str = Field("", description="workflow id and run id the file belongs to")
    sha256: str
    size: int
    recorded_sha256: str | None = Field(None, description="evidence: the sha256 its history recorded when the snapshot was taken")
    chain: str = ""


class Header(BaseModel):
    format: str = FORMAT
    created_at: datetime
    source: str = Field("", description="the Temporal address and namespace the histories came from")
    query: str = ""
    since: str | None = None
    warnings: list[str] = Field(default_factory=list)


class Signature(BaseModel):
    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str = Field(description="names the key (see signing.key_id); trust comes from the public key you verify with")
    value: str = Field(description="base64 Ed25519 signature over the head (its hex text, UTF-8)")


class Manifest(Header):
    entries: list[ManifestEntry] = Field(default_factory=list)
    head: str = ""
    signature: Signature | None = None

    @property
    def header(self) -> Header:
        return Header.model_validate(self.model_dump(include=set(Header.model_fields)))


class FileRecord(BaseModel):
    path: str
    kind: Kind
    incident: str = ""
    recorded_sha256: str | None = None


# --- the chain --------------------------------------------------------------------------


def canonical(data: BaseModel | dict) -> bytes:
    fields = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def genesis(header: Header) -> str:
    return hashlib.sha256(canonical(header)).hexdigest()


def link(previous: str, entry: ManifestEntry) -> str:
    return hashlib.sha256(previous.encode() + canonical(entry.model_dump(mode="json", exclude={"chain"}))).hexdigest()


def file_digest(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def seal(folder: Path, files: Iterable[FileRecord], header: Header, signing_key: Ed25519PrivateKey | None = None) -> Manifest:
    """Hash each file in order, chain the entries, sign the head, write manifest.json."""
    manifest = Manifest(**header.model_dump())
    previous = genesis(header)
    for index, record in enumerate(files):
        sha256, size = file_digest(folder / record.path)
        entry = ManifestEntry(index=index, sha256=sha256, size=size, **record.model_dump())
        entry.chain = previous = link(previous, entry)
        manifest.entries.append(entry)
    manifest.head = previous
    if signing_key is not None:
        manifest.signature = Signature(key_id=signing.key_id(signing_key.public_key()), value=signing.sign(signing_key, manifest.head))
    (folder / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest


# --- export -----------------------------------------------------------------------------


async def export(
    folder: Path,
    histories: AsyncIterator[WorkflowHistory] | Iterable[WorkflowHistory],
    converter: DataConverter,
    home: Path,
    header: Header,
    trusted_keys: list[str] | None = None,
    signing_key: Ed25519PrivateKey | None = None,
) -> Manifest:
    """Write each history, its timeline and its evidence into `folder`, then seal it."""
    prepare(folder)
    files: list[FileRecord] = []
    async for history in _each(histories):
        incident = f"{history.workflow_id} run {history.run_id}"
        stem = file_stem(history.workflow_id, history.run_id)
        files.append(write(folder, f"histories/{stem}.json", history.to_json(), "history", incident))
        timeline = await build_timeline(history, converter, trusted_keys or [])
        files.append(write(folder, f"timelines/{stem}.json", timeline.model_dump_json(indent=2), "timeline", incident))
        files.append(write(folder, f"timelines/{stem}.md", to_markdown(timeline), "timeline", incident))
        for evidence in {e.location: e for e in timeline.evidence}.values():
            found = find_evidence(evidence.location, home)
            if found is None:
                header.warnings.append(f"{incident}: evidence snapshot {evidence.location} not found (looked under {home / 'evidence'})")
                continue
            relative = f"evidence/{safe(found.parent.name)}/{safe(found.name)}"
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(found.read_bytes())
            if file_digest(folder / relative)[0] != evidence.sha256:
                header.warnings.append(f"{incident}: evidence {found} does not match the sha256 its history recorded ({evidence.sha256}): changed since the snapshot")
            files.append(FileRecord(path=relative, kind="evidence", incident=incident, recorded_sha256=evidence.sha256))
    return seal(folder, files, header, signing_key)


def prepare(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BundleError(f"{folder} exists and is not an empty folder: a bundle is written into a new one")
    folder.mkdir(parents=True, exist_ok=True)


def write(folder: Path, relative: str, text: str, kind: Kind, incident: str) -> FileRecord:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n")
    return FileRecord(path=relative, kind=kind, incident=incident)


def find_evidence(location: str, home: Path) -> Path | None:
    """Where the worker wrote it, else the same file under this machine's STANCH_HOME/evidence."""
    recorded = Path(location)
    for candidate in (recorded, home / "evidence" / recorded.parent.name / recorded.name):
        if candidate.is_file():
            return candidate
    return None


def file_stem(workflow_id: str, run_id: str) -> str:
    return f"{safe(workflow_id)}__{safe(run_id)}"


def safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]", "_", name) or "_"


async def _each(histories):
    if hasattr(histories, "__aiter__"):
        async for history in histories:
            yield history
    else:
        for history in histories:
            yield history


# --- verify -----------------------------------------------------------------------------


class Problem(BaseModel):
    what: Literal["manifest", "edited", "missing", "unlisted", "removed", "reordered", "chain", "head", "signature"]
    index: int | None = Field(None, description="position in the manifest's entries")
    path: str | None = None
    message: str


class VerifyReport(BaseModel):
    bundle: str
    entries: int = 0
    head: str = ""
    signature: Literal["valid", "invalid", "unsigned", "not checked"] = "unsigned"
    problems: list[Problem] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(folder: Path, public_key: Ed25519PublicKey | None = None) -> VerifyReport:
    """Recompute every file's sha256 and the chain; name each entry or file that does not match."""
    report = VerifyReport(bundle=str(folder))
    problem = lambda what, message, index=None, path=None: report.problems.append(Problem(what=what, index=index, path=path, message=message))
    try:
        manifest = Manifest.model_validate_json((folder / MANIFEST).read_text())
    except FileNotFoundError:
        problem("manifest", f"no {MANIFEST} in {folder}: not a Stanch audit bundle, or its manifest was removed")
        return report
    except (ValidationError, ValueError) as error:
        problem("manifest", f"{MANIFEST} is not a bundle manifest: {str(error).splitlines()[0]}")
        return report
    if manifest.format != FORMAT:
        problem("manifest", f"{MANIFEST} says format {manifest.format!r}; this stanch reads {FORMAT!r}")
    entries = manifest.entries
    report.entries, report.head, report.warnings = len(entries), manifest.head, list(manifest.warnings)

    # The list itself: every index once, in order.
    indices = [entry.index for entry in entries]
    for index in sorted(set(range(max(indices, default=-1) + 1)) - set(indices)):
        problem("removed", f"entry {index} was removed from the manifest (its neighbours' chain no longer links)", index=index)
    for index in sorted({i for i in indices if indices.count(i) > 1}):
        problem("manifest", f"entry index {index} is listed {indices.count(index)} times", index=index)
    for position, (entry, expected) in enumerate(zip(entries, sorted(indices))):
        if entry.index != expected:
            problem("reordered", f"entries[{position}] {entry.path} was sealed as entry {entry.index}: the entries were reordered", position, entry.path)

    # The chain, in sealed order (a move is reported above, once): each link from the one recorded
    # before it, so one edited entry is reported once, not with every entry after it.
    previous = recomputed = genesis(manifest.header)
    for position in sorted(range(len(entries)), key=lambda p: entries[p].index):
        entry = entries[position]
        if entry.chain != link(previous, entry):
            before = "the header was edited, or " if previous == genesis(manifest.header) else ""
            problem("chain", f"entries[{position}] {entry.path}: chain does not link: {before}this entry was edited, or one before it removed or moved", position, entry.path)
        previous, recomputed = entry.chain, link(recomputed, entry)
    if manifest.head != previous:
        problem("head", "the head is not the last entry's chain: entries were removed from the end, or the head was edited")

    # The files: each listed one unchanged, and nothing else.
    for position, entry in enumerate(entries):
        relative = PurePosixPath(entry.path)
        if relative.is_absolute() or ".." in relative.parts or entry.path == MANIFEST:
            problem("manifest", f"entries[{position}] {entry.path}: a path outside the bundle", position, entry.path)
            continue
        path = folder / relative
        if not path.is_file():
            problem("missing", f"entries[{position}] {entry.path}: the file is missing", position, entry.path)
            continue
        sha256, size = file_digest(path)
        if (sha256, size) != (entry.sha256, entry.size):
            problem("edited", f"entries[{position}] {entry.path}: changed since export (sha256 {sha256[:16]}…, {size} bytes; sealed {entry.sha256[:16]}…, {entry.size} bytes)", position, entry.path)
        if entry.recorded_sha256 and entry.recorded_sha256 != entry.sha256:
            report.warnings.append(f"{entry.path}: evidence differs from the sha256 its history recorded ({entry.recorded_sha256}): changed before export")
    listed = {entry.path for entry in entries}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative != MANIFEST and relative not in listed:
            problem("unlisted", f"{relative}: no manifest entry lists this file (added after export?)", path=relative)

    # The signature: over the head recomputed from the entries, with a key given separately.
    if public_key is None:
        report.signature = "not checked" if manifest.signature else "unsigned"
    elif manifest.signature is None:
        report.signature = "unsigned"
        problem("signature", "a public key was given but the manifest is unsigned")
    elif signing.verify(public_key, recomputed, manifest.signature.value):
        report.signature = "valid"
    else:
        report.signature = "invalid"
        given = signing.key_id(public_key)
        if given == manifest.signature.key_id:
            problem("signature", f"key {given} signed another head: the entries changed after the bundle was signed")
        else:
            problem("signature", f"signed by key id {manifest.signature.key_id}, not by the public key given (key id {given})")
    return report


def now() -> datetime:
    return datetime.now(UTC)
