"""Ed25519 keys for signing an audit bundle's manifest head.

The hash chain in a manifest shows whether a bundle changed since it was sealed, but anyone
who can rewrite the bundle can also rewrite the chain. A signature over the head with a key
only the exporter holds closes that: verify with the public key, obtained separately.

Shared by every host that exports or verifies (docs/KEYS.md):

    STANCH_AUDIT_SIGNING_KEY        PEM text or a PEM file's path   `stanch audit export` signs with it
    STANCH_AUDIT_SIGNING_KEY_FILE   a mounted PEM file              (or this; `--signing-key` wins over both)
    STANCH_AUDIT_PUBLIC_KEYS_FILE   one or more PEM public keys     `stanch audit verify` checks with the one
                                                                    whose key id the bundle names

Rotation: sign with a new key; keep the old public keys in the file, so bundles signed before
still verify. A bundle signed by a key id none of the public keys has fails, naming the id.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

SIGNING_KEY_VARIABLE = "STANCH_AUDIT_SIGNING_KEY"
SIGNING_KEY_FILE_VARIABLE = "STANCH_AUDIT_SIGNING_KEY_FILE"
PUBLIC_KEYS_FILE_VARIABLE = "STANCH_AUDIT_PUBLIC_KEYS_FILE"
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----", re.DOTALL)


class SigningKeyError(Exception):
    """A key file is missing or is not an Ed25519 key; the message names the file."""


def generate(private_path: Path, public_path: Path, overwrite: bool = False) -> str:
    """Write a new key pair as PEM (private: PKCS#8, mode 0600); return the key id."""
    for path in (private_path, public_path):
        if path.exists() and not overwrite:
            raise SigningKeyError(
                f"{path} exists; pass --force to replace it (bundles signed with the old key then verify only with the old public key)"
            )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(private_pem)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_id(key.public_key())


def load_private(source: str) -> Ed25519PrivateKey:
    """A private key from a PEM file, or PEM text itself (as STANCH_AUDIT_SIGNING_KEY may hold)."""
    pem, where = _pem(source)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as error:
        raise SigningKeyError(f"{where}: not an unencrypted PEM private key ({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{where}: a {type(key).__name__}, not an Ed25519 key (make one with `stanch audit keygen`)")
    return key


def load_public(source: str) -> Ed25519PublicKey:
    pem, where = _pem(source)
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as error:
        raise SigningKeyError(f"{where}: not a PEM public key ({error})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{where}: a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_public_keys(source: str) -> list[Ed25519PublicKey]:
    """Every public key in a PEM file (or PEM text): the current key and the retired ones."""
    pem, where = _pem(source)
    blocks = [block.group(0) for block in _PEM_BLOCK.finditer(pem)]
    if not blocks:
        raise SigningKeyError(f"{where}: no PEM public key in it (make one with `stanch audit keygen`)")
    keys = []
    for number, block in enumerate(blocks, start=1):
        try:
            keys.append(load_public(block.decode()))
        except SigningKeyError as error:
            raise SigningKeyError(f"{where}, key {number} of {len(blocks)}: {str(error).partition(': ')[2]}") from None
    return keys


def export_key(given: str | None, env: Mapping[str, str] | None = None) -> Ed25519PrivateKey | None:
    """The key an export signs with: `--signing-key` (or STANCH_AUDIT_SIGNING_KEY, which it
    reads), else the file STANCH_AUDIT_SIGNING_KEY_FILE names; None: the bundle is unsigned."""
    env = os.environ if env is None else env
    if env.get(SIGNING_KEY_VARIABLE) and env.get(SIGNING_KEY_FILE_VARIABLE):
        raise SigningKeyError(f"both {SIGNING_KEY_VARIABLE} and {SIGNING_KEY_FILE_VARIABLE} are set: keep one")
    if given:
        return load_private(given)
    if named := env.get(SIGNING_KEY_FILE_VARIABLE):
        try:
            return load_private(named)
        except SigningKeyError as error:
            raise SigningKeyError(f"{error} (named by {SIGNING_KEY_FILE_VARIABLE})") from None
    return None


def verify_keys(given: list[str], env: Mapping[str, str] | None = None) -> list[Ed25519PublicKey]:
    """The public keys a verify checks with: each `--public-key`, else STANCH_AUDIT_PUBLIC_KEYS_FILE's."""
    env = os.environ if env is None else env
    if given:
        return [key for source in given for key in load_public_keys(source)]
    if named := env.get(PUBLIC_KEYS_FILE_VARIABLE):
        try:
            return load_public_keys(named)
        except SigningKeyError as error:
            raise SigningKeyError(f"{error} (named by {PUBLIC_KEYS_FILE_VARIABLE})") from None
    return []


def key_named(keys: list[Ed25519PublicKey], signed_by: str) -> Ed25519PublicKey | None:
    """The key among `keys` whose id a bundle's signature names."""
    return next((key for key in keys if key_id(key) == signed_by), None)


def sign(key: Ed25519PrivateKey, head: str) -> str:
    return base64.b64encode(key.sign(head.encode())).decode()


def verify(key: Ed25519PublicKey, head: str, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), head.encode())
    except (InvalidSignature, ValueError):
        return False
    return True


def key_id(key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the raw public key's sha256: names a key, proves nothing."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _pem(source: str) -> tuple[bytes, str]:
    if source.lstrip().startswith("-----BEGIN"):
        return source.encode(), "the PEM text given"
    path = Path(source).expanduser()
    try:
        return path.read_bytes(), str(path)
    except FileNotFoundError:
        raise SigningKeyError(f"{path}: no such key file") from None
    except OSError as error:
        raise SigningKeyError(f"{path}: cannot read it ({error.strerror})") from None
