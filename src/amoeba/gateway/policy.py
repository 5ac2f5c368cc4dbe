"""What a public listener enforces, built once per process from the topology's
settings: access-token verification (and revoked sessions,
:mod:`amoeba.auth.revocation`), rate limits, CORS, the access log, and
which peers may state the client address in ``X-Forwarded-For``.

Settings (all optional, under ``settings:``): ``auth`` (see
:mod:`amoeba.auth.tokens`), ``rate_limit`` (:mod:`.limits`), ``cors``
(:mod:`.cors`), ``access_log`` (true, the default: the app's requests; ``all``:
probes and observability polls too; false: none; :mod:`.access`),
``trusted_proxies`` (addresses or CIDRs of the proxies in front).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from amoeba.auth.revocation import SessionRevocations
from amoeba.auth.tokens import AuthConfig, AuthConfigError, TokenVerifier
from amoeba.data.cache import split_prefix
from amoeba.gateway.access import AccessLog
from amoeba.gateway.cors import Cors, CorsConfigError
from amoeba.gateway.http import Request
from amoeba.gateway.limits import (
    LimitConfigError,
    MemoryBuckets,
    RateLimiter,
    RedisBuckets,
    parse_rate_limit,
)
from amoeba.topology.model import Problem, Topology, TopologyError

__all__ = ["EdgePolicy"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _loopback(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


class EdgePolicy:
    def __init__(self, verifier: TokenVerifier, limiter: RateLimiter | None, cors: Cors | None,
                 access: AccessLog | None, trusted: tuple[_Network, ...] = (),
                 revocations: SessionRevocations | None = None):
        self.verifier = verifier
        # None: settings.auth.revocation is false, sessions are not checked
        self.revocations = revocations
        self.limiter = limiter
        self.cors = cors
        self.access = access
        self.trusted = trusted

    def __repr__(self) -> str:
        return (f"<EdgePolicy {self.verifier!r} {self.revocations!r} limiter={self.limiter!r} "
                f"cors={self.cors!r} access={self.access!r} trusted_proxies={len(self.trusted)}>")

    @classmethod
    def from_topology(cls, topology: Topology, app: str, data_dir: Path) -> EdgePolicy:
        extra = topology.settings.extra

        def fail(key: str, message: str) -> TopologyError:
            setting, _, rest = message.partition(": ")
            fix = rest.split("; fix: ")
            line = topology.lines.get(setting) or topology.lines.get(key)  # the deepest known
            return TopologyError([Problem(topology.file, line, setting,
                                          fix[0], fix[1] if len(fix) > 1 else "see README.md")])

        try:
            verifier = TokenVerifier(AuthConfig.from_settings(extra, app, data_dir))
        except AuthConfigError as exc:
            raise fail("settings.auth", str(exc)) from None
        try:
            buckets = parse_rate_limit(extra.get("rate_limit"))
        except LimitConfigError as exc:
            raise fail("settings.rate_limit", str(exc)) from None
        limiter = None
        if buckets:
            url = topology.resources.get("cache")
            store = (RedisBuckets(url, f"{split_prefix(url)[1]}amoeba:{app}:rl:")
                     if url and url.startswith("redis") else MemoryBuckets())
            limiter = RateLimiter(buckets, store)
        try:
            cors = Cors.from_settings(extra.get("cors"))
        except CorsConfigError as exc:
            raise fail("settings.cors", str(exc)) from None
        enabled = extra.get("access_log", True)
        if not isinstance(enabled, bool) and enabled != "all":
            raise fail("settings.access_log",
                       f"settings.access_log: {enabled!r} is not true, false or all; "
                       f"fix: access_log: true")
        raw_proxies = extra.get("trusted_proxies") or []
        try:
            if not isinstance(raw_proxies, list):
                raise ValueError(f"{raw_proxies!r} is not a list")
            trusted = tuple(ipaddress.ip_network(str(p), strict=False) for p in raw_proxies)
        except ValueError as exc:
            raise fail("settings.trusted_proxies",
                       f"settings.trusted_proxies: {exc}; fix: trusted_proxies: [10.0.0.0/8]") from None
        revocations = (verifier.config.revocations(topology.resources.get("cache"))
                       if verifier.config.revocation else None)
        access = AccessLog(everything=enabled == "all") if enabled else None
        return cls(verifier, limiter, cors, access, trusted, revocations)

    def _is_trusted(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def client_ip(self, req: Request) -> str:
        """The peer, or, when the peer is a trusted proxy, the nearest address in
        ``X-Forwarded-For`` that is not itself a trusted proxy."""
        peer = req.client
        if not self.trusted or not self._is_trusted(peer):
            return peer
        forwarded = req.headers.get("x-forwarded-for")
        if not forwarded:
            return peer
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop
        return hops[0] if hops else peer

    def is_local(self, req: Request) -> bool:
        """The request comes from this machine: a loopback peer that forwards no
        one else's request, or a trusted proxy forwarding a loopback client.  A
        same-host proxy is a loopback peer for every client it forwards."""
        if not _loopback(req.client):
            return False
        headers = req.headers
        if "x-forwarded-for" not in headers and "forwarded" not in headers:
            return True
        if "forwarded" in headers or not self._is_trusted(req.client):
            return False  # RFC 7239 Forwarded is not read: not proven local
        return _loopback(self.client_ip(req))

    async def aclose(self) -> None:
        if self.access is not None:
            self.access.flush()  # the last lines before the process says it stopped
        if self.limiter is not None:
            await self.limiter.aclose()
        if self.revocations is not None:
            await self.revocations.aclose()
