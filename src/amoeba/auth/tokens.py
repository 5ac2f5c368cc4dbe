"""Access tokens: JWTs signed with the key set of :mod:`amoeba.auth.keys`.

Configured by the topology's ``settings.auth`` (every key optional)::

    settings:
      auth:
        issuer: shop              # default: the app's name
        audience: shop            # default: the app's name
        algorithms: [EdDSA]       # accepted algorithms; pinned here, never read from a token
        access_ttl: 900           # seconds
        leeway: 0                 # seconds of clock skew tolerated on exp/nbf
        keys: /etc/shop/keys.json # default: <data dir>/.auth-keys.json, generated on first use
        session_recheck: 2        # seconds a process trusts its answer to "is this session
                                  # revoked?" (see amoeba.auth.revocation)
        revocation: true          # false: the edge does not check sessions (logout then ends
                                  # only the refresh token; access tokens live to their exp)

:class:`TokenVerifier` is what the edge uses; :class:`Tokens` is the
resource a service declares (``tokens: Tokens``) to issue tokens too.  Every
verification failure raises the same ``Unauthorized("invalid or expired
token")``, so a client learns nothing about which check failed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amoeba.auth.keys import KeyFileError, KeySet, load_keys
from amoeba.auth.principal import Principal
from amoeba.auth.revocation import SessionRevocations
from amoeba.errors import Unauthorized
from amoeba.resource import Resource, ResourceContext

__all__ = ["AuthConfig", "AuthConfigError", "TokenVerifier", "Tokens"]

INVALID = "invalid or expired token"
_KNOWN = {"issuer", "audience", "algorithms", "access_ttl", "leeway", "keys", "session_recheck",
          "revocation"}
_SUPPORTED = ("EdDSA", "ES256", "ES384", "RS256", "PS256", "HS256", "HS384", "HS512")
_REQUIRED = ["exp", "iat", "nbf", "sub", "jti"]


# Verified tokens remembered per process (each entry ~0.5 KB).
VERIFIED_CACHE = 10_000

class AuthConfigError(ValueError):
    """``settings.auth`` is wrong: says which key and how to fix it."""


@dataclass(frozen=True)
class AuthConfig:
    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    access_ttl: int
    leeway: float
    keys: Path
    session_recheck: float = 2.0
    revocation: bool = True

    @classmethod
    def from_settings(cls, extra: dict[str, Any], app: str, data_dir: Path) -> AuthConfig:
        """From the topology's extra settings (``settings.auth`` may be absent)."""
        raw = extra.get("auth") or {}
        if not isinstance(raw, dict):
            raise AuthConfigError("settings.auth: must be a mapping; fix: auth: {issuer: ..., "
                                  "access_ttl: 900}")
        unknown = sorted(set(raw) - _KNOWN)
        if unknown:
            raise AuthConfigError(f"settings.auth: unknown key(s) {unknown}; fix: use only "
                                  f"{sorted(_KNOWN)}")

        def text(key: str, default: str) -> str:
            v = raw.get(key, default)
            if not isinstance(v, str) or not v:
                raise AuthConfigError(f"settings.auth.{key}: {v!r} is not a non-empty string; "
                                      f"fix: {key}: {default}")
            return v

        def number(key: str, default: float, low: float) -> float:
            from amoeba.topology.loader import parse_duration

            v = raw.get(key, default)
            try:
                seconds = parse_duration(v) if not isinstance(v, bool) else -1.0
            except ValueError:
                seconds = -1.0
            if seconds < low:
                raise AuthConfigError(f"settings.auth.{key}: {v!r} is not a duration >= {low:g}s; "
                                      f"fix: {key}: {default:g} (seconds) or like 15m")
            return seconds

        def flag(key: str, default: bool) -> bool:
            v = raw.get(key, default)
            if isinstance(v, str) and v.lower() in ("true", "false"):
                v = v.lower() == "true"  # from ${VAR:-true}
            if not isinstance(v, bool):
                raise AuthConfigError(f"settings.auth.{key}: {v!r} is not true/false; fix: "
                                      f"{key}: {str(default).lower()}")
            return v

        algs = raw.get("algorithms", ["EdDSA"])
        if isinstance(algs, str):
            algs = [algs]
        if (not isinstance(algs, list) or not algs
                or any(a not in _SUPPORTED or a == "none" for a in algs)):
            raise AuthConfigError(f"settings.auth.algorithms: {algs!r} is not a list of supported "
                                  f"algorithms {list(_SUPPORTED)}; fix: algorithms: [EdDSA]")
        keys = raw.get("keys")
        if keys is not None and not isinstance(keys, str):
            raise AuthConfigError(f"settings.auth.keys: {keys!r} is not a file path; fix: "
                                  f"keys: /path/to/auth-keys.json")
        return cls(
            issuer=text("issuer", app), audience=text("audience", app),
            algorithms=tuple(algs), access_ttl=int(number("access_ttl", 900, 1)),
            leeway=number("leeway", 0, 0),
            keys=Path(keys) if keys else data_dir / ".auth-keys.json",
            session_recheck=number("session_recheck", 2, 0),
            revocation=flag("revocation", True),
        )

    def revocations(self, cache_url: str | None) -> SessionRevocations:
        """Where this issuer's revoked sessions are kept (see :mod:`.revocation`)."""
        return SessionRevocations.for_cache(cache_url, self.issuer, self.access_ttl + self.leeway,
                                            self.session_recheck)


