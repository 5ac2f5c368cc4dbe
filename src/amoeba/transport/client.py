"""Client side of RPC: a pool of multiplexed keep-alive connections to the
replicas of one process.

* Calls rotate over the live connections of every healthy replica.
* A replica whose connection fails is ejected and probed back in the
  background with doubling backoff (``eject_for`` up to 30 s).
* A call that fails *before it was sent* (no connection could be made) is
  tried on the next replica; one that fails after is retried only when the
  method is idempotent.  Otherwise the caller gets ``Unavailable``.
* Every call carries the remaining deadline, the trace and the caller's name.
* A draining replica says *go away* on each connection: no new call goes
  there, the calls already sent are answered, then the connection closes and
  the replica is probed back (a restarted replica rejoins within
  ``eject_for``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, cast

from amoeba import context
from amoeba.codec import MethodCodec, decode_error, msgpack_encoder
from amoeba.errors import DeadlineExceeded, ServiceError, Unavailable
from amoeba.topology.model import Settings
from amoeba.transport.credential import TokenSigner
from amoeba.transport.wire import MAGIC, Outbox, frame, frames, reply_decoder

if TYPE_CHECKING:
    from amoeba.observe.metrics import CallStat
    from amoeba.observe.tracing import Tracer

__all__ = ["ProcessClient"]

log = logging.getLogger("amoeba.client")
MAX_EJECT = 30.0


class _Refused(Exception):
    """The callee refused our credential at the handshake."""


class _Lost(Exception):
    """The connection closed while the call was in flight (it may have run)."""


class _Connection(asyncio.Protocol):
    def __init__(self, replica: _Replica):
        self.replica = replica
        self.transport: asyncio.Transport | None = None
        self.outbox: Outbox | None = None
        self.buf = bytearray()
        self.pending: dict[int, asyncio.Future[tuple[bool, Any]]] = {}
        self.ids = itertools.count(1)
        self.hello: asyncio.Future[tuple[bool, Any]] = asyncio.get_running_loop().create_future()
        self.leaving = False  # the server said go away: close once nothing is pending

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.outbox = Outbox(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for chunk in frames(self.buf):
            reply = reply_decoder.decode(chunk)
            if reply.id == 0:
                if not self.hello.done():
                    self.hello.set_result((reply.ok, reply.body))
                else:
                    self.leaving = True
                    self.replica.goaway(self)
                continue
            fut = self.pending.pop(reply.id, None)
            if fut is not None and not fut.done():
                fut.set_result((reply.ok, reply.body))
        if self.leaving and not self.pending:
            self.close()

    def close(self) -> None:
        """Close after writing the calls gathered this turn."""
        if self.outbox is not None:
            self.outbox.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.outbox is not None:
            self.outbox.lost()
            self.outbox = None
        if not self.hello.done():
            self.hello.set_exception(_Lost())
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(_Lost())
        self.pending.clear()
        self.replica.lost(self)

    def send(self, method: str, timeout: float, trace: str, caller: str,
             args: Any) -> tuple[int, asyncio.Future[tuple[bool, Any]], int]:
        """Write one call (in this turn's write): its id, the future of its
        reply, and its size in bytes."""
        call_id = next(self.ids)
        fut: asyncio.Future[tuple[bool, Any]] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = fut
        assert self.outbox is not None
        data = frame(msgpack_encoder.encode((call_id, method, timeout, trace, caller, args,
                                             context.request_id.get())))
        self.outbox.write(data)
        return call_id, fut, len(data)


class _Deadlines:
    """The deadlines of a pool's calls in flight, behind one timer.

    A timer per call (``loop.call_later`` and its ``cancel``, about 1.8 us on
    uvloop) cost as much as the rest of the caller's side of a call; a heap
    push costs a tenth of it.  An answered call's entry is not looked for (a
    search): it is dropped when it comes to the top, or with the others when
    the answered outnumber the calls in flight.  Expiry is as precise as
    libuv's timers, a millisecond.
    """

    __slots__ = ("at", "heap", "limit", "loop", "seq", "timer")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, asyncio.Future[Any]]] = []
        self.seq = itertools.count()  # ties in time: never compare the futures
        self.limit = 64  # entries before the answered ones are swept out
        self.timer: asyncio.TimerHandle | None = None
        self.at = math.inf  # when the timer fires
        self.loop: asyncio.AbstractEventLoop | None = None

    def add(self, loop: asyncio.AbstractEventLoop, when: float,
            fut: asyncio.Future[Any]) -> None:
        """``fut`` fails with ``TimeoutError`` at ``when`` unless done by then."""
        heap = self.heap
        heapq.heappush(heap, (when, next(self.seq), fut))
        if when < self.at:
            self.loop = loop
            self._arm(when)
        if len(heap) > self.limit:
            heap[:] = [e for e in heap if not e[2].done()]
            heapq.heapify(heap)
            self.limit = 64 + 2 * len(heap)

    def _arm(self, when: float) -> None:
        assert self.loop is not None
        if self.timer is not None:
            self.timer.cancel()
        self.at = when
        self.timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self.timer = None
        self.at = math.inf
        assert self.loop is not None
        due = self.loop.time() + 0.001  # libuv's timers fire up to a millisecond early
        heap = self.heap
        while heap and (heap[0][0] <= due or heap[0][2].done()):
            fut = heapq.heappop(heap)[2]
            if not fut.done():
                fut.set_exception(TimeoutError())
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.at = math.inf
        self.heap.clear()


class _Replica:
    def __init__(self, pool: ProcessClient, index: int, host: str, port: int):
        self.pool = pool
        self.index = index
        self.host = host
        self.port = port
        self.conns: list[_Connection] = []
        self.ejected = False
        self.backoff = pool.settings.eject_for
        self.probe: asyncio.TimerHandle | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.last_error = ""
        self.ejections = 0  # times this replica was ejected (a metric)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def connect(self) -> None:
        """Open the configured number of connections; eject on failure."""
        loop = asyncio.get_running_loop()
        want = self.pool.settings.connections - len(self.conns)
        conn: _Connection | None = None
        try:
            for _ in range(want):
                conn = None
                _, new = await asyncio.wait_for(
                    loop.create_connection(lambda: _Connection(self), self.host, self.port),
                    self.pool.settings.connect_timeout,
                )
                conn = new
                assert new.transport is not None
                token = self.pool.signer.issue(self.pool.process, self.pool.caller_process)
                new.transport.write(MAGIC + frame(msgpack_encoder.encode(
                    (token, self.pool.caller_process))))
                ok, body = await asyncio.wait_for(new.hello, self.pool.settings.connect_timeout)
                if not ok:
                    err = decode_error(body)
                    if isinstance(err, Unavailable):  # draining: no call was sent
                        raise _Refused(err.message)
                    raise _Refused(f"{err.message} (do both processes have the same "
                                   f"AMOEBA_SECRET?)")
                self.conns.append(new)
        except (OSError, TimeoutError, _Lost, _Refused) as exc:
            if conn is not None and conn not in self.conns and conn.transport is not None:
                conn.transport.close()
            self.last_error = str(exc) or type(exc).__name__
            self.eject(self.last_error)
            return
        self.ejected = False
        self.backoff = self.pool.settings.eject_for
        self.pool.refresh()

    def lost(self, conn: _Connection) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
            self.pool.refresh()
            if not self.pool.closed and self.probe is None:
                # The peer may be restarting: try again soon, eject if it is gone.
                loop = asyncio.get_running_loop()
                self.probe = loop.call_later(0.05, self._probe)

    def goaway(self, conn: _Connection) -> None:
        """The replica is draining (a restart, a scale-down): stop using it at
        once, without failing what is in flight, and look for it again soon."""
        if conn in self.conns:
            self.conns.remove(conn)
        self.ejected = True
        self.pool.refresh()
        if self.probe is None and not self.pool.closed:
            self.probe = asyncio.get_running_loop().call_later(
                self.pool.settings.eject_for, self._probe)

    def eject(self, why: str) -> None:
        if not self.ejected:
            self.ejections += 1
            log.warning("ejecting %s replica %d at %s: %s", self.pool.process, self.index,
                        self.address, why)
        self.ejected = True
        for c in self.conns:
            c.close()
        self.conns.clear()
        self.pool.refresh()
        if self.probe is None and not self.pool.closed:
            loop = asyncio.get_running_loop()
            self.probe = loop.call_later(self.backoff, self._probe)
            self.backoff = min(self.backoff * 2, MAX_EJECT)

    def _probe(self) -> None:
        self.probe = None
        if self.pool.closed or (self.connecting and not self.connecting.done()):
            return
        self.connecting = asyncio.get_running_loop().create_task(self.connect())


class ProcessClient:
    """Calls into one process of the topology (all of its replicas)."""

    def __init__(self, *, process: str, addresses: list[tuple[str, int]], settings: Settings,
                 signer: TokenSigner, caller_process: str, tracer: Tracer | None = None):
        self.process = process
        self.tracer = tracer
        self.settings = settings
        self.signer = signer
        self.caller_process = caller_process
        self.replicas = [_Replica(self, i, h, p) for i, (h, p) in enumerate(addresses)]
        self.live: list[_Connection] = []
        self.rr = 0
        self.closed = False
        self.deadlines = _Deadlines()
        self._warm: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        addrs = ", ".join(r.address for r in self.replicas)
        return f"<ProcessClient {self.process} [{addrs}] live={len(self.live)}>"

    def refresh(self) -> None:
        self.live = [c for r in self.replicas if not r.ejected for c in r.conns]

    async def connect(self) -> None:
        """Connect to every replica not connected yet (at most once at a time)."""
        if self._warm is None or self._warm.done():
            self._warm = asyncio.get_running_loop().create_task(self._connect_all())
        await asyncio.shield(self._warm)

    async def _connect_all(self) -> None:
        todo = [r.connect() for r in self.replicas if not r.conns]
        if todo:
            await asyncio.gather(*todo)

    async def ready(self) -> bool:
        if not self.live:
            await self.connect()
        return bool(self.live)

    async def aclose(self) -> None:
        self.closed = True
        self.deadlines.close()
        for r in self.replicas:
            if r.probe is not None:
                r.probe.cancel()
            for c in r.conns:
                c.close()
        self.live = []

    def call(self, codec: MethodCodec, caller: str, args: Any,
             stat: CallStat | None = None, pin: int | None = None) -> Coroutine[Any, Any, Any]:
        """Call ``codec``'s method on a replica: the call to await.  ``stat``
        (metrics on): where the call's time, outcome and bytes are counted, in
        the call's own coroutine rather than a wrapper of one more.  ``pin``:
        that replica only (it holds state the call needs, as a forwarded
        stream's parts)."""
        tracer = self.tracer
        parent = context.current_traceparent()
        if tracer is None:
            return self._call(codec, caller, args, stat, context.new_traceparent(parent), pin)
        span, trace = tracer.start(codec.spec.qualname, parent, "client",
                                   {"rpc.system": "amoeba", "rpc.method": codec.spec.qualname,
                                    "server.address": self.process})
        return tracer.within(span, self._call(codec, caller, args, stat, trace, pin))

    async def _call(self, codec: MethodCodec, caller: str, args: Any, stat: CallStat | None,
                    trace: str, pin: int | None = None) -> Any:
        started = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            now = loop.time()
            dl = context.deadline.get()
            timeout = self.settings.deadline if dl is None else min(dl - now, self.settings.deadline)
            method = codec.spec.qualname
            if timeout <= 0:
                raise DeadlineExceeded(f"deadline passed before calling {method}")
            tries = len(self.replicas) + 1
            last = ""
            for _ in range(tries):
                if pin is not None:
                    pinned = self.replicas[pin] if 0 <= pin < len(self.replicas) else None
                    if pinned is None or pinned.ejected or not pinned.conns:
                        raise Unavailable(f"{method}: replica {pin} of {self.process!r}, which this "
                                          f"call must reach, is gone")
                    conn = pinned.conns[self.rr % len(pinned.conns)]
                elif not self.live:
                    await self.connect()
                    if not self.live:
                        last = "; ".join(f"{r.address}: {r.last_error or 'unreachable'}"
                                         for r in self.replicas)
                        break  # before sending: nothing ran, but no replica is reachable
                    conn = self.live[self.rr % len(self.live)]
                else:
                    conn = self.live[self.rr % len(self.live)]
                self.rr += 1
                call_id, fut, size = conn.send(method, timeout, trace, caller, args)
                self.deadlines.add(loop, loop.time() + timeout, fut)
                try:
                    ok, body = await fut
                except _Lost:
                    last = f"connection to {conn.replica.address} lost during the call"
                    if codec.spec.idempotent:
                        continue
                    raise Unavailable(
                        f"{method}: {last}; not retried because {method} is not idempotent "
                        f"(it may or may not have run)") from None
                except TimeoutError:
                    conn.pending.pop(call_id, None)
                    raise DeadlineExceeded(
                        f"{method} at {conn.replica.address} did not answer within {timeout:.3f}s"
                    ) from None
                if stat is not None:
                    stat.sized(size, len(body))
                if ok:
                    result = codec.decode_result(body)
                    if stat is not None:
                        stat.ok.observe(time.perf_counter() - started)
                    return result
                err: ServiceError = decode_error(body)
                raise err
            addrs = ", ".join(r.address for r in self.replicas)
            raise Unavailable(f"{method}: process {self.process!r} at {addrs} cannot be reached ({last})")
        except BaseException:
            if stat is not None:
                stat.err.observe(time.perf_counter() - started)
            raise

