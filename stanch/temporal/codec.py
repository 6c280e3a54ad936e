"""Encrypting what Temporal stores: an AES-GCM payload codec with key ids, for rotation.

Workflow inputs, results, signals, updates, queries, activity arguments and memos hold
prompts, model outputs and evidence; with encryption on, Temporal stores only ciphertext
and anyone reading a history without the keys (the Temporal UI, the CLI, a database dump)
sees `binary/encrypted` blobs. Search attributes are never encrypted (the server indexes
them): `stanch.temporal.search_attributes` keeps them to status, severity, runbook, target and time.

Keys: `STANCH_ENCRYPTION_KEYS` ("kid:base64key,kid2:base64key") or a file,
`STANCH_ENCRYPTION_KEYS_FILE`, else `STANCH_HOME/encryption-keys` if it exists (same format,
one key a line, `#` comments). The first key encrypts; every key listed decrypts, chosen by the
key id each payload carries — so to rotate, put a new key first and keep the old ones after it
for as long as histories written with them are to be read (replayed, audited).

Unlike the decision keys, encryption is never switched on by itself: a key that appeared on
its own on one machine would make histories unreadable everywhere else.

The wire format follows Temporal's samples (Go, TypeScript and Python agree on it): the
whole original Payload, serialized, is encrypted; 12 random nonce bytes are prepended; the
metadata says `encoding: binary/encrypted` and `encryption-key-id: <kid>`.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

if TYPE_CHECKING:
    from stanch.config.settings import Settings

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12
KEY_BYTES = 32  # AES-256
KEYS_ENV = "STANCH_ENCRYPTION_KEYS"
KEYS_FILE_ENV = "STANCH_ENCRYPTION_KEYS_FILE"
KEYS_FILE = "encryption-keys"
# A key id travels in every payload's metadata and in error messages: keep it plain.
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

EncryptionKeys = list[tuple[str, bytes]]


class EncryptionKeyError(ValueError):
    """The encryption keys are malformed; the message says where they came from and what is wrong
    (never the key itself)."""


class DecryptionError(ValueError):
    """A payload could not be decrypted: its key is not configured, or it was altered."""


def parse_encryption_keys(text: str, source: str = KEYS_ENV) -> EncryptionKeys:
    """`kid:base64key` entries, separated by commas or newlines; `#` starts a comment line."""
    lines = (line for line in text.splitlines() if not line.strip().startswith("#"))
    entries = [entry.strip() for line in lines for entry in line.split(",") if entry.strip()]
    keys: EncryptionKeys = []
    for number, entry in enumerate(entries, start=1):
        kid, separator, encoded = entry.partition(":")
        kid = kid.strip()
        if not separator or not kid or not encoded.strip():
            raise EncryptionKeyError(f"{source}: entry {number} must look like 'kid:base64key' (make one with `stanch codec keygen`)")
        if not KEY_ID_PATTERN.match(kid):
            raise EncryptionKeyError(f"{source}: key id {kid[:64]!r} may only use letters, digits, '.', '_' and '-' (at most 64)")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            raise EncryptionKeyError(f"{source}: key {kid!r} is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise EncryptionKeyError(
                f"{source}: key {kid!r} is {len(key)} bytes; AES-256 needs exactly {KEY_BYTES} (`stanch codec keygen` makes one)"
            )
        if kid in (known for known, _ in keys):
            raise EncryptionKeyError(f"{source}: key id {kid!r} is listed twice; every key needs its own id")
        keys.append((kid, key))
    if not keys:
        raise EncryptionKeyError(f"{source}: no encryption key in it")
    return keys


def load_encryption_keys(settings: Settings) -> EncryptionKeys | None:
    """The configured keys, first one encrypting; None when encryption is off (nothing configured).

    STANCH_ENCRYPTION_KEYS, else the keys file — one named by STANCH_ENCRYPTION_KEYS_FILE (a
    mounted Secret) must exist, the default HOME/encryption-keys is used only if it does. The
    variable and a named file together are refused: which one a host used would depend on how
    it was started."""
    if settings.encryption_keys is not None and settings.encryption_keys_file is not None:
        raise EncryptionKeyError(f"both {KEYS_ENV} and {KEYS_FILE_ENV} are set: keep one (the file, for a mounted Secret)")
    if settings.encryption_keys is not None:
        return parse_encryption_keys(settings.encryption_keys.get_secret_value(), KEYS_ENV)
    path = settings.encryption_keys_path
    if not path.exists():
        if settings.encryption_keys_file is not None:
            raise EncryptionKeyError(f"{path}: no such file (named by {KEYS_FILE_ENV})")
        return None
    try:
        text = path.read_text()
    except OSError as err:
        raise EncryptionKeyError(f"{path}: cannot read it: {err.strerror or err}") from None
    return parse_encryption_keys(text, str(path))


def new_key_line(kid: str | None = None) -> str:
    """A fresh `kid:base64key` line: 32 random bytes under a new (or the given) key id."""
    kid = kid or f"k-{secrets.token_hex(4)}"
    if not KEY_ID_PATTERN.match(kid):
        raise EncryptionKeyError(f"key id {kid[:64]!r} may only use letters, digits, '.', '_' and '-' (at most 64)")
    return f"{kid}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def is_encrypted(payload: Payload) -> bool:
    return payload.metadata.get("encoding") == ENCODING


class EncryptionCodec(PayloadCodec):
    """Encrypts every payload with the first key; decrypts with whichever key the payload names."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise EncryptionKeyError("EncryptionCodec needs at least one key")
        self._ciphers = {kid: AESGCM(key) for kid, key in keys}
        self.key_id = keys[0][0]
        self._encoded_key_id = self.key_id.encode()

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        # Payloads written before encryption was switched on stay readable as they are.
        return [self.decrypt(payload) if is_encrypted(payload) else payload for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self.key_id].encrypt(nonce, payload.SerializeToString(), None)
        return Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: self._encoded_key_id}, data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        kid = payload.metadata.get(KEY_ID_METADATA, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise DecryptionError(
                f"payload encrypted with key id {kid!r}, which is not configured (configured: {', '.join(self._ciphers)}); "
                f"list it after the first key in {KEYS_ENV} or the keys file to read histories written with it"
            )
        try:
            plain = cipher.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], None)
        except InvalidTag:
            raise DecryptionError(
                f"payload under key id {kid!r} failed authentication: a different key has that id, or the data was altered"
            ) from None
        return Payload.FromString(plain)
