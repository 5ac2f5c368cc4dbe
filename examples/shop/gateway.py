"""Gateway: the shop's public front door.

The edge of the process that hosts this service serves every public route of
the shop (``routes:`` on its listener in the topology): a direct call when
the owning service runs in the same process, an RPC otherwise.  The edge
verifies the access JWT once, rate-limits per user and per IP, caps body
sizes, answers CORS and writes the access log, all configured in the
topology's ``settings``.  What lives here is the shop's own front page.
"""

from __future__ import annotations

import msgspec

from amoeba import Principal, Service, get


class Link(msgspec.Struct):
    method: str
    path: str
    what: str


class Index(msgspec.Struct):
    shop: str
    you: str | None
    links: list[Link]


LINKS = [
    Link("POST", "/api/auth/register", "create an account: {email, password} (202 either way)"),
    Link("POST", "/api/auth/login", "log in: {email, password} -> access and refresh tokens"),
    Link("POST", "/api/auth/refresh", "new tokens: {refresh_token}"),
    Link("POST", "/api/auth/logout", "end the session (Authorization: Bearer)"),
    Link("POST", "/api/auth/password", "change password: {current_password, new_password}; "
                                       "ends every session"),
    Link("GET", "/api/auth/me", "your account"),
    Link("GET", "/api/products", "products, ?page=&per_page="),
    Link("GET", "/api/products/{id}", "one product"),
    Link("POST", "/api/orders", "order: {items: [{product_id, qty}]} or {product_ids: [...]}"),
    Link("GET", "/api/orders", "your orders"),
    Link("GET", "/api/orders/{id}", "one of your orders"),
    Link("GET", "/docs", "interactive API documentation"),
]


class Gateway(Service):
    @get("/api", tags=("shop",))
    async def index(self, principal: Principal | None = None) -> Index:
        """What the shop offers, and who you are to it."""
        return Index(shop="amoeba shop", you=principal.subject if principal else None, links=LINKS)
