"""A tiny app for the edge's auth features: Principal and Header parameters,
a principal passed on to another service, and the Tokens resource."""

from __future__ import annotations

from typing import Annotated

import msgspec

from amoeba import App, Forbidden, Header, Principal, Service, Tokens, get, post


class Me(msgspec.Struct):
    subject: str
    roles: list[str]
    session: str | None
    seen_by: str


class Order(msgspec.Struct):
    qty: int
    owner: str
    idempotency_key: str | None
    attempt: int


class Profiles(Service):
    async def describe(self, who: Principal, via: str) -> Me:
        """Called over RPC in the processes mode: the Principal is an argument."""
        return Me(who.subject, list(who.roles), who.session, f"profiles via {via}")


class Front(Service):
    profiles: Profiles

    @get("/api/me")
    async def me(self, me: Principal) -> Me:
        return await self.profiles.describe(me, "front")

    @get("/api/hello")
    async def hello(self, me: Principal | None) -> dict[str, str]:
        return {"hello": me.subject if me else "anonymous"}

    @post("/api/orders", status=201)
    async def order(self, qty: int, me: Principal,
                    key: Annotated[str | None, Header("Idempotency-Key")] = None,
                    attempt: Annotated[int, Header("X-Attempt")] = 1) -> Order:
        return Order(qty, me.subject, key, attempt)

    @get("/api/admin")
    async def admin(self, me: Principal) -> dict[str, bool]:
        if not me.has_role("admin"):
            raise Forbidden("admins only")
        return {"admin": True}

    @get("/api/open")
    async def open(self) -> dict[str, bool]:
        return {"open": True}


class Accounts(Service):
    tokens: Tokens

    @post("/api/login")
    async def login(self, subject: str, roles: list[str] = []) -> dict[str, str | int]:  # noqa: B006
        token, expires_in = self.tokens.issue_access(subject, roles=roles, session="s-1")
        return {"access_token": token, "expires_in": expires_in}


app = App("authapp", [Profiles, Front, Accounts])
