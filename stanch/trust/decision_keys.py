"""Where each process gets its decision keys, and the refusals when they do not fit together.

    STANCH_DECISION_SIGNING_KEY   kid:base64(32-byte Ed25519 seed)   the API only: it signs
    STANCH_DECISION_PUBLIC_KEYS   kid:base64(32-byte public key),…   workers, the API, auditors:
                                                                     they verify (keep retired keys listed)
    STANCH_DECISION_KEYS          kid:base64(HMAC key),…             legacy: verify assertions made
                                                                     before Ed25519, never sign

Each can instead name a mounted file (a Kubernetes Secret): STANCH_DECISION_SIGNING_KEY_FILE,
STANCH_DECISION_PUBLIC_KEYS_FILE, STANCH_DECISION_KEYS_FILE, holding the same text (entries one
a line or comma-separated, `#` comment lines allowed). Setting a variable and its _FILE is refused.

With none of them set (one machine, `stanch up`), the keys are files in STANCH_HOME:
`decision-signing-key` (0600) and `decision-public-keys`, created by whichever process starts
first (O_EXCL: exactly one writes them). Once any of the variables is set, the environment is
the source: a process that cannot find its keys there refuses to start, naming the variable,
unless it runs --insecure-dev (then it falls back to the home files and says so).

`python -m stanch.trust.decision_keys` prints a fresh pair as the two variables.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stanch.trust.assertions import KEYS_FILE, DecisionKeyError, DecisionKeys, decode_b64, parse_keys, split_entries

SIGNING_VARIABLE = "STANCH_DECISION_SIGNING_KEY"
PUBLIC_VARIABLE = "STANCH_DECISION_PUBLIC_KEYS"
LEGACY_VARIABLE = "STANCH_DECISION_KEYS"
# Each variable may instead name a mounted file holding the same text (spelled out: grep finds them).
FILE_VARIABLES = {
    SIGNING_VARIABLE: "STANCH_DECISION_SIGNING_KEY_FILE",
    PUBLIC_VARIABLE: "STANCH_DECISION_PUBLIC_KEYS_FILE",
    LEGACY_VARIABLE: "STANCH_DECISION_KEYS_FILE",
}
SIGNING_FILE = "decision-signing-key"
PUBLIC_FILE = "decision-public-keys"

# --- formats ----------------------------------------------------------------------------------


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_of(key: Ed25519PublicKey) -> str:
    """A generated key's id: its public key's fingerprint, so two installations never share one."""
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def signing_line(kid: str, key: Ed25519PrivateKey) -> str:
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return f"{kid}:{base64.b64encode(seed).decode()}"


def public_line(kid: str, key: Ed25519PublicKey) -> str:
    return f"{kid}:{base64.b64encode(raw_public(key)).decode()}"


def parse_signing_key(text: str, where: str = SIGNING_VARIABLE) -> tuple[str, Ed25519PrivateKey]:
    entries = split_entries(text, f"{where} must look like 'kid:base64 of a 32-byte Ed25519 seed'")
    if len(entries) != 1:
        raise DecisionKeyError(
            f"{where} holds {len(entries)} keys; the API signs with exactly one (list retired ones in {PUBLIC_VARIABLE})"
        )
    kid, encoded = entries[0]
    seed = decode_b64(encoded, f"{where} ({kid!r})")
    if len(seed) != 32:
        raise DecisionKeyError(
            f"{where} ({kid!r}) is {len(seed)} bytes; an Ed25519 seed is 32 (make one: python -m stanch.trust.decision_keys)"
        )
    return kid, Ed25519PrivateKey.from_private_bytes(seed)


def parse_public_keys(text: str, where: str = PUBLIC_VARIABLE) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for kid, encoded in split_entries(text, f"{where} must look like 'kid:base64 of a 32-byte Ed25519 public key,kid2:…'"):
        raw = decode_b64(encoded, f"{where} ({kid!r})")
        if len(raw) != 32:
            raise DecisionKeyError(f"{where} ({kid!r}) is {len(raw)} bytes; an Ed25519 public key is 32")
        keys[kid] = Ed25519PublicKey.from_public_bytes(raw)
    if not keys:
        raise DecisionKeyError(f"{where} lists no public key")
    return keys


def generate() -> tuple[str, str]:
    """A fresh pair: (signing line, public line), both `kid:base64`."""
    key = Ed25519PrivateKey.generate()
    kid = key_id_of(key.public_key())
    return signing_line(kid, key), public_line(kid, key.public_key())


# --- the home folder (one machine) -------------------------------------------------------------


def _read_when_written(path: Path) -> str:
    for _ in range(100):  # another process may be between create and write
        text = path.read_text()
        if text.strip():
            return text
        time.sleep(0.05)
    raise DecisionKeyError(f"{path} stays empty: a process died while creating it; delete it and start again")


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def home_keys(home: Path, *, signer: bool) -> DecisionKeys:
    """The single-machine default. Whoever starts first creates the pair (O_EXCL on the signing
    key file; the public file is written before the seed, so a seed on disk means its public key
    is listed). A home that holds only the public file (a worker's host with the file mounted)
    is used as it is: a verifier never makes a signing key nobody else knows."""
    signing_path, public_path = home / SIGNING_FILE, home / PUBLIC_FILE
    if not signer and public_path.is_file() and not signing_path.exists():
        return DecisionKeys(public=parse_public_keys(_read_when_written(public_path), str(public_path)), source=str(public_path))
    home.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(signing_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        descriptor = None
    if descriptor is not None:
        key = Ed25519PrivateKey.generate()
        kid = key_id_of(key.public_key())
        # A rotation on one machine deletes the signing key file: the old public keys stay listed.
        kept = public_path.read_text() if public_path.is_file() else ""
        _write_atomically(public_path, f"{public_line(kid, key.public_key())}\n{kept}")
        with os.fdopen(descriptor, "w") as out:
            out.write(signing_line(kid, key) + "\n")
    signing_text = _read_when_written(signing_path)
    public = parse_public_keys(_read_when_written(public_path), str(public_path)) if public_path.is_file() else {}
    keys = DecisionKeys(public=public, source=str(home))
    if signer:
        kid, key = parse_signing_key(signing_text, str(signing_path))
        if kid not in public or raw_public(public[kid]) != raw_public(key.public_key()):
            # The API holds the private key: listing its public half where the workers on this
            # machine read is harmless, and mends a file a crash or a hand edit left without it.
            public = {kid: key.public_key(), **{k: v for k, v in public.items() if k != kid}}
            _write_atomically(public_path, "".join(f"{public_line(k, v)}\n" for k, v in public.items()))
        keys.signing, keys.public = (kid, key), public
    if not keys.public:
        raise DecisionKeyError(f"{public_path} is missing: delete {signing_path} to make a new pair, or set {PUBLIC_VARIABLE}")
    return keys


# --- the environment: a variable, or the file its _FILE names ----------------------------------


@dataclass(frozen=True)
class Configured:
    """One key setting's text and where it came from, for messages: the variable, or the file."""

    text: str
    where: str


def configured(env: Mapping[str, str], variable: str) -> Configured | None:
    """The text of `variable`, or of the file `variable_FILE` names; None if neither is set.
    Both set is refused: which one a host used would depend on how it was started."""
    value, file_variable = env.get(variable), FILE_VARIABLES[variable]
    named = env.get(file_variable)
    if value and named:
        raise DecisionKeyError(f"both {variable} and {file_variable} are set: keep one (the file, for a mounted Secret)")
    if value:
        return Configured(value, variable)
    if not named:
        return None
    where = f"{named} ({file_variable})"
    try:
        text = Path(named).read_text()
    except FileNotFoundError:
        raise DecisionKeyError(f"{where}: no such file") from None
    except OSError as err:
        raise DecisionKeyError(f"{where}: cannot read it: {err.strerror or err}") from None
    if not split_entries(text, f"{where} must hold 'kid:base64' entries"):
        raise DecisionKeyError(f"{where} holds no key")
    return Configured(text, where)


def _legacy(home: Path, env: Mapping[str, str]) -> dict[str, bytes]:
    if legacy := configured(env, LEGACY_VARIABLE):
        return dict(parse_keys(legacy.text))
    legacy_file = home / KEYS_FILE
    return dict(parse_keys(legacy_file.read_text())) if legacy_file.is_file() and legacy_file.read_text().strip() else {}


def _explicit(env: Mapping[str, str]) -> list[str]:
    """The key settings given, by the name the operator used (the variable or its _FILE)."""
    return [
        name
        for variable in (SIGNING_VARIABLE, PUBLIC_VARIABLE, LEGACY_VARIABLE)
        for name in (variable, FILE_VARIABLES[variable])
        if env.get(name)
    ]


def _fall_back(problem: str, home: Path, *, signer: bool, legacy: dict[str, bytes]) -> DecisionKeys:
    """--insecure-dev: say the problem loudly and use the home folder's keys instead."""
    print(f"\n!!! INSECURE (--insecure-dev): {problem}\n    Using the decision keys in {home} instead.\n", file=sys.stderr, flush=True)
    keys = home_keys(home, signer=signer)
    keys.legacy = legacy
    return keys


# --- per process -------------------------------------------------------------------------------


def for_api(home: Path, env: Mapping[str, str] | None = None, *, insecure_dev: bool = False) -> DecisionKeys:
    """The API signs: its signing key, and its public half among the public keys workers trust."""
    env = os.environ if env is None else env
    explicit = _explicit(env)
    if not explicit:
        return home_keys(home, signer=True)
    signing_setting, public_setting = configured(env, SIGNING_VARIABLE), configured(env, PUBLIC_VARIABLE)
    if signing_setting is None:
        problem = (
            f"{', '.join(explicit)} {'is' if len(explicit) == 1 else 'are'} set but {SIGNING_VARIABLE} is not: the API signs "
            f"every decision with it. Set {SIGNING_VARIABLE}=kid:base64seed or mount it and set {FILE_VARIABLES[SIGNING_VARIABLE]} "
            f"(make a pair: python -m stanch.trust.decision_keys) and list its public half in {PUBLIC_VARIABLE} for the workers"
        )
        if insecure_dev:
            return _fall_back(problem, home, signer=True, legacy={})
        raise DecisionKeyError(problem)
    kid, key = parse_signing_key(signing_setting.text, signing_setting.where)
    if public_setting is None:
        return DecisionKeys(signing=(kid, key), public={kid: key.public_key()}, source=signing_setting.where)
    public = parse_public_keys(public_setting.text, public_setting.where)
    if kid not in public or raw_public(public[kid]) != raw_public(key.public_key()):
        listed = f"lists {kid!r} with another public key" if kid in public else f"does not list {kid!r}"
        problem = (
            f"{public_setting.where} {listed}: workers verifying with it would refuse every decision this API signs. "
            f"Add {public_line(kid, key.public_key())} to {PUBLIC_VARIABLE} (on the workers too)"
        )
        if insecure_dev:
            return _fall_back(problem, home, signer=True, legacy={})
        raise DecisionKeyError(problem)
    return DecisionKeys(signing=(kid, key), public=public, source=f"{signing_setting.where}, {public_setting.where}")


def for_worker(home: Path, env: Mapping[str, str] | None = None, *, insecure_dev: bool = False) -> DecisionKeys:
    """A worker verifies: public keys only (and legacy HMAC keys for runs begun before Ed25519)."""
    env = os.environ if env is None else env
    legacy = _legacy(home, env)
    if public_setting := configured(env, PUBLIC_VARIABLE):
        return DecisionKeys(public=parse_public_keys(public_setting.text, public_setting.where), legacy=legacy, source=public_setting.where)
    explicit = _explicit(env)
    if explicit:
        problem = (
            f"{', '.join(explicit)} {'is' if len(explicit) == 1 else 'are'} set but {PUBLIC_VARIABLE} is not: this worker could "
            f"verify no decision the API signs and would refuse every one. Set {PUBLIC_VARIABLE} to the API's public key(s) "
            f"(kid:base64,…) or mount them and set {FILE_VARIABLES[PUBLIC_VARIABLE]}; a worker needs no signing key"
        )
        if insecure_dev:
            return _fall_back(problem, home, signer=False, legacy=legacy)
        raise DecisionKeyError(problem)
    keys = home_keys(home, signer=False)
    keys.legacy = legacy
    return keys


def for_audit(home: Path, env: Mapping[str, str] | None = None) -> DecisionKeys:
    """An auditor verifies with whatever public (and legacy) keys are configured, creates no
    file and needs none: replay takes every verdict from history."""
    env = os.environ if env is None else env
    public: dict[str, Ed25519PublicKey] = {}
    if public_setting := configured(env, PUBLIC_VARIABLE):
        public = parse_public_keys(public_setting.text, public_setting.where)
    elif (home / PUBLIC_FILE).is_file():
        public = parse_public_keys((home / PUBLIC_FILE).read_text(), str(home / PUBLIC_FILE))
    return DecisionKeys(public=public, legacy=_legacy(home, env), source="audit")


if __name__ == "__main__":
    signing, public = generate()
    print(f"# the API only (a secret):\n{SIGNING_VARIABLE}={signing}")
    print(f"# the API, every worker and auditor (public):\n{PUBLIC_VARIABLE}={public}")
