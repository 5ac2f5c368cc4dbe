"""``Principal``: the identity the edge verified for a request.

A method parameter annotated ``Principal`` is filled by the edge from the
request's access token (401 without a valid one); ``Principal | None`` is
``None`` for an anonymous request.  Such a parameter never binds from the
body, query or path.  Between services it travels as an ordinary argument,
so a callee sees the caller's principal in every topology.
"""

from __future__ import annotations

import msgspec

__all__ = ["Principal"]


class Principal(msgspec.Struct, frozen=True):
    subject: str
    roles: tuple[str, ...] = ()
    session: str | None = None
    token_id: str | None = None

    def has_role(self, role: str) -> bool:
        return role in self.roles
