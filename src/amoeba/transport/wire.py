"""RPC framing.  Every frame is a 4-byte big-endian length and a msgpack body.

A connection opens with the magic ``MTS1`` (so one port can serve HTTP and
RPC: the server tells them apart by the first bytes) and a ``Hello`` frame
carrying the internal credential; the server answers one ``Reply`` with
id 0.  Then any number of ``Call`` frames, multiplexed by id, each answered
by one ``Reply`` in any order.

A ``Reply`` with id 0 after the handshake is *go away*: the server is
draining.  The client sends no new call on that connection, waits for the
replies to the calls it already sent (the server keeps answering them), then
closes it.  Calls sent before the client read the go-away still run, so a
draining server never drops a call it was sent.
"""

from __future__ import annotations

import asyncio

import msgspec

__all__ = ["MAGIC", "MAX_HELLO", "Call", "Hello", "Outbox", "Reply", "frames", "hello_frame"]

MAGIC = b"MTS1"
MAX_FRAME = 64 << 20
# The hello: a credential (~120 bytes) and a caller's name.  The only frame a
# peer may send before the credential is checked, so the only memory one
# unauthenticated connection can take.
MAX_HELLO = 1024


class Hello(msgspec.Struct, array_like=True):
    token: str
    caller: str


class Call(msgspec.Struct, array_like=True):
    id: int
    method: str  # "service.method"
    timeout: float  # seconds left until the caller's deadline
    trace: str  # W3C traceparent
    caller: str  # calling service
    args: msgspec.Raw
    # The edge's request id, so the callee's log lines name the request the
    # client was told about ("" outside a request; absent from older callers).
    request: str = ""


class Reply(msgspec.Struct, array_like=True):
    id: int
    ok: bool
    body: msgspec.Raw  # the result, or the error dict when not ok


hello_decoder = msgspec.msgpack.Decoder(Hello)
call_decoder = msgspec.msgpack.Decoder(Call)
reply_decoder = msgspec.msgpack.Decoder(Reply)


def frames(buf: bytearray) -> list[bytes]:
    """Cut every complete frame off the front of ``buf``."""
    out: list[bytes] = []
    pos = 0
    n = len(buf)
    while n - pos >= 4:
        size = int.from_bytes(buf[pos:pos + 4], "big")
        if size > MAX_FRAME:
            raise ValueError(f"frame of {size} bytes exceeds the {MAX_FRAME} byte limit")
        end = pos + 4 + size
        if end > n:
            break
        out.append(bytes(buf[pos + 4:end]))
        pos = end
    if pos:
        del buf[:pos]
    return out


def hello_frame(buf: bytearray) -> bytes | None:
    """The hello cut off the front of ``buf`` once complete, else None;
    ``ValueError`` as soon as its length says it is not a hello."""
    if len(buf) < 4:
        return None
    size = int.from_bytes(buf[:4], "big")
    if size > MAX_HELLO:
        raise ValueError(f"hello frame of {size} bytes exceeds the {MAX_HELLO} byte limit")
    if len(buf) < 4 + size:
        return None
    body = bytes(buf[4:4 + size])
    del buf[:4 + size]
    return body


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


class Outbox:
    """The frames one side writes on a connection, one socket write per turn
    of the event loop.

    Each ``transport.write`` is a ``send()`` system call, the largest single
    cost of a call under load (about 40% of the client's and the server's CPU
    with 32 callers).  Calls and replies come in bursts: the replies read in
    one ``data_received`` wake their callers together, who all send their next
    call in the same turn.  So the first frame of a turn goes out at once (a
    lone call or reply waits for nothing), the others are gathered and leave
    in one write when the loop comes round, in the order they were written.
    """

    __slots__ = ("flushing", "loop", "queued", "transport")

    def __init__(self, transport: asyncio.Transport):
        self.transport: asyncio.Transport | None = transport
        self.loop = asyncio.get_running_loop()
        self.queued: list[bytes] = []
        self.flushing = False  # a flush is scheduled for the end of this turn

    def write(self, data: bytes) -> None:
        if self.flushing:
            self.queued.append(data)
            return
        transport = self.transport
        if transport is not None:
            transport.write(data)
            self.flushing = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what was gathered; the next frame goes out at once again."""
        self.flushing = False
        queued = self.queued
        if not queued:
            return
        self.queued = []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(queued[0] if len(queued) == 1 else b"".join(queued))

    def close(self) -> None:
        """Write what was gathered, then close the transport (which sends
        what it buffered before the FIN)."""
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def lost(self) -> None:
        """The connection is gone: drop what was gathered."""
        self.transport = None
        self.queued = []
