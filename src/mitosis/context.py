"""Per-call context that travels with every call: deadline, trace, request id.

Held in ContextVars, so each request's task sees its own values and a remote
call reads them without any parameter threading.  Deadlines are absolute
``loop.time()`` values inside a process and *remaining seconds* on the wire
(clocks of two hosts need not agree).
"""

from __future__ import annotations

import random
from contextvars import ContextVar

__all__ = ["deadline", "new_traceparent", "request_id", "service", "trace_id", "traceparent"]

#: Absolute deadline (event-loop clock) of the call being served, or None.
deadline: ContextVar[float | None] = ContextVar("mitosis.deadline", default=None)
#: W3C traceparent of the call being served ("00-<trace>-<span>-01"), or "".
traceparent: ContextVar[str] = ContextVar("mitosis.traceparent", default="")
#: Request id assigned at the edge, or "".
request_id: ContextVar[str] = ContextVar("mitosis.request_id", default="")
#: The service whose method the request, remote call or event entered, or "".
service: ContextVar[str] = ContextVar("mitosis.service", default="")


_bits = random.Random().getrandbits


def new_traceparent(parent: str = "") -> str:
    """A child span of ``parent`` (same trace id), or a new trace when there is none
    or it is malformed."""
    # Ids need to be unique, not secret: a PRNG, not a getrandom() syscall per id;
    # one draw and bytes.hex(), because format(n, "016x") costs several times more
    # (this runs once per request at the edge and once per remote call).
    if len(parent) == 55 and parent[2] == "-" and parent[35] == "-":
        return parent[:36] + _bits(64).to_bytes(8, "little").hex() + parent[52:]
    ids = _bits(192).to_bytes(24, "little").hex()
    return "00-" + ids[:32] + "-" + ids[32:] + "-01"


def trace_id() -> str:
    tp = traceparent.get()
    return tp[3:35] if tp else ""
