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
last chain. The header records how many entries were sealed, so the chain's first link covers
the count. `verify` recomputes all of it and names what does not match: an edited, missing,
added or reordered file or entry, an entry cut off the end, a symlink. Anyone able to rewrite
the whole bundle can rewrite the chain too, header and count included; an Ed25519 signature
over the head (signing.py), checked with a public key obtained separately, is what rules that out.

Evidence comes only from the installation's evidence folder (`STANCH_HOME/evidence`), and only
a snapshot whose sha256 is the one its history recorded: a history names its evidence, so a file
it names elsewhere (or one changed since) is left out, and the manifest's `left_out` says why.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
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

FORMAT = "stanch-audit-bundle/2"
# Format 1 had no entry_count, dry_runs or left_out; its bundles still verify (without a count).
READABLE_FORMATS = ("stanch-audit-bundle/1", FORMAT)
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


class LeftOut(BaseModel):
    """An evidence snapshot a history names that is not in the bundle, and why."""

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
    dry_runs: list[str] | None = Field(None, description="incident runs that were dry runs (rehearsals): exported like the others, labelled here")
    left_out: list[LeftOut] | None = Field(None, description="evidence snapshots a history names that were not exported, and why")


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


FORMAT_2_FIELDS = ("entry_count", "dry_runs", "left_out")


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
        update={"format": FORMAT, "entry_count": len(files), "dry_runs": header.dry_runs or [], "left_out": header.left_out or []}
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
) -> Manifest:
    """Write each history, its timeline and its evidence into `folder`, then seal it.

    Evidence is copied only from `home`/evidence (settings.evidence_dir), and only when its
    sha256 is the one its history recorded; anything else a history names is left out, and
    `header.left_out` says what and why."""
    prepare(folder)
    evidence_root = home / "evidence"
    files: list[FileRecord] = []
    header.dry_runs = list(header.dry_runs or [])
    header.left_out = list(header.left_out or [])
    async for history in _each(histories):
        incident = f"{history.workflow_id} run {history.run_id}"
        stem = file_stem(history.workflow_id, history.run_id)
        files.append(write(folder, f"histories/{stem}.json", history.to_json(), "history", incident))
        timeline = await build_timeline(history, converter, trusted_keys or [])
        if timeline.dry_run:
            header.dry_runs.append(incident)
        files.append(write(folder, f"timelines/{stem}.json", timeline.model_dump_json(indent=2), "timeline", incident))
        files.append(write(folder, f"timelines/{stem}.md", to_markdown(timeline), "timeline", incident))
        for evidence in {e.location: e for e in timeline.evidence}.values():
            found, data, why = take_evidence(evidence.location, evidence.sha256, evidence_root)
            if found is None:
                header.left_out.append(LeftOut(incident=incident, location=evidence.location, recorded_sha256=evidence.sha256, reason=why))
                continue
            relative = "evidence/" + "/".join(safe(part) for part in found.relative_to(evidence_root.resolve()).parts)
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(data)
            files.append(FileRecord(path=relative, kind="evidence", incident=incident, recorded_sha256=evidence.sha256))
    return seal(folder, files, header, signing_key)


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
        return None, b"", f"{found} has sha256 {actual}, not the {recorded_sha256} its history recorded: changed since the snapshot (or not the snapshot)"
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


# --- verify -----------------------------------------------------------------------------


class Problem(BaseModel):
    what: Literal["manifest", "edited", "missing", "unlisted", "removed", "reordered", "index", "chain", "head", "symlink", "signature"]
    index: int | None = Field(None, description="position in the manifest's entries")
    path: str | None = None
    message: str


class VerifyReport(BaseModel):
    bundle: str
    format: str = ""
    entries: int = 0
    sealed_entries: int | None = Field(None, description="the entry count the header records (format 2); None in a format-1 manifest")
    head: str = ""
    signature: Literal["valid", "invalid", "unsigned", "not checked"] = "unsigned"
    proves: str = Field("", description="what this verification shows about the bundle, and what it cannot")
    dry_runs: list[str] = Field(default_factory=list, description="incident runs exported that were dry runs (rehearsals)")
    left_out: list[LeftOut] = Field(default_factory=list, description="evidence its histories name that the export left out, and why")
    problems: list[Problem] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


