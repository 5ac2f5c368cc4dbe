"""The key set that signs and verifies access tokens.

File format (JSON, mode 0600)::

    {"keys": [
        {"kid": "2024-06", "alg": "EdDSA", "private_pem": "-----BEGIN PRIVATE KEY-----..."},
        {"kid": "2024-01", "alg": "EdDSA", "public_pem": "-----BEGIN PUBLIC KEY-----..."},
        {"kid": "legacy", "alg": "HS256", "secret": "at least 32 bytes ..."}
    ]}

The first key holding private material (``private_pem`` or ``secret``)
signs; every listed key verifies the tokens whose header names its ``kid``.
Rotation: add the new key first, keep the old one listed until every token
it signed has expired, then remove it.  Each key carries its algorithm, and
a key is only used with its own algorithm, which must be one of
``settings.auth.algorithms``: the token's ``alg`` header is never trusted.

A missing file is generated with one Ed25519 key.  It is written to a
temporary file and hard-linked into place, which fails if the file exists,
so processes starting together all end up reading the one winner.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Key", "KeyFileError", "KeySet", "generate_key_file", "load_keys"]

_ASYMMETRIC = frozenset({"EdDSA", "ES256", "ES384", "RS256", "PS256"})
_SYMMETRIC = frozenset({"HS256", "HS384", "HS512"})


class KeyFileError(ValueError):
    """The key file is unusable; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Key:
    kid: str
    alg: str
    verify_key: Any = field(repr=False)  # a cryptography public key, or the HMAC secret
    sign_key: Any = field(default=None, repr=False)  # private key / secret; None: verify only


@dataclass(frozen=True)
class KeySet:
    path: Path
    signer: Key | None
    by_kid: dict[str, Key]

    def __repr__(self) -> str:
        return f"<KeySet {self.path} signer={self.signer and self.signer.kid!r} kids={list(self.by_kid)}>"


def generate_key_file(path: Path) -> None:
    """Write a new key file (one Ed25519 signing key, mode 0600) at ``path``;
    ``FileExistsError`` if one is there: a key set is never replaced silently."""
    if path.exists():
        raise FileExistsError(path)
    _generate(path)


def _generate(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    doc = {"keys": [{"kid": secrets.token_hex(8), "alg": "EdDSA", "private_pem": pem}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
        with contextlib.suppress(FileExistsError):  # another process won: read its file
            os.link(tmp, path)  # atomic, and refuses to replace: first writer wins
    finally:
        tmp.unlink(missing_ok=True)


def _load_entry(path: Path, i: int, entry: Any, algorithms: tuple[str, ...]) -> Key:
    from cryptography.hazmat.primitives import serialization

    where = f"{path}: keys[{i}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or not entry["kid"]:
        raise KeyFileError(f"{where}: each key is an object with a non-empty \"kid\"")
    alg = entry.get("alg")
    if alg not in _ASYMMETRIC | _SYMMETRIC:
        raise KeyFileError(f"{where}: \"alg\" is {alg!r}; use \"EdDSA\" (or HS256 with a \"secret\")")
    if alg not in algorithms:
        raise KeyFileError(f"{where}: key {entry['kid']!r} uses {alg}, which settings.auth.algorithms "
                        f"({list(algorithms)}) does not allow; add it there or remove the key")
    try:
        if alg in _SYMMETRIC:
            secret = entry.get("secret")
            if not isinstance(secret, str) or len(secret.encode()) < 32:
                raise KeyFileError(f"{where}: an {alg} key needs a \"secret\" of at least 32 bytes")
            raw = secret.encode()
            return Key(entry["kid"], alg, raw, raw)
        if isinstance(entry.get("private_pem"), str):
            priv = serialization.load_pem_private_key(entry["private_pem"].encode(), password=None)
            return Key(entry["kid"], alg, priv.public_key(), priv)
        if isinstance(entry.get("public_pem"), str):
            pub = serialization.load_pem_public_key(entry["public_pem"].encode())
            return Key(entry["kid"], alg, pub)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{where}: cannot load the PEM of key {entry['kid']!r}: {exc}") from None
    raise KeyFileError(f"{where}: key {entry['kid']!r} has neither \"private_pem\" nor \"public_pem\"")


def load_keys(path: Path, algorithms: tuple[str, ...], *, create: bool = True) -> KeySet:
    """Read (and, when missing and ``create``, generate) the key file."""
    if not path.exists():
        if not create:
            raise KeyFileError(f"{path}: key file not found; create it or remove settings.auth.keys")
        if "EdDSA" not in algorithms:
            raise KeyFileError(f"{path}: key file not found, and a generated key would be EdDSA, "
                            f"which settings.auth.algorithms does not allow; provide the file")
        _generate(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: cannot read the key file: {exc}") from None
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise KeyFileError(f"{path}: expected {{\"keys\": [...]}} with at least one key")
    keys = [_load_entry(path, i, e, algorithms) for i, e in enumerate(entries)]
    by_kid: dict[str, Key] = {}
    for k in keys:
        if k.kid in by_kid:
            raise KeyFileError(f"{path}: two keys have kid {k.kid!r}; kids must be unique")
        by_kid[k.kid] = k
    signer = next((k for k in keys if k.sign_key is not None), None)
    return KeySet(path, signer, by_kid)