class TokenVerifier:
    """Verifies (and, holding a private key, issues) access tokens.

    The key file is read on first use, not at construction, so a process
    that never sees a token never touches it.
    """

    def __init__(self, config: AuthConfig):
        import jwt  # PyJWT: imported here so processes without auth never load it

        self.config = config
        self._jwt = jwt
        self._keys: KeySet | None = None
        self._options: Any = {"require": _REQUIRED, "verify_signature": True, "verify_exp": True,
                              "verify_nbf": True, "verify_iat": True, "verify_aud": True,
                              "verify_iss": True}
        # token -> (principal, nbf, exp): a verified token is checked once,
        # then only its time window (an Ed25519 check costs ~100 µs).
        self._verified: dict[str, tuple[Principal, float, float]] = {}

    def __repr__(self) -> str:
        return f"<TokenVerifier iss={self.config.issuer!r} algorithms={list(self.config.algorithms)}>"

    @property
    def keys(self) -> KeySet:
        if self._keys is None:
            self._keys = load_keys(self.config.keys, self.config.algorithms)
        return self._keys

    def issue_access(self, subject: str, *, roles: Iterable[str] = (), session: str | None = None,
                     ttl: int | None = None) -> tuple[str, int]:
        """A signed access token and its lifetime in seconds."""
        signer = self.keys.signer
        if signer is None:
            raise KeyFileError(f"{self.keys.path}: no key holds a private key or secret, so this "
                               f"process can verify tokens but not issue them; add one first")
        ttl = self.config.access_ttl if ttl is None else int(ttl)
        now = int(time.time())
        claims = {"iss": self.config.issuer, "aud": self.config.audience, "sub": subject,
                  "iat": now, "nbf": now, "exp": now + ttl, "jti": secrets.token_urlsafe(12),
                  "sid": session, "roles": list(roles), "typ": "access"}
        token = self._jwt.encode(claims, signer.sign_key, algorithm=signer.alg,
                                 headers={"kid": signer.kid})
        return str(token), ttl

    def verify_access(self, token: str) -> Principal:
        """The token's principal, or ``Unauthorized`` with one generic message."""
        hit = self._verified.get(token)
        if hit is not None:
            now = time.time()
            if hit[1] - self.config.leeway <= now < hit[2] + self.config.leeway:
                return hit[0]
            del self._verified[token]
        principal, nbf, exp = self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[token] = (principal, nbf, exp)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float, float]:
        jwt = self._jwt
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.keys.by_kid.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise Unauthorized(INVALID)
            # The key's own algorithm, never the token's alg header.
            claims = jwt.decode(token, key.verify_key, algorithms=[key.alg], options=self._options,
                                audience=self.config.audience, issuer=self.config.issuer,
                                leeway=self.config.leeway)
        except jwt.PyJWTError:
            raise Unauthorized(INVALID) from None
        roles = claims.get("roles", [])
        sid = claims.get("sid")
        sub = claims["sub"]
        if (claims.get("typ") != "access" or not isinstance(sub, str) or not sub
                or not isinstance(roles, list) or not all(isinstance(r, str) for r in roles)
                or not (sid is None or isinstance(sid, str))):
            raise Unauthorized(INVALID)
        return (Principal(sub, tuple(roles), sid, str(claims["jti"])), float(claims["nbf"]),
                float(claims["exp"]))


class Tokens(Resource):
    """Issue and verify access tokens in a service: declare ``tokens: Tokens``."""

    kind = "auth"

    def __init__(self, verifier: TokenVerifier, revocations: SessionRevocations | None = None):
        self.verifier = verifier
        self.revocations = revocations or verifier.config.revocations(None)

    def __repr__(self) -> str:
        return f"<Tokens {self.verifier!r} {self.revocations!r}>"

    @classmethod
    async def open(cls, ctx: ResourceContext) -> Tokens:
        # The host fills settings.auth's issuer/audience defaults with the app's name.
        config = AuthConfig.from_settings(ctx.settings, ctx.service, ctx.data_dir)
        verifier = TokenVerifier(config)
        _ = verifier.keys  # fail at startup, not at the first login, on a bad key file
        # Revocations go where the edge looks for them: the topology's cache.
        return cls(verifier, config.revocations(ctx.resources.get("cache")))

    async def aclose(self) -> None:
        await self.revocations.aclose()

    async def revoke_session(self, sid: str) -> None:
        """End every access token of session ``sid`` at the edge of every process
        (within ``settings.auth.session_recheck`` seconds)."""
        await self.revocations.revoke(sid)

    def issue_access(self, subject: str, *, roles: Iterable[str] = (), session: str | None = None,
                     ttl: int | None = None) -> tuple[str, int]:
        return self.verifier.issue_access(subject, roles=roles, session=session, ttl=ttl)

    def verify_access(self, token: str) -> Principal:
        return self.verifier.verify_access(token)