UNSIGNED_WITH_COUNT = (
    "unsigned: the hash chain shows any file or entry edited, added, removed or reordered, and the entry count "
    "its header records (covered by the chain) shows entries cut off the end; it cannot show a consistent rewrite — "
    "header, entries and chain recomputed together, which is also how a truncation could hide — by anyone able to "
    "write the bundle. Only a signature checked with a public key obtained separately rules that out "
    "(export --signing-key, verify --public-key --require-signature)."
)
UNSIGNED_WITHOUT_COUNT = (
    "unsigned, and this format-1 manifest records no entry count: the hash chain shows any file or entry edited, "
    "added, removed or reordered, but neither entries cut off the end (with the head set back) nor a consistent "
    "rewrite of the whole manifest. Only a signature checked with a public key obtained separately rules those out."
)


def verify(folder: Path, public_key: Ed25519PublicKey | None = None, require_signature: bool = False) -> VerifyReport:
    """Recompute every file's sha256 and the chain; name each entry or file that does not match.

    With `require_signature`, a bundle that is unsigned, or whose signature was not checked (no
    public key given), is a problem too: only a checked signature rules out a consistent rewrite."""
    report = VerifyReport(bundle=str(folder))
    problem = lambda what, message, index=None, path=None: report.problems.append(Problem(what=what, index=index, path=path, message=message))
    root = folder.resolve()
    if (folder / MANIFEST).is_symlink():
        problem("symlink", f"{MANIFEST} is a symbolic link (to {os.readlink(folder / MANIFEST)}): a bundle holds its own manifest; not read")
        return report
    try:
        manifest = Manifest.model_validate_json((folder / MANIFEST).read_text())
    except FileNotFoundError:
        problem("manifest", f"no {MANIFEST} in {folder}: not a Stanch audit bundle, or its manifest was removed")
        return report
    except (ValidationError, ValueError, OSError) as error:
        problem("manifest", f"{MANIFEST} is not a bundle manifest: {str(error).splitlines()[0]}")
        return report
    if manifest.format not in READABLE_FORMATS:
        problem("manifest", f"{MANIFEST} says format {manifest.format!r}; this stanch reads {', '.join(map(repr, READABLE_FORMATS))}")
    entries = manifest.entries
    sealed = manifest.entry_count
    report.format, report.entries, report.sealed_entries, report.head = manifest.format, len(entries), sealed, manifest.head
    report.warnings = list(manifest.warnings)
    report.dry_runs, report.left_out = list(manifest.dry_runs or []), list(manifest.left_out or [])

    # The list itself: every index once, in order, within the count sealed (or, in a format-1
    # manifest, the count listed). Gaps are reported as runs: a forged index of 10**12 costs nothing.
    limit = sealed if sealed is not None else len(entries)
    counts = Counter(entry.index for entry in entries)
    for position, entry in enumerate(entries):
        if not 0 <= entry.index < limit:
            of = f"the header records {limit} entries" if sealed is not None else f"the manifest lists {limit} entries"
            problem("index", f"entries[{position}] {entry.path}: index {entry.index} is out of range ({of}): an entry added, or its index edited", position, entry.path)
    previous = -1
    for index in sorted(i for i in counts if 0 <= i < limit) + [limit]:
        if index > previous + 1:
            first, last = previous + 1, index - 1
            which = f"entry {first} was" if first == last else f"entries {first}–{last} were"
            if index == limit and sealed is not None:
                message = f"{which} removed from the end of the manifest: the header, which the chain covers, records {sealed} entries and {len(entries)} are listed"
            else:
                message = f"{which} removed from the manifest (the chain of the entry after it no longer links)"
            problem("removed", message, index=first)
        previous = index
    for index in sorted(i for i, n in counts.items() if n > 1):
        problem("manifest", f"entry index {index} is listed {counts[index]} times", index=index)
    indices = [entry.index for entry in entries]
    for position, (entry, expected) in enumerate(zip(entries, sorted(indices))):
        if entry.index != expected:
            problem("reordered", f"entries[{position}] {entry.path} was sealed as entry {entry.index}: the entries were reordered", position, entry.path)

    # The chain, in sealed order (a move is reported above, once): each link from the one recorded
    # before it, so one edited entry is reported once, not with every entry after it.
    start = genesis(manifest.header)
    previous_chain = recomputed = start
    for position in sorted(range(len(entries)), key=lambda p: entries[p].index):
        entry = entries[position]
        if entry.chain != link(previous_chain, entry):
            before = "the header was edited, or " if previous_chain == start else ""
            problem("chain", f"entries[{position}] {entry.path}: chain does not link: {before}this entry was edited, or one before it removed or moved", position, entry.path)
        previous_chain, recomputed = entry.chain, link(recomputed, entry)
    if manifest.head != previous_chain:
        problem("head", "the head is not the last entry's chain: entries were removed from the end, or the head was edited")

    # The files: each listed one unchanged, inside the bundle, and nothing else.
    links: set[str] = set()
    for position, entry in enumerate(entries):
        relative = PurePosixPath(entry.path)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts or entry.path == MANIFEST:
            problem("manifest", f"entries[{position}] {entry.path}: a path outside the bundle", position, entry.path)
            continue
        if found := _symlink_on(folder, relative):
            problem("symlink", f"entries[{position}] {entry.path}: {found} is a symbolic link (to {os.readlink(folder / found)}): refused, a bundle holds its own files", position, entry.path)
            links.add(found)
            continue
        path = folder / relative
        if not path.resolve().is_relative_to(root):
            problem("manifest", f"entries[{position}] {entry.path}: resolves outside the bundle", position, entry.path)
            continue
        if not path.is_file():
            problem("missing", f"entries[{position}] {entry.path}: the file is missing", position, entry.path)
            continue
        sha256, size = file_digest(path)
        if (sha256, size) != (entry.sha256, entry.size):
            problem("edited", f"entries[{position}] {entry.path}: changed since export (sha256 {sha256[:16]}…, {size} bytes; sealed {entry.sha256[:16]}…, {entry.size} bytes)", position, entry.path)
        if entry.recorded_sha256 and entry.recorded_sha256 != entry.sha256:
            report.warnings.append(f"{entry.path}: evidence differs from the sha256 its history recorded ({entry.recorded_sha256}): changed before export")
    listed = {entry.path for entry in entries}
    for relative, is_link in _walk(folder):
        if is_link:
            if relative not in links:
                problem("symlink", f"{relative}: a symbolic link (to {os.readlink(folder / relative)}) in the bundle: refused, a bundle holds its own files", path=relative)
        elif relative != MANIFEST and relative not in listed:
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
    if require_signature and report.signature == "not checked":
        problem("signature", "a checked signature is required (--require-signature): pass --public-key with the exporter's public key")
    elif require_signature and report.signature == "unsigned" and public_key is None:
        problem("signature", "a signature is required (--require-signature), and the bundle is unsigned")

    unsigned = UNSIGNED_WITH_COUNT if sealed is not None else UNSIGNED_WITHOUT_COUNT
    report.proves = {
        "valid": f"signed by key {manifest.signature.key_id if manifest.signature else '?'}, and the signature checks with the public key given: "
        "the header and every entry are as the key's holder sealed them, and so is every file that matches its entry",
        "invalid": "the signature does not check: the bundle is not as the key's holder sealed it",
        "not checked": "signed, but the signature was not checked (pass --public-key): until it is, this is what it shows: " + unsigned,
        "unsigned": unsigned,
    }[report.signature]
    return report


def _symlink_on(folder: Path, relative: PurePosixPath) -> str | None:
    """The first part of `relative` (a folder or the file itself) that is a symbolic link."""
    for depth in range(1, len(relative.parts) + 1):
        partial = PurePosixPath(*relative.parts[:depth])
        if (folder / partial).is_symlink():
            return partial.as_posix()
    return None


def _walk(folder: Path) -> list[tuple[str, bool]]:
    """Every file and symbolic link in the bundle (relative, sorted), never following a link."""
    found = []
    for directory, folders, files in os.walk(folder, followlinks=False):
        base = Path(directory)
        for name in folders + files:
            path = base / name
            if path.is_symlink() or name in files:
                found.append((path.relative_to(folder).as_posix(), path.is_symlink()))
    return sorted(found)


def now() -> datetime:
    return datetime.now(UTC)
