"""Verifying an audit bundle: every file's sha256, every link of the chain, the signature.

Names each entry or file that does not match (edited, missing, added, removed, reordered, cut
off the end, a symlink) and says what the verification proves: an unsigned chain shows edits
but not a consistent rewrite; a signature checked with a public key obtained separately does.
The bundle's layout and the chain are described in `stanch.audit.bundle`.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, Field, ValidationError

from stanch.audit import signing
from stanch.audit.bundle import (
    MANIFEST,
    READABLE_FORMATS,
    LeftOut,
    Manifest,
    file_digest,
    genesis,
    link,
)


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
    drills: list[str] = Field(default_factory=list, description="incident runs exported that were drills (`stanch drill`)")
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

    def problem(what: str, message: str, index: int | None = None, path: str | None = None) -> None:
        report.problems.append(Problem(what=what, index=index, path=path, message=message))

    root = folder.resolve()
    if (folder / MANIFEST).is_symlink():
        problem(
            "symlink", f"{MANIFEST} is a symbolic link (to {os.readlink(folder / MANIFEST)}): a bundle holds its own manifest; not read"
        )
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
    report.drills = list(manifest.drills or [])

    # The list itself: every index once, in order, within the count sealed (or, in a format-1
    # manifest, the count listed). Gaps are reported as runs: a forged index of 10**12 costs nothing.
    limit = sealed if sealed is not None else len(entries)
    counts = Counter(entry.index for entry in entries)
    for position, entry in enumerate(entries):
        if not 0 <= entry.index < limit:
            of = f"the header records {limit} entries" if sealed is not None else f"the manifest lists {limit} entries"
            problem(
                "index",
                f"entries[{position}] {entry.path}: index {entry.index} is out of range ({of}): an entry added, or its index edited",
                position,
                entry.path,
            )
    previous = -1
    for index in sorted(i for i in counts if 0 <= i < limit) + [limit]:
        if index > previous + 1:
            first, last = previous + 1, index - 1
            which = f"entry {first} was" if first == last else f"entries {first}–{last} were"
            if index == limit and sealed is not None:
                message = (
                    f"{which} removed from the end of the manifest: the header, which the chain covers, records {sealed} entries "
                    f"and {len(entries)} are listed"
                )
            else:
                message = f"{which} removed from the manifest (the chain of the entry after it no longer links)"
            problem("removed", message, index=first)
        previous = index
    for index in sorted(i for i, n in counts.items() if n > 1):
        problem("manifest", f"entry index {index} is listed {counts[index]} times", index=index)
    indices = [entry.index for entry in entries]
    for position, (entry, expected) in enumerate(zip(entries, sorted(indices), strict=True)):
        if entry.index != expected:
            problem(
                "reordered",
                f"entries[{position}] {entry.path} was sealed as entry {entry.index}: the entries were reordered",
                position,
                entry.path,
            )

    # The chain, in sealed order (a move is reported above, once): each link from the one recorded
    # before it, so one edited entry is reported once, not with every entry after it.
    start = genesis(manifest.header)
    previous_chain = recomputed = start
    for position in sorted(range(len(entries)), key=lambda p: entries[p].index):
        entry = entries[position]
        if entry.chain != link(previous_chain, entry):
            before = "the header was edited, or " if previous_chain == start else ""
            problem(
                "chain",
                f"entries[{position}] {entry.path}: chain does not link: {before}this entry was edited, or one before it removed or moved",
                position,
                entry.path,
            )
        previous_chain, recomputed = entry.chain, link(recomputed, entry)
    if manifest.head != previous_chain:
        problem("head", "the head is not the last entry's chain: entries were removed from the end, or the head was edited")

    # The files: each listed one unchanged, inside the bundle, and nothing else.
    links: set[str] = set()
    for position, entry in enumerate(entries):
        relative = PurePosixPath(entry.path)
        if any(ord(character) < 32 for character in entry.path):
            problem("manifest", f"entries[{position}] {entry.path!r}: a control character in a path: refused", position, entry.path)
            continue
        if relative.is_absolute() or ".." in relative.parts or not relative.parts or entry.path == MANIFEST:
            problem("manifest", f"entries[{position}] {entry.path}: a path outside the bundle", position, entry.path)
            continue
        if found := _symlink_on(folder, relative):
            problem(
                "symlink",
                f"entries[{position}] {entry.path}: {found} is a symbolic link (to {os.readlink(folder / found)}): refused, a bundle "
                "holds its own files",
                position,
                entry.path,
            )
            links.add(found)
            continue
        path = folder / relative
        if not path.resolve().is_relative_to(root):
            problem("manifest", f"entries[{position}] {entry.path}: resolves outside the bundle", position, entry.path)
            continue
        if not path.is_file():
            problem("missing", f"entries[{position}] {entry.path}: the file is missing", position, entry.path)
            continue
        try:
            sha256, size = file_digest(path)
        except OSError as error:
            problem("missing", f"entries[{position}] {entry.path}: cannot be read: {error.strerror or error}", position, entry.path)
            continue
        if (sha256, size) != (entry.sha256, entry.size):
            problem(
                "edited",
                f"entries[{position}] {entry.path}: changed since export (sha256 {sha256[:16]}…, {size} bytes; sealed "
                f"{entry.sha256[:16]}…, {entry.size} bytes)",
                position,
                entry.path,
            )
        if entry.recorded_sha256 and entry.recorded_sha256 != entry.sha256:
            report.warnings.append(
                f"{entry.path}: evidence differs from the sha256 its history recorded ({entry.recorded_sha256}): changed before export"
            )
    listed = {entry.path for entry in entries}
    for on_disk, is_link in _walk(folder):
        if is_link:
            if on_disk not in links:
                problem(
                    "symlink",
                    f"{on_disk}: a symbolic link (to {os.readlink(folder / on_disk)}) in the bundle: refused, a bundle holds its own files",
                    path=on_disk,
                )
        elif on_disk != MANIFEST and on_disk not in listed:
            problem("unlisted", f"{on_disk}: no manifest entry lists this file (added after export?)", path=on_disk)

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
        "valid": f"signed by key {manifest.signature.key_id if manifest.signature else '?'}, and the signature checks with the "
        "public key given: the header and every entry are as the key's holder sealed them, and so is every file that matches its entry",
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


def verify_with_keys(folder: Path, keys: list[Ed25519PublicKey], require_signature: bool = False) -> VerifyReport:
    """Verify with the public key the bundle's signature names. Given several (a rotation), none
    of them that key is a failed signature naming the key id; one key is checked as it is."""
    if len(keys) < 2:
        return verify(folder, keys[0] if keys else None, require_signature=require_signature)
    try:
        signed_by = Manifest.model_validate_json((folder / MANIFEST).read_text()).signature
    except (OSError, ValueError):
        signed_by = None  # the verification names what is wrong with the manifest
    if signed_by is None or (key := signing.key_named(keys, signed_by.key_id)) is not None:
        return verify(folder, keys[0] if signed_by is None else key, require_signature=require_signature)
    report = verify(folder, None, require_signature=False)
    known = ", ".join(signing.key_id(key) for key in keys)
    report.problems.append(
        Problem(
            what="signature",
            message=f"signed by key id {signed_by.key_id}, and none of the {len(keys)} public keys given has that id (given: {known}): "
            "add the exporter's public key for it, or the bundle was not signed by your installation",
        )
    )
    report.signature = "invalid"
    report.proves = f"signed by key id {signed_by.key_id}, which no public key given has: the signature could not be checked"
    return report
