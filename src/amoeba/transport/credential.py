"""The internal credential: a short-lived HMAC-signed token naming its audience.

``v1.<audience>.<caller>.<expiry>.<signature>``, signed with HMAC-SHA256 over
the first four parts with the secret every process of a deployment shares
(``AMOEBA_SECRET``; the supervisor generates one for local runs).  A private
listener accepts an RPC connection or an HTTP request only with a token whose
audience is its own process and whose expiry has not passed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from amoeba.errors import Unauthorized

__all__ = ["TokenSigner", "load_secret"]

TTL = 300.0


def load_secret(data_dir: Path) -> bytes:
    """``AMOEBA_SECRET`` when set, else a random secret kept in the data
    directory (mode 0600), so processes started by hand from one working
    directory agree without configuration."""
    env = os.environ.get("AMOEBA_SECRET")
    if env:
        return env.encode()
    path = data_dir / ".internal-secret"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its secret
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(value)
    return value


class TokenSigner:
    def __init__(self, secret: bytes):
        self._secret = secret
        self._cache: dict[tuple[str, str], tuple[float, str]] = {}

    def _sign(self, body: str) -> str:
        return hmac.new(self._secret, body.encode("utf-8", "surrogateescape"),
                        hashlib.sha256).hexdigest()

    def issue(self, audience: str, caller: str, ttl: float = TTL) -> str:
        """A token for ``audience``; reused until half its life has passed."""
        now = time.time()
        hit = self._cache.get((audience, caller))
        if hit and hit[0] - now > ttl / 2:
            return hit[1]
        exp = int(now + ttl)
        body = f"v1.{audience}.{caller}.{exp}"
        token = f"{body}.{self._sign(body)}"
        self._cache[(audience, caller)] = (exp, token)
        return token

    def verify(self, token: str, audience: str) -> str:
        """The caller's name, or ``Unauthorized``."""
        body, _, sig = token.rpartition(".")
        parts = body.split(".")
        if len(parts) != 4 or parts[0] != "v1" or not (parts[3].isascii() and parts[3].isdigit()):
            raise Unauthorized("internal credential required")
        # On bytes: compare_digest refuses a str with non-ASCII characters (a
        # forged header is latin-1, anything goes) with a TypeError.
        if not hmac.compare_digest(sig.encode("utf-8", "surrogateescape"),
                                   self._sign(body).encode()):
            raise Unauthorized("internal credential is not valid")
        if parts[1] != audience:
            raise Unauthorized("internal credential is for another process")
        if int(parts[3]) < time.time():
            raise Unauthorized("internal credential expired")
        return parts[2]
