"""Per-call context that travels with every call: deadline, trace, request id.

Held in ContextVars, so each request's task sees its own values and a remote
call reads them without any parameter threading.  Deadlines are absolute
``loop.time()`` values inside a process and *remaining seconds* on the wire
(clocks of two hosts need not agree).
"""

from __future__ import annotations

import itertools
import random
from contextvars import ContextVar

__all__ = ["current_traceparent", "deadline", "new_traceparent", "request_id", "service",
           "start_trace", "trace_id", "trace_seq", "traceparent"]

#: Absolute deadline (event-loop clock) of the call being served, or None.
deadline: ContextVar[float | None] = ContextVar("amoeba.deadline", default=None)
#: W3C traceparent of the call being served ("00-<trace>-<span>-01"), or "" when
#: it is implied by ``trace_seq`` (read it with :func:`current_traceparent`).
traceparent: ContextVar[str] = ContextVar("amoeba.traceparent", default="")
#: A request that came without a traceparent starts a trace; the edge only
#: numbers it (a ContextVar set, no formatting), and the ids are written out
#: when something reads them: a remote call, an event, a log line.
trace_seq: ContextVar[int] = ContextVar("amoeba.trace_seq", default=0)
#: Request id assigned at the edge, or "".
request_id: ContextVar[str] = ContextVar("amoeba.request_id", default="")
#: The service whose method the request, remote call or event entered, or "".
service: ContextVar[str] = ContextVar("amoeba.service", default="")


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


_TRACE_PREFIX = f"{_bits(64):016x}"  # this process's half of the trace ids it starts
_SPAN_PREFIX = f"{_bits(32):08x}"
_seqs = itertools.count(1)


def start_trace(incoming: str) -> None:
    """At the edge: continue ``incoming`` (a traceparent header), else start a
    trace, numbered now and formatted only if read."""
    if incoming:
        traceparent.set(new_traceparent(incoming))
    else:
        trace_seq.set(next(_seqs))


def current_traceparent() -> str:
    """The traceparent of the call being served, or ""."""
    tp = traceparent.get()
    if tp:
        return tp
    seq = trace_seq.get()
    if not seq:
        return ""
    # Unique across processes by the random prefixes, within one by the number.
    return f"00-{_TRACE_PREFIX}{seq:016x}-{_SPAN_PREFIX}{seq & 0xFFFFFFFF:08x}-01"


def trace_id() -> str:
    tp = current_traceparent()
    return tp[3:35] if tp else ""
