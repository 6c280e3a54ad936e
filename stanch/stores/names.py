"""File and folder names for values that came from an alert (a model, an incident's
occurrence): one level deep, never climbing out of the store's folder, never colliding."""

from __future__ import annotations

import hashlib
import re
import unicodedata

# A hashed name's tail. A plain name shaped like one is hashed too, so no plain name can take the
# file of a hashed one.
_DIGEST_CHARS = 16
_HASHED_TAIL = re.compile(rf"\+[0-9a-f]{{{_DIGEST_CHARS}}}\Z")
_NOT_SLUG = re.compile(r"[^A-Za-z0-9_-]+")
_SLUG_CHARS = 64
# Room for ".jsonl" and the like within the 255 bytes most file systems allow.
_MAX_NAME_BYTES = 200


def _plain(name: str) -> bool:
    """Whether a name is its own file name: no leading dot (so neither `.` nor `..`, nor hidden),
    no separator to nest or climb with, no control character, short enough, and not ending as a
    hashed name does."""
    return (
        bool(name)
        and not name.startswith(".")
        and "/" not in name
        and "\\" not in name
        and not any(unicodedata.category(char) in ("Cc", "Cs") for char in name)
        and len(name.encode()) <= _MAX_NAME_BYTES
        and not _HASHED_TAIL.search(name)
    )


def safe_file_name(name: str) -> str:
    """A file or folder name, one level deep, for a value that came from an alert (a model, an
    incident's occurrence). A plain name stays as it is, so what was recorded under it before is
    still found; any other becomes a readable slug of it, `+`, and 16 hex of its sha256: two
    distinct names never share a file, and the same name always finds its own."""
    if _plain(name):
        return name
    readable = _NOT_SLUG.sub("-", name).strip("-")[:_SLUG_CHARS] or "unnamed"
    # surrogatepass: a lone surrogate is still hashed, to a name of its own, instead of failing.
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]
    return f"{readable}+{digest}"
