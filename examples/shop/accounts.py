"""Accounts: register, log in, refresh, log out, change the password.

Passwords are hashed with argon2id.  Login hands out a short-lived access
JWT (verified by the gateway at the edge) and an opaque refresh token
``<session>.<generation>.<secret>``.  Refreshing rotates it; presenting an
older generation again means it was stolen or replayed, so the whole session
is revoked.  Sessions live in Redis or the accounts database (see
``sessions.py``), shared by every replica.

Ending a session (logout, refresh-token reuse, a password change, which ends
all of the user's sessions) also ends its access tokens: ``Tokens.
revoke_session`` marks it where the edge of every gateway replica checks it
(``amoeba.auth.revocation``).  Failed logins are throttled per account
(``throttle.py``).  Register answers the same 202 whether the email is new
or taken, so it tells nobody which emails have accounts.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import sqlalchemy as sa

from amoeba import Cache, Conflict, Database, Invalid, Principal, Service, Tokens, Unauthorized, get, post
from amoeba.auth.passwords import hash_password, verify_password
from shop.events import UserRegistered
from shop.fields import END, NO_NUL
from shop.sessions import Session, SessionStore, expiry, session_store
from shop.throttle import LoginThrottle
from shop.timestamps import Timestamp

log = logging.getLogger("shop.accounts")

metadata = sa.MetaData()
users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("roles", sa.String(200), nullable=False, server_default=""),
    sa.Column("created_at", Timestamp, nullable=False),
)

REFRESH_DAYS = 14
# What the accounts accept as an address, also stated in the OpenAPI schema.
# ASCII dot-atom name (at most 64 characters) @ a domain with a letter TLD: anything
# it matches is an address by any checker's reading of format "email".
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
EMAIL_PATTERN = (rf"^(?=[^@]{{1,64}}@){_ATOM}(\.{_ATOM})*"
                 r"@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}" + END)
_EMAIL = re.compile(EMAIL_PATTERN)
Email = Annotated[str, msgspec.Meta(min_length=3, max_length=320, pattern=EMAIL_PATTERN,
                                    extra_json_schema={"format": "email"})]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=256)]
LoginPassword = Annotated[str, msgspec.Meta(max_length=256)]


class User(msgspec.Struct):
    id: str
    email: str
    roles: list[str]
    created_at: datetime


class TokenPair(msgspec.Struct):
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"


class LoggedOut(msgspec.Struct):
    logged_out: bool


class Registration(msgspec.Struct):
    """What register answers, the same for a new and a taken email."""

    accepted: bool
    message: str


REGISTERED = Registration(
    accepted=True,
    message="If this email can be used, its account is ready: log in with it and the password "
            "you chose.  An email that already has an account keeps its old password.")


class EmailTaken(Conflict):
    """An account with this email exists."""


class InvalidCredentials(Unauthorized):
    """Wrong email or password, or a refresh token that is not valid."""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _user(row: sa.Row[tuple[str, str, str, str, datetime]]) -> User:
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return User(id=row.id, email=row.email, roles=[r for r in row.roles.split(",") if r],
                created_at=created)


def _normal_email(email: str) -> str:
    email = email.strip().lower()
    if not _EMAIL.match(email):
        raise Invalid("email is not a valid address",
                      details=[{"path": "$.email", "reason": "expected name@domain"}])
    return email


class Accounts(Service):
    db: Database
    cache: Cache
    tokens: Tokens
    migrations = "migrations/accounts"
    publishes = (UserRegistered,)

    async def start(self) -> None:
        self.sessions: SessionStore = session_store(self.db, self.cache)
        self.throttle = LoginThrottle(self.cache)
        # Unknown emails still pay for one hash check: login time does not
        # tell an attacker which emails have accounts.
        self._dummy_hash = await hash_password(secrets.token_urlsafe(16))
        email, password = os.environ.get("SHOP_ADMIN_EMAIL"), os.environ.get("SHOP_ADMIN_PASSWORD")
        if email and password:
            await self._ensure_admin(email, password)

    async def _ensure_admin(self, email: str, password: str) -> None:
        email = _normal_email(email)
        if await self.db.fetchone(sa.select(users.c.id).where(users.c.email == email)):
            return
        try:
            await self._create(email, password, roles="admin")
            log.info("created admin account %s (from SHOP_ADMIN_EMAIL)", email)
        except EmailTaken:
            pass  # another replica created it at the same moment

    async def _create(self, email: str, password: str, roles: str = "") -> User:
        uid = "u_" + secrets.token_hex(8)
        now = datetime.now(UTC)
        pw_hash = await hash_password(password)
        try:
            async with self.db.transaction() as conn:  # the account and its event, or neither
                await conn.execute(users.insert().values(
                    id=uid, email=email, password_hash=pw_hash, roles=roles, created_at=now))
                await self.publish(UserRegistered(user_id=uid, email=email))
        except sa.exc.IntegrityError:
            raise EmailTaken(f"an account with email {email} exists") from None
        return User(id=uid, email=email, roles=[r for r in roles.split(",") if r], created_at=now)

    @post("/api/auth/register", status=202, tags=("accounts",))
    async def register(self, email: Email, password: Password) -> Registration:
        """Create an account.  Passwords need at least 8 characters.  The answer is
        the same 202 whether the email is new or already has an account (whose
        password does not change), and takes as long: one password hash each."""
        with contextlib.suppress(EmailTaken):
            await self._create(_normal_email(email), password)
        return REGISTERED

    @post("/api/auth/login", tags=("accounts",))
    async def login(self, email: Email, password: LoginPassword) -> TokenPair:
        """Exchange email and password for an access token and a refresh token.
        After 5 failures in a row an account answers 429 with ``Retry-After``
        for 2, 4, 8, ... seconds, up to 15 minutes."""
        email = email.strip().lower()
        row = await self._check_password(email, password)
        return await self._new_session(row.id, row.roles)

    async def _check_password(self, email: str, password: str) -> sa.Row[Any]:
        """The user's row when ``password`` is theirs; throttled per email, known
        or not, and an unknown email pays for one hash too (no enumeration by
        answer or by time)."""
        await self.throttle.check(email)
        row = await self.db.fetchone(sa.select(users).where(users.c.email == email))
        ok = await verify_password(row.password_hash if row else self._dummy_hash, password)
        if row is None or not ok:
            await self.throttle.failed(email)
            raise InvalidCredentials("invalid email or password")
        await self.throttle.succeeded(email)
        return row

    async def _new_session(self, uid: str, roles: str) -> TokenPair:
        sid = secrets.token_hex(16)
        secret = secrets.token_urlsafe(32)
        await self.sessions.create(Session(sid=sid, user_id=uid, generation=1,
                                           refresh_hash=_hash(secret), revoked=False,
                                           expires_at=expiry(REFRESH_DAYS)))
        return self._pair(uid, roles, sid, 1, secret)

    async def _end_session(self, sid: str) -> None:
        """The refresh token first (so no new access token can be minted), then
        every access token of the session, at every gateway."""
        await self.sessions.revoke(sid)
        await self.tokens.revoke_session(sid)

    def _pair(self, uid: str, roles: str, sid: str, generation: int, secret: str) -> TokenPair:
        access, expires_in = self.tokens.issue_access(
            uid, roles=tuple(r for r in roles.split(",") if r), session=sid)
        return TokenPair(access_token=access, refresh_token=f"{sid}.{generation}.{secret}",
                         expires_in=expires_in)

    @post("/api/auth/refresh", tags=("accounts",))
    async def refresh(self, refresh_token: Annotated[str, msgspec.Meta(max_length=512, pattern=NO_NUL)]
                      ) -> TokenPair:
        """Trade a refresh token for a new pair; the old refresh token stops working."""
        sid, _, rest = refresh_token.partition(".")
        gen_text, _, secret = rest.partition(".")
        if not (sid and gen_text.isdigit() and secret):
            raise InvalidCredentials("invalid refresh token")
        generation = int(gen_text)
        s = await self.sessions.get(sid)
        if s is None or s.revoked or s.expires_at < datetime.now(UTC).timestamp():
            raise InvalidCredentials("invalid refresh token")
        if generation < s.generation:
            # An old token again: whoever holds the family now is not to be
            # trusted, so nobody keeps it.
            await self._end_session(sid)
            log.warning("refresh token reuse for session %s of user %s: session revoked",
                        sid, s.user_id)
            raise InvalidCredentials("invalid refresh token")
        if generation != s.generation or not hmac.compare_digest(_hash(secret), s.refresh_hash):
            raise InvalidCredentials("invalid refresh token")
        new_secret = secrets.token_urlsafe(32)
        if not await self.sessions.rotate(sid, generation, _hash(new_secret)):
            await self._end_session(sid)  # the same token raced itself: a replay
            raise InvalidCredentials("invalid refresh token")
        row = await self.db.fetchone(sa.select(users.c.roles).where(users.c.id == s.user_id))
        if row is None:
            raise InvalidCredentials("invalid refresh token")
        return self._pair(s.user_id, row.roles, sid, generation + 1, new_secret)

    @post("/api/auth/logout", tags=("accounts",))
    async def logout(self, principal: Principal) -> LoggedOut:
        """End the session: its refresh token stops working at once, and its access
        tokens on every route of every gateway within ``session_recheck`` (2 s)."""
        if principal.session:
            await self._end_session(principal.session)
        return LoggedOut(logged_out=True)

    @post("/api/auth/password", tags=("accounts",))
    async def change_password(self, principal: Principal, current_password: LoginPassword,
                              new_password: Password) -> TokenPair:
        """Change your password: every session of the account ends (this one too),
        and the answer is a fresh pair for a new session."""
        row = await self.db.fetchone(sa.select(users).where(users.c.id == principal.subject))
        if row is None:
            raise Unauthorized("invalid or expired token")
        await self._check_password(row.email, current_password)
        new_hash = await hash_password(new_password)
        await self.db.execute(users.update().where(users.c.id == row.id).values(
            password_hash=new_hash))
        for sid in await self.sessions.sessions_of(row.id):
            await self._end_session(sid)
        if principal.session:
            await self._end_session(principal.session)
        log.info("password changed for user %s: its sessions ended", row.id)
        return await self._new_session(row.id, row.roles)

    @get("/api/auth/me", tags=("accounts",))
    async def me(self, principal: Principal) -> User:
        """The account behind the access token (401 once its session is logged out)."""
        if principal.session:
            s = await self.sessions.get(principal.session)
            if s is None or s.revoked:
                raise Unauthorized("invalid or expired token")
        row = await self.db.fetchone(sa.select(users).where(users.c.id == principal.subject))
        if row is None:
            raise Unauthorized("invalid or expired token")
        return _user(row)
