"""The RPC handshake before authentication, over raw sockets: a small bounded
hello, checked before anything else is buffered, within a timeout; and forged
credentials (non-ASCII, malformed) refused as 401, never a 500."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import threading
import time
from pathlib import Path

import msgspec
import pytest
from listener import ROOT, ServerProcess, closed_by_server, exchange, parse_answers
from test_remote import split, start

from amoeba.testing import free_port
from amoeba.transport.credential import TokenSigner
from amoeba.transport.wire import MAGIC, frame

MiB = 1 << 20


@pytest.fixture
def secret(monkeypatch, tmp_path):
    monkeypatch.setenv("AMOEBA_SECRET", "test-secret")
    return tmp_path


def _hello(token: str) -> bytes:
    return frame(msgspec.msgpack.encode([token, "front"]))


async def _reply(reader: asyncio.StreamReader) -> list[object]:
    size = int.from_bytes(await asyncio.wait_for(reader.readexactly(4), 5), "big")
    reply: list[object] = msgspec.msgpack.decode(await reader.readexactly(size))
    return reply


async def test_an_oversized_first_frame_is_refused_before_it_is_read(secret):
    port = free_port()
    store = await start(split([port]), "store", secret)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(MAGIC + (64 * MiB).to_bytes(4, "big") + b"x" * 1000)
        assert await closed_by_server(reader, within=30) == b""
        writer.close()
    finally:
        await store.stop()


async def test_no_hello_within_the_header_timeout_is_closed(secret):
    port = free_port()
    store = await start(split([port], header_timeout=0.5), "store", secret)
    try:
        started = time.monotonic()  # before the connection: the timeout counts from it
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(MAGIC + (100).to_bytes(4, "big") + b"partial")
        await closed_by_server(reader, within=30)
        # At the timeout (a sweep a fraction of it late), never before; generous above.
        assert 0.5 <= time.monotonic() - started < 10
        writer.close()
    finally:
        await store.stop()


async def test_nothing_but_the_hello_before_it_is_answered(secret):
    port = free_port()
    store = await start(split([port]), "store", secret)
    try:
        token = TokenSigner(b"test-secret").issue("store", "front")
        call = frame(msgspec.msgpack.encode([1, "store.echo_int", 5.0, "", "front", [1]]))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(MAGIC + _hello(token) + call)
        _, ok, _ = await _reply(reader)
        assert ok is False
        await closed_by_server(reader, within=30)
        writer.close()
        # The same hello alone is accepted, and then calls are.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(MAGIC + _hello(token))
        assert await _reply(reader) == [0, True, "ok"]
        writer.write(call)
        assert await _reply(reader) == [1, True, 1]
        writer.close()
    finally:
        await store.stop()


def _signed(body: str) -> str:
    """Signed with the right secret: only what is inside is wrong."""
    return f"{body}.{hmac.new(b'test-secret', body.encode(), hashlib.sha256).hexdigest()}"


@pytest.mark.parametrize("token", [
    "v1.store.front.9999999999.é" + "0" * 63,  # non-ASCII signature
    _signed("v1.store.front.x9"),  # expiry not a number
    _signed("v1.store.front.²³"),  # digits, but not ASCII ones
    "v1.störe.front.9999999999.abc",
])
async def test_forged_credentials_are_401_over_http_and_refused_over_rpc(secret, token):
    port = free_port()
    store = await start(split([port]), "store", secret)
    try:
        head = (f"GET /store/items/0 HTTP/1.1\r\nhost: t\r\nx-amoeba-token: {token}\r\n"
                "connection: close\r\n\r\n").encode()
        (a,) = parse_answers(await exchange(port, head))
        assert a.status == 401, a
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(MAGIC + _hello(token))
        _, ok, err = await _reply(reader)
        assert ok is False and err["type"] == "Unauthorized"  # type: ignore[index]
        writer.close()
    finally:
        await store.stop()


def test_unauthenticated_rpc_peers_cannot_take_memory(tmp_path: Path):
    srv = ServerProcess(tmp_path, "tickets.app:app", ROOT / "examples", {})
    try:
        before = srv.settled_rss()

        def flood() -> None:
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.settimeout(2)
            try:
                s.sendall(MAGIC + (60 * MiB).to_bytes(4, "big"))
                chunk = b"x" * 65536
                for _ in range(16 * 16):  # 16 MiB, the frame never completes
                    s.sendall(chunk)
            except OSError:
                pass  # closed by the server: what should happen
            finally:
                s.close()

        threads = [threading.Thread(target=flood) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        grown = srv.settled_rss() - before
        print(f"server RSS grew {grown / MiB:.1f} MiB")
        assert grown < 16 * MiB, f"server grew {grown / MiB:.0f} MiB"
    finally:
        srv.stop()
