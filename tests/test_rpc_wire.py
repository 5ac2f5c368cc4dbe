"""RPC framing at its edges, over real sockets: frames split anywhere, frames
too large, malformed hello and call frames, unknown methods, bad arguments,
and a server whose replies cannot be decoded; and how frames written in one
turn of the loop are gathered into one write."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import pytest
from test_remote import split, start

from amoeba import Unavailable
from amoeba.runtime.host import Host
from amoeba.testing import free_port
from amoeba.transport.credential import TokenSigner
from amoeba.transport.wire import MAGIC, MAX_FRAME, Outbox, frame

SECRET = "test-secret"


@pytest.fixture
async def store(monkeypatch, tmp_path) -> AsyncIterator[tuple[Host, int]]:
    monkeypatch.setenv("AMOEBA_SECRET", SECRET)
    port = free_port()
    host = await start(split([port]), "store", tmp_path)
    try:
        yield host, port
    finally:
        await host.stop()


class Peer:
    """A raw RPC client: bytes in, frames out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, *, hello: bytes | None = None) -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        peer = cls(reader, writer)
        if hello is None:
            token = TokenSigner(SECRET.encode()).issue("store", "front")
            hello = frame(msgspec.msgpack.encode((token, "front")))
        writer.write(MAGIC + hello)
        return peer

    async def reply(self) -> tuple[int, bool, object]:
        size = int.from_bytes(await asyncio.wait_for(self.reader.readexactly(4), 10), "big")
        body = await asyncio.wait_for(self.reader.readexactly(size), 10)
        rid, ok, value = msgspec.msgpack.decode(body)
        return rid, ok, value

    async def closed(self) -> bool:
        """True when the server closed the connection (EOF) within 10 s."""
        try:
            return await asyncio.wait_for(self.reader.read(), 10) == b""
        except ConnectionResetError:
            return True

    def call(self, cid: int, method: str, args: list[object]) -> bytes:
        return frame(msgspec.msgpack.encode(
            (cid, method, 5.0, "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "front",
             msgspec.Raw(msgspec.msgpack.encode(args)))))

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def authed(port: int) -> Peer:
    peer = await Peer.open(port)
    assert await peer.reply() == (0, True, "ok")
    return peer


async def test_a_call_split_into_single_bytes_is_served(store):
    _, port = store
    peer = await authed(port)
    try:
        data = peer.call(7, "store.echo_int", [41])
        for i in range(len(data)):
            peer.writer.write(data[i:i + 1])
            await peer.writer.drain()
            await asyncio.sleep(0)
        assert await peer.reply() == (7, True, 41)
    finally:
        await peer.aclose()


async def test_two_calls_in_one_segment_are_both_answered(store):
    _, port = store
    peer = await authed(port)
    try:
        peer.writer.write(peer.call(1, "store.echo_int", [1]) + peer.call(2, "store.echo_int", [2]))
        got = sorted([await peer.reply(), await peer.reply()])
        assert got == [(1, True, 1), (2, True, 2)]
    finally:
        await peer.aclose()


async def test_an_unknown_method_is_a_not_found_reply(store):
    _, port = store
    peer = await authed(port)
    try:
        peer.writer.write(peer.call(3, "store.nope", []))
        rid, ok, err = await peer.reply()
        assert (rid, ok) == (3, False)
        assert isinstance(err, dict) and err["type"] == "NotFound" and "store.nope" in err["message"]
        peer.writer.write(peer.call(4, "store.echo_int", [4]))  # the connection stays usable
        assert await peer.reply() == (4, True, 4)
    finally:
        await peer.aclose()


async def test_arguments_of_the_wrong_type_are_invalid_not_internal(store):
    _, port = store
    peer = await authed(port)
    try:
        peer.writer.write(peer.call(5, "store.echo_int", ["forty-one"]))
        rid, ok, err = await peer.reply()
        assert (rid, ok) == (5, False)
        assert isinstance(err, dict) and err["type"] == "Invalid", err
        peer.writer.write(peer.call(6, "store.echo_int", []))  # too few
        rid, ok, err = await peer.reply()
        assert (rid, ok) == (6, False) and isinstance(err, dict) and err["type"] == "Invalid", err
    finally:
        await peer.aclose()


async def test_a_malformed_call_frame_closes_that_connection_only(store):
    _, port = store
    peer = await authed(port)
    try:
        peer.writer.write(frame(b"\xc1not msgpack"))
        assert await peer.closed()
    finally:
        await peer.aclose()
    again = await authed(port)
    try:
        again.writer.write(again.call(1, "store.echo_int", [9]))
        assert await again.reply() == (1, True, 9)
    finally:
        await again.aclose()


