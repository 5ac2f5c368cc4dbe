"""Server side of RPC: decode a call, run the method, send the reply."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

import msgspec

from amoeba import context
from amoeba.codec import MethodCodec, msgpack_encoder
from amoeba.errors import Internal, NotFound, ServiceError, Unauthorized, Unavailable
from amoeba.transport.wire import (
    MAGIC,
    Outbox,
    call_decoder,
    frame,
    frames,
    hello_decoder,
    hello_frame,
)

if TYPE_CHECKING:
    from amoeba.runtime.host import Host

__all__ = ["MAGIC", "RpcServerProtocol"]

log = logging.getLogger("amoeba.rpc")

GOAWAY = frame(msgpack_encoder.encode((0, True, "goaway")))

Handler = tuple[MethodCodec, Callable[..., Coroutine[Any, Any, Any]], Any]


class RpcServerProtocol(asyncio.Protocol):
    """One accepted RPC connection.  Calls run concurrently, replies go back
    as they finish (those finished in one turn of the loop in one write)."""

    def __init__(self, host: Host, hello_timeout: float = 10.0):
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.outbox: Outbox | None = None
        self.buf = bytearray()
        self.authed = False
        self.peer = "?"
        self.tasks: set[asyncio.Task[None]] = set()
        self.hello_timeout = hello_timeout
        self.deadline = math.inf  # the hello is due by then

    def __repr__(self) -> str:
        return f"<RpcServerProtocol peer={self.peer} {'authenticated' if self.authed else 'hello'}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.outbox = Outbox(self.transport)
        self.host.connections.add(self)
        self.deadline = asyncio.get_running_loop().time() + self.hello_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.host.connections.discard(self)
        self.transport = None
        if self.outbox is not None:
            self.outbox.lost()
            self.outbox = None
        self.buf = bytearray()

    def tick(self, now: float) -> None:
        """The listener's ConnectionTable sweeps: no hello in time, no connection."""
        if now < self.deadline:
            return
        self.deadline = math.inf
        if not self.authed and self.transport is not None:
            log.warning("closing RPC connection: no hello within %gs", self.hello_timeout)
            self.transport.abort()

    def sheddable(self) -> bool:
        return False  # an authenticated peer's calls are never dropped for a newcomer

    def shed(self) -> None:
        self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close_if_idle(self) -> None:
        # A client that was told to go away closes the connection itself once
        # its calls are answered; closing it here could cross a call on the wire.
        if not self.authed and not self.tasks and self.transport is not None:
            self.transport.close()

    def goaway(self) -> None:
        """The host is draining: tell the client to send nothing new here.  The
        connection stays open (and calls the client sent meanwhile still run)
        until the client closes it, or the host stops after its grace."""
        if self.authed and self.outbox is not None:
            self.outbox.write(GOAWAY)  # after the replies already gathered

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.buf += data
        if not self.authed:
            # Before the credential is checked the peer may send the hello and
            # nothing else: a small frame, refused as soon as its length says
            # more (the client waits for the answer before its first call).
            try:
                hello = hello_frame(self.buf)
            except ValueError as exc:
                log.warning("closing RPC connection: %s", exc)
                self.transport.abort()
                return
            if hello is None:
                return
            if not self._hello(hello):
                return
        try:
            chunks = frames(self.buf)
        except ValueError as exc:
            log.warning("closing RPC connection: %s", exc)
            self._close()
            return
        for chunk in chunks:
            try:
                call = call_decoder.decode(chunk)
            except msgspec.DecodeError:
                log.warning("closing RPC connection: malformed call frame")
                self._close()
                return
            task = asyncio.get_running_loop().create_task(self._run(call))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _close(self) -> None:
        """Close after the replies already gathered."""
        if self.outbox is not None:
            self.outbox.close()

    def _hello(self, chunk: bytes) -> bool:
        """Check the hello; True when the peer may call, else the connection closes."""
        assert self.transport is not None
        try:
            hello = hello_decoder.decode(chunk)
            self.peer = self.host.signer.verify(hello.token, self.host.process.name)
        except (msgspec.DecodeError, Unauthorized) as exc:
            err = exc if isinstance(exc, Unauthorized) else Unauthorized("malformed hello")
            self._refuse(err)
            return False
        if self.buf:  # a call before the answer to the hello: not what the client does
            self._refuse(Unauthorized("no call may be sent before the hello is answered"))
            return False
        if self.host.draining:  # refused before any call: the client tries another replica
            self._refuse(Unavailable(f"{self.host.process.name} is draining"))
            return False
        self.authed = True
        self.deadline = math.inf
        self.transport.write(frame(msgpack_encoder.encode((0, True, "ok"))))
        return True

    def _refuse(self, err: ServiceError) -> None:
        assert self.transport is not None
        self.transport.write(frame(msgpack_encoder.encode((0, False, err.to_wire()))))
        self.transport.close()
        self.buf = bytearray()

    async def _run(self, call: Any) -> None:
        host = self.host
        host.inflight += 1
        handler = host.rpc_handlers.get(call.method)
        context.request_id.set(call.request)  # this call's task: its log lines name the request
        try:
            if handler is None:
                raise NotFound(f"{host.process.name} does not serve {call.method!r}")
            codec, fn, served = handler
            context.deadline.set(asyncio.get_running_loop().time() + call.timeout)
            context.service.set(codec.spec.service)
            if host.tracer is not None:
                result = await self._traced(call, codec, fn)
            else:
                context.traceparent.set(call.trace)
                if served is None:
                    result = await fn(*codec.decode_args(call.args))
                else:
                    started = time.perf_counter()
                    try:
                        result = await fn(*codec.decode_args(call.args))
                    finally:
                        served.observe(time.perf_counter() - started)
            body = msgpack_encoder.encode((call.id, True, result))
        except ServiceError as exc:
            body = msgpack_encoder.encode((call.id, False, exc.to_wire()))
        except Exception:
            log.exception("unexpected error in %s (called by %s, trace %s)",
                          call.method, call.caller, call.trace[3:35])
            body = msgpack_encoder.encode((call.id, False, Internal().to_wire()))
        finally:
            host.inflight -= 1
        if self.outbox is not None:
            self.outbox.write(frame(body))

    async def _traced(self, call: Any, codec: MethodCodec, fn: Any) -> Any:
        """Serve a call inside an exported SERVER span (OpenTelemetry configured)."""
        tracer = self.host.tracer
        assert tracer is not None
        span, tp = tracer.start(call.method, call.trace, "server",
                                {"rpc.system": "amoeba", "rpc.method": call.method,
                                 "amoeba.caller": call.caller})
        context.traceparent.set(tp)
        started = time.perf_counter()
        try:
            return await tracer.within(span, fn(*codec.decode_args(call.args)))
        finally:
            handler = self.host.rpc_handlers.get(call.method)
            if handler is not None and handler[2] is not None:
                handler[2].observe(time.perf_counter() - started)
