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

import msgspec

__all__ = ["MAGIC", "MAX_HELLO", "Call", "Hello", "Reply", "frames", "hello_frame"]

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
