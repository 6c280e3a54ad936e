"""An audit bundle: incident histories, their timelines and evidence, sealed by a hash chain.

    BUNDLE/
      manifest.json                          header, entries, head, optional signature
      histories/<workflow id>__<run id>.json as `temporal workflow show --output json` writes it
      timelines/<workflow id>__<run id>.md   the timeline derived from that history, for people
      timelines/<workflow id>__<run id>.json the same as data
      evidence/<occurrence>/<file>           the evidence snapshot each history points at
      reviews/<occurrence>/<file>            the review documents it records (postmortem, compliance,
                                             Art. 73 report draft), when kept in the artefact store

Every file is an entry of the manifest: its path, sha256 and size. The entries are chained:
the genesis is sha256 of the manifest header (canonical JSON), each entry's `chain` is
sha256(previous chain + the entry's canonical JSON without its chain), and the head is the
last chain. The header records how many entries were sealed, so the chain's first link covers
the count. `verify` recomputes all of it and names what does not match: an edited, missing,
added or reordered file or entry, an entry cut off the end, a symlink. Anyone able to rewrite
the whole bundle can rewrite the chain too, header and count included; an Ed25519 signature
over the head (signing.py), checked with a public key obtained separately, is what rules that out.

Evidence and review documents come from the artefact store (stanch.stores.artefacts: the one
STANCH_ARTEFACTS names, so any host of the installation can export), by the location their
history recorded, and only when their sha256 is the one it recorded. Older histories recorded
evidence as a path on the worker: that is looked for in this installation's evidence folder
(`STANCH_HOME/evidence`) only. Whatever a history names and cannot be shown to be what it
recorded is left out, and the manifest's `left_out` says what and why.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)
from pydantic import BaseModel, Field
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter

from stanch.audit import signing
from stanch.audit.models import Timeline
from stanch.audit.render import to_markdown
from stanch.audit.timeline import build_timeline
from stanch.stores.artefacts import ArtefactChanged, ArtefactError, ArtefactNotFound, ArtefactStore, is_artefact_location

FORMAT = "stanch-audit-bundle/2"
# Format 1 had no entry_count, dry_runs or left_out; its bundles still verify (without a count).
READABLE_FORMATS = ("stanch-audit-bundle/1", FORMAT)
MANIFEST = "manifest.json"
Kind = Literal["history", "timeline", "evidence", "review"]


class BundleError(Exception):
    """The bundle cannot be written where asked; the message says why."""


class ManifestEntry(BaseModel):
    index: int = Field(description="position when sealed: a moved entry no longer sits at its index")
    path: str = Field(description="relative to the bundle, with forward slashes")
    kind: Kind
    incident: str = Field("", description="workflow id and run id the file belongs to")
    sha256: str
    size: int
    recorded_sha256: str | None = Field(
        None, description="evidence and reviews: the sha256 its history recorded when the document was stored"
    )
    chain: str = ""


class LeftOut(BaseModel):
    """An evidence snapshot (or, said in `reason`, a review document) a history names that is not
    in the bundle, and why."""

    incident: str = Field(description="workflow id and run id whose history names it")
    location: str = Field(description="where the history says the snapshot is")
    recorded_sha256: str = Field("", description="the sha256 the history recorded")
    reason: str


class Header(BaseModel):
    format: str = FORMAT
    created_at: datetime
    source: str = Field("", description="the Temporal address and namespace the histories came from")
    query: str = ""
    since: str | None = None
    warnings: list[str] = Field(default_factory=list)
    # Format 2. None in a format-1 manifest, and then left out of the genesis, so those still verify.
    entry_count: int | None = Field(None, description="how many entries were sealed: in the header, so the chain's first link covers it")
    dry_runs: list[str] | None = Field(
        None, description="incident runs that were dry runs (rehearsals): exported like the others, labelled here"
    )
    left_out: list[LeftOut] | None = Field(None, description="evidence snapshots a history names that were not exported, and why")
    # Later in format 2: None in a manifest sealed before drills, and then left out of the genesis.
    drills: list[str] | None = Field(
        None, description="incident runs that were drills (`stanch drill`, on a drill route): exported like the others, labelled here"
    )


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


# drills came later in format 2: a manifest without it hashes as it was sealed, like format 1's.
FORMAT_2_FIELDS = ("entry_count", "dry_runs", "left_out", "drills")


def genesis(header: Header) -> str:
    # A format-1 header has none of the format-2 fields: hash it exactly as format 1 did.
    absent = {name for name in FORMAT_2_FIELDS if getattr(header, name) is None}
    return hashlib.sha256(canonical(header.model_dump(mode="json", exclude=absent))).hexdigest()


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
    files = list(files)
    header = header.model_copy(
        update={
            "format": FORMAT,
            "entry_count": len(files),
            "dry_runs": header.dry_runs or [],
            "left_out": header.left_out or [],
            "drills": header.drills or [],
        }
    )
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
    artefacts: ArtefactStore | None = None,
) -> Manifest:
    """Write each history, its timeline, its evidence and its review documents into `folder`,
    then seal it.

    Evidence and review documents are read from `artefacts` (default: the folder
    `home`/artefacts) by the location their history recorded; evidence an older history recorded
    as a path only from `home`/evidence. Each is kept only when its sha256 is the one its history
    recorded; anything else a history names is left out, and `header.left_out` says what and why."""
    prepare(folder)
    store = artefacts or ArtefactStore.local(home / "artefacts")
    evidence_root = home / "evidence"
    files: list[FileRecord] = []
    header.dry_runs = list(header.dry_runs or [])
    header.drills = list(header.drills or [])
    header.left_out = list(header.left_out or [])
    async for history in _each(histories):
        incident = f"{history.workflow_id} run {history.run_id}"
        stem = file_stem(history.workflow_id, history.run_id)
        files.append(write(folder, f"histories/{stem}.json", history.to_json(), "history", incident))
        timeline = await build_timeline(history, converter, trusted_keys or [])
        if timeline.dry_run:
            header.dry_runs.append(incident)
        if timeline.drill:
            header.drills.append(incident)
        files.append(write(folder, f"timelines/{stem}.json", timeline.model_dump_json(indent=2), "timeline", incident))
        files.append(write(folder, f"timelines/{stem}.md", to_markdown(timeline), "timeline", incident))
        occurrence = safe(timeline.occurrence or history.workflow_id)
        for evidence in {e.location: e for e in timeline.evidence}.values():
            if is_artefact_location(evidence.location):
                data, why = await take_artefact(store, evidence.location, evidence.sha256, "evidence")
                relative = f"evidence/{occurrence}/{safe(evidence.location.rsplit('/', 1)[-1])}"
            else:
                found, data, why = take_evidence(evidence.location, evidence.sha256, evidence_root)
                if found is not None:
                    relative = "evidence/" + "/".join(safe(part) for part in found.relative_to(evidence_root.resolve()).parts)
            if why:
                header.left_out.append(LeftOut(incident=incident, location=evidence.location, recorded_sha256=evidence.sha256, reason=why))
                continue
            if any(record.path == relative for record in files):  # the same snapshot, recorded twice
                continue
            files.append(write_bytes(folder, relative, data, "evidence", incident, evidence.sha256))
        for document, location, recorded in review_documents(timeline):
            data, why = await take_artefact(store, location, recorded, "reviews")
            if why:
                header.left_out.append(LeftOut(incident=incident, location=location, recorded_sha256=recorded, reason=f"{document}: {why}"))
                continue
            relative = f"reviews/{occurrence}/{safe(location.rsplit('/', 1)[-1])}"
            if any(record.path == relative for record in files):
                continue
            files.append(write_bytes(folder, relative, data, "review", incident, recorded))
    return seal(folder, files, header, signing_key)


# The review documents a completed `open_review` records: (which, location field, sha256 field).
REVIEW_DOCUMENTS = (
    ("the postmortem", "postmortem", "postmortem_sha256"),
    ("the compliance mapping", "compliance_file", "compliance_sha256"),
    ("the Art. 73 report draft", "report_draft", "report_draft_sha256"),
    ("the review tasks", "tasks_file", "tasks_sha256"),
)


def review_documents(timeline: Timeline) -> list[tuple[str, str, str]]:
    """(which document, location, recorded sha256) for each review document a run recorded in the
    artefact store. A history from before the store recorded paths on the worker and no sha256:
    those documents were never part of a bundle and are not looked for."""
    found: dict[str, tuple[str, str, str]] = {}
    for step in timeline.steps:
        if step.activity != "open_review" or step.outcome != "completed":
            continue
        for document, location_field, sha256_field in REVIEW_DOCUMENTS:
            location = step.result.get(location_field)
            if location and is_artefact_location(location):
                found.setdefault(location, (document, location, step.result.get(sha256_field) or ""))
    return list(found.values())


async def take_artefact(store: ArtefactStore, location: str, recorded_sha256: str, kind: str) -> tuple[bytes, str]:
    """The artefact's bytes from the store, if it is of `kind` and its sha256 is the one its
    history recorded; else (b"", why it is left out).

    Only what is true of the artefact leaves it out (missing, changed, not one). A store that
    cannot be read now (credentials, network) raises ArtefactError: a passing outage must not
    seal a bundle that lacks what it should hold."""
    if not recorded_sha256:
        return b"", "its history recorded no sha256 for it, so it cannot be shown to be the one stored"
    try:
        key, sha256 = store.key_of(location)
    except ArtefactError as error:
        return b"", str(error)
    if not key.startswith(f"{kind}/"):
        return b"", f"not a {kind} artefact: only {kind} are exported from there"
    if sha256 != recorded_sha256:
        return b"", f"its key names sha256 {sha256}, not the {recorded_sha256} its history recorded"
    try:
        return await store.get(location), ""
    except (ArtefactNotFound, ArtefactChanged) as error:
        return b"", str(error)


def take_evidence(location: str, recorded_sha256: str, evidence_root: Path) -> tuple[Path | None, bytes, str]:
    """The snapshot's path and bytes, if it is in the evidence folder and its sha256 is the one its
    history recorded; else (None, b"", why it is left out)."""
    found, why = find_evidence(location, evidence_root)
    if found is None:
        return None, b"", why
    if not recorded_sha256:
        return None, b"", f"its history recorded no sha256 for it, so {found} cannot be shown to be the snapshot taken"
    try:
        data = found.read_bytes()
    except OSError as error:
        return None, b"", f"{found}: cannot read it ({error.strerror or error})"
    actual = hashlib.sha256(data).hexdigest()
    if actual != recorded_sha256:
        return (
            None,
            b"",
            f"{found} has sha256 {actual}, not the {recorded_sha256} its history recorded: changed since the snapshot (or not the "
            "snapshot)",
        )
    return found, data, ""


def prepare(folder: Path) -> None:
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BundleError(f"{folder} exists and is not an empty folder: a bundle is written into a new one")
    folder.mkdir(parents=True, exist_ok=True)


def write(folder: Path, relative: str, text: str, kind: Kind, incident: str) -> FileRecord:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n")
    return FileRecord(path=relative, kind=kind, incident=incident)


def write_bytes(folder: Path, relative: str, data: bytes, kind: Kind, incident: str, recorded_sha256: str) -> FileRecord:
    """A stored document, byte for byte as its history's sha256 covers it."""
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return FileRecord(path=relative, kind=kind, incident=incident, recorded_sha256=recorded_sha256)


def find_evidence(location: str, evidence_root: Path) -> tuple[Path | None, str]:
    """The snapshot a history names, resolved, if it is a file inside `evidence_root`; else why not.

    Where the worker wrote it (an absolute path under this installation's evidence folder), else
    the same `<occurrence>/<file>` under this machine's evidence folder. Checked after resolving
    symlinks and `..`: a history can name any path, and only snapshots leave the machine."""
    root = evidence_root.resolve()
    recorded = Path(location)
    candidates = ([recorded] if recorded.is_absolute() else []) + [evidence_root / recorded.parent.name / recorded.name]
    outside = None
    for candidate in candidates:
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            continue
        if not resolved.is_relative_to(root):
            if candidate.exists():
                outside = resolved
            continue
        if resolved.is_file():
            return resolved, ""
    if outside is not None:
        return None, f"{outside} is outside the evidence folder {root}: only evidence snapshots are exported"
    return None, f"not found (looked under {root})"


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


def now() -> datetime:
    return datetime.now(UTC)
