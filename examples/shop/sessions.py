"""Where accounts keeps login sessions (one per refresh-token family).

Chosen once at start: Redis when the topology gives ``resources.cache`` as
a Redis URL, else the accounts database.  Both are shared by every replica
of accounts, which is what makes rotation and revocation hold everywhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta

import msgspec
import sqlalchemy as sa

from amoeba import Cache, Database
from shop.timestamps import Timestamp

metadata = sa.MetaData()
sessions = sa.Table(
    "sessions", metadata,
    sa.Column("sid", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(64), nullable=False, index=True),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("refresh_hash", sa.String(64), nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False),
    sa.Column("expires_at", Timestamp, nullable=False),
)


class Session(msgspec.Struct):
    sid: str
    user_id: str
    generation: int
    refresh_hash: str
    revoked: bool
    expires_at: float  # unix time


class SessionStore(ABC):
    @abstractmethod
    async def create(self, s: Session) -> None: ...

    @abstractmethod
    async def get(self, sid: str) -> Session | None: ...

    @abstractmethod
    async def rotate(self, sid: str, generation: int, new_hash: str) -> bool:
        """Move to ``generation + 1`` with ``new_hash`` only if the session is
        still at ``generation`` and not revoked (compare-and-set)."""

    @abstractmethod
    async def revoke(self, sid: str) -> None: ...

    @abstractmethod
    async def sessions_of(self, user_id: str) -> list[str]:
        """The ids of the user's sessions not revoked yet (a password change ends them)."""


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


class DatabaseSessions(SessionStore):
    def __init__(self, db: Database):
        self.db = db

    def __repr__(self) -> str:
        return f"<DatabaseSessions {self.db!r}>"

    async def create(self, s: Session) -> None:
        await self.db.execute(sessions.insert().values(
            sid=s.sid, user_id=s.user_id, generation=s.generation, refresh_hash=s.refresh_hash,
            revoked=s.revoked, expires_at=datetime.fromtimestamp(s.expires_at, UTC)))

    async def get(self, sid: str) -> Session | None:
        row = await self.db.fetchone(sa.select(sessions).where(sessions.c.sid == sid))
        if row is None:
            return None
        return Session(sid=row.sid, user_id=row.user_id, generation=row.generation,
                       refresh_hash=row.refresh_hash, revoked=bool(row.revoked),
                       expires_at=_utc(row.expires_at).timestamp())

    async def rotate(self, sid: str, generation: int, new_hash: str) -> bool:
        result = await self.db.execute(
            sessions.update()
            .where(sessions.c.sid == sid, sessions.c.generation == generation,
                   sessions.c.revoked == sa.false())
            .values(generation=generation + 1, refresh_hash=new_hash))
        return bool(result.rowcount == 1)

    async def revoke(self, sid: str) -> None:
        await self.db.execute(sessions.update().where(sessions.c.sid == sid).values(revoked=True))

    async def sessions_of(self, user_id: str) -> list[str]:
        rows = await self.db.fetchall(sa.select(sessions.c.sid).where(
            sessions.c.user_id == user_id, sessions.c.revoked == sa.false()))
        return [r.sid for r in rows]


# Compare-and-set in one round trip: Redis runs a script atomically.
_ROTATE = """
local s = redis.call('HMGET', KEYS[1], 'generation', 'revoked')
if not s[1] or tonumber(s[1]) ~= tonumber(ARGV[1]) or s[2] == '1' then return 0 end
redis.call('HSET', KEYS[1], 'generation', tonumber(ARGV[1]) + 1, 'refresh_hash', ARGV[2])
return 1
"""


class RedisSessions(SessionStore):
    def __init__(self, cache: Cache):
        assert cache.redis is not None
        self.redis = cache.redis
        self.prefix = cache.prefix + "session:"
        self.users = cache.prefix + "user-sessions:"

    def __repr__(self) -> str:
        return f"<RedisSessions {self.prefix}*>"

    async def create(self, s: Session) -> None:
        key = self.prefix + s.sid
        ttl = max(1, int(s.expires_at - datetime.now(UTC).timestamp()))
        mine = self.users + s.user_id  # the user's session ids, for a password change
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"user_id": s.user_id, "generation": s.generation,
                                    "refresh_hash": s.refresh_hash, "revoked": int(s.revoked),
                                    "expires_at": s.expires_at})
            pipe.expire(key, ttl)
            pipe.sadd(mine, s.sid)
            pipe.expire(mine, ttl)  # every session in it has a TTL of at most this
            await pipe.execute()

    async def get(self, sid: str) -> Session | None:
        data = await self.redis.hgetall(self.prefix + sid)
        if not data:
            return None
        d = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
             for k, v in data.items()}
        return Session(sid=sid, user_id=d["user_id"], generation=int(d["generation"]),
                       refresh_hash=d["refresh_hash"], revoked=d["revoked"] == "1",
                       expires_at=float(d["expires_at"]))

    async def rotate(self, sid: str, generation: int, new_hash: str) -> bool:
        done = await self.redis.eval(_ROTATE, 1, self.prefix + sid, generation, new_hash)
        return bool(done)

    async def revoke(self, sid: str) -> None:
        await self.redis.hset(self.prefix + sid, "revoked", 1)

    async def sessions_of(self, user_id: str) -> list[str]:
        sids = [m.decode() if isinstance(m, bytes) else m
                for m in await self.redis.smembers(self.users + user_id)]
        live = [s for s in sids if (g := await self.get(s)) is not None and not g.revoked]
        return sorted(live)


def session_store(db: Database, cache: Cache) -> SessionStore:
    return RedisSessions(cache) if cache.shared else DatabaseSessions(db)


def expiry(days: float) -> float:
    return (datetime.now(UTC) + timedelta(days=days)).timestamp()