async def test_a_frame_over_the_limit_closes_the_connection(store):
    _, port = store
    peer = await authed(port)
    try:
        peer.writer.write((MAX_FRAME + 1).to_bytes(4, "big") + b"x" * 1024)
        assert await peer.closed()
    finally:
        await peer.aclose()


@pytest.mark.parametrize("hello", [frame(b"\xc1garbage"), frame(msgspec.msgpack.encode(["v1.x", "front"])),
                                   frame(msgspec.msgpack.encode([42, "front"]))],
                         ids=["not-msgpack", "bad-token", "wrong-shape"])
async def test_a_bad_hello_is_refused_and_closed(store, hello):
    _, port = store
    peer = await Peer.open(port, hello=hello)
    try:
        rid, ok, err = await peer.reply()
        assert (rid, ok) == (0, False)
        assert isinstance(err, dict) and err["type"] == "Unauthorized", err
        assert await peer.closed()
    finally:
        await peer.aclose()


async def test_a_call_before_the_hello_is_not_run(store):
    host, port = store
    before = dict(host.instances["store"].__dict__)
    token = TokenSigner(b"someone-else").issue("store", "front")  # a forged credential
    peer = await Peer.open(port, hello=frame(msgspec.msgpack.encode((token, "front"))))
    try:
        peer.writer.write(peer.call(1, "store.echo_int", [1]))
        rid, ok, err = await peer.reply()
        assert (rid, ok) == (0, False) and isinstance(err, dict) and err["type"] == "Unauthorized"
        assert await peer.closed()  # and no reply to the call ever came
    finally:
        await peer.aclose()
    assert host.instances["store"].__dict__ == before


async def test_undecodable_replies_fail_the_call_not_the_caller(monkeypatch, tmp_path):
    """A callee that answers the hello, then garbage: the caller's call fails
    as Unavailable within its deadline, and the caller process keeps serving."""
    monkeypatch.setenv("AMOEBA_SECRET", SECRET)
    port = free_port()

    done = asyncio.Event()
    handlers: set[asyncio.Task[None]] = set()

    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await reader.readexactly(4)  # magic
            size = int.from_bytes(await reader.readexactly(4), "big")
            await reader.readexactly(size)
            writer.write(frame(msgspec.msgpack.encode((0, True, "ok"))))
            await reader.read(4)
            writer.write(frame(b"\xc1\xc1\xc1"))
            await writer.drain()
            await done.wait()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()  # closed here: nothing left for the loop's end to warn about

    server = await asyncio.start_server(liar, "127.0.0.1", port)
    front: Host | None = None
    try:
        front = await start(split([port], deadline=5.0), "front", tmp_path)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Unavailable):
            await front.instances["front"].store.echo_int(1)
        assert loop.time() - started < 5.0
        assert front.instances["front"].name == "front"
    finally:
        if front is not None:
            await front.stop()
        done.set()
        server.close()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


class Recorder:
    """A transport that keeps each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_frames_of_one_turn_leave_in_one_write_after_the_first():
    t = Recorder()
    out = Outbox(t)  # type: ignore[arg-type]
    for i in range(5):
        out.write(bytes([i]))
    assert t.writes == [b"\x00"]  # the first at once: a lone call waits for nothing
    await asyncio.sleep(0)
    assert t.writes == [b"\x00", b"\x01\x02\x03\x04"]  # the rest together, in order
    out.write(b"\x05")  # a new turn: at once again
    out.write(b"\x06")
    assert t.writes[2:] == [b"\x05"]
    await asyncio.sleep(0)
    assert t.writes[2:] == [b"\x05", b"\x06"]
    await asyncio.sleep(0)
    assert len(t.writes) == 4  # nothing gathered: no empty write


async def test_closing_writes_what_was_gathered_then_closes():
    t = Recorder()
    out = Outbox(t)  # type: ignore[arg-type]
    out.write(b"a")
    out.write(b"b")
    out.write(b"c")
    out.close()
    assert t.writes == [b"a", b"bc"] and t.closed
    await asyncio.sleep(0)  # the flush already scheduled finds nothing to write
    assert t.writes == [b"a", b"bc"]


async def test_a_lost_connection_drops_what_was_gathered():
    t = Recorder()
    out = Outbox(t)  # type: ignore[arg-type]
    out.write(b"a")
    out.write(b"b")
    out.lost()
    await asyncio.sleep(0)
    assert t.writes == [b"a"]
    out.write(b"c")  # a late reply on a lost connection goes nowhere
    await asyncio.sleep(0)
    assert t.writes == [b"a"]
