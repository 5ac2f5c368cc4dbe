"""Remote call behaviour over real sockets: two hosts in this event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from demo.app import app
from waiting import checked, eventually

from amoeba import DeadlineExceeded, Unauthorized, Unavailable, context
from amoeba.runtime.host import Host
from amoeba.testing import free_port
from amoeba.topology import Listener, Process, Settings, Topology, bind
from amoeba.transport.credential import TokenSigner


def split(store_ports: list[int], *, replicas: int = 1, private: bool = True,
          **settings: float) -> Topology:
    store = Process("store", ("store",), replicas,
                    (Listener(store_ports[0], "127.0.0.1", not private, None, "l0"),),
                    private, None, {})
    front = Process("front", ("front",), 1,
                    (Listener(free_port(), "127.0.0.1", True, None, "l1"),), False, None, {})
    s = Settings(**settings)  # type: ignore[arg-type]
    return bind(Topology("split", "<test>", None, (), {"store": store, "front": front}, {}, s), app)


def two_free_ports() -> int:
    """A free port whose successor is free too (two replicas on one host)."""
    import socket

    base = free_port()
    while True:
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", base + 1))
            return base
        except OSError:
            base = free_port()


@pytest.fixture
def secret(monkeypatch, tmp_path):
    monkeypatch.setenv("AMOEBA_SECRET", "test-secret")
    return tmp_path


async def start(topo: Topology, process: str, data: Path, replica: int = 0) -> Host:
    h = Host(app, topo, process, replica, data=data)
    await h.start()
    return h


async def test_unreachable_callee_names_service_method_and_address(secret):
    port = free_port()
    front = await start(split([port]), "front", secret)
    try:
        with pytest.raises(Unavailable) as info:
            await front.instances["front"].store.echo_int(1)
        msg = str(info.value)
        assert "store.echo_int" in msg and f"127.0.0.1:{port}" in msg and "'store'" in msg
        ok, checks = await front.readiness()
        assert not ok and checks["store"] == "unreachable"
    finally:
        await front.stop()


async def test_deadline_is_enforced_and_shrinks(secret):
    port = free_port()
    # Budgets of seconds, not tenths: a loaded machine's round trip must fit in them.
    topo = split([port], deadline=1.5)
    store = await start(topo, "store", secret)
    front = await start(topo, "front", secret)
    try:
        with pytest.raises(DeadlineExceeded):
            await front.instances["front"].store.slow(5.0)
        assert await front.instances["front"].store.slow(0.01) == 0.01
        # A caller with 1 s left hands the callee less than that.
        loop = asyncio.get_running_loop()
        context.deadline.set(loop.time() + 1.0)
        info = await front.instances["front"].store.info()
        assert info.remaining is not None and 0 < info.remaining < 1.0
        context.deadline.set(loop.time() - 1)
        with pytest.raises(DeadlineExceeded, match="before calling"):
            await front.instances["front"].store.echo_int(1)
        context.deadline.set(None)
    finally:
        await front.stop()
        await store.stop()


async def test_replicas_share_load_failing_one_is_ejected_and_probed_back(secret):
    base = two_free_ports()
    topo = split([base], replicas=2, eject_for=0.2)
    r0 = await start(topo, "store", secret, 0)
    r1 = await start(topo, "store", secret, 1)
    front = await start(topo, "front", secret)
    stub = front.instances["front"].store
    try:
        for _ in range(20):
            await stub.counted()
        assert r0.instances["store"].calls > 0 and r1.instances["store"].calls > 0
        await r1.stop()  # replica 1 goes away
        await asyncio.sleep(0.05)
        before = r0.instances["store"].calls
        for _ in range(20):
            await stub.echo_int(1)  # not idempotent: must never hit the dead replica
            await stub.counted()
        assert r0.instances["store"].calls == before + 20
        r1 = await start(topo, "store", secret, 1)  # back on the same port
        for _ in range(100):
            await asyncio.sleep(0.05)
            if any(r.index == 1 and r.conns for r in front.clients["store"].replicas):
                break
        for _ in range(20):
            await stub.counted()
        assert r1.instances["store"].calls > 0, "replica 1 was not taken back into rotation"
    finally:
        await front.stop()
        await r0.stop()
        await r1.stop()


async def test_lost_connection_retries_only_idempotent_methods(secret):
    port = free_port()
    topo = split([port])
    store = await start(topo, "store", secret)
    front = await start(topo, "front", secret)
    stub = front.instances["front"].store
    try:
        await stub.echo_int(1)
        # The callee dies mid-call: a non-idempotent call is not retried.
        task = asyncio.ensure_future(stub.slow(5.0))
        await eventually(checked(lambda: store.inflight >= 1), 30, "the call running in the callee",
                         every=0.01)
        for conn in list(store.connections):
            if conn.transport is not None:
                conn.transport.abort()
        with pytest.raises(Unavailable, match="not idempotent"):
            await task
        # The same loss during an idempotent call: sent again, and it succeeds.
        task = asyncio.ensure_future(stub.slow_lookup(0.3))
        callee = store.instances["store"]
        await eventually(checked(lambda: callee.calls >= 1), 30, "the lookup running in the callee",
                         every=0.01)
        for conn in list(store.connections):
            if conn.transport is not None:
                conn.transport.abort()
        assert await task == 2  # ran twice: once cut off, once answered
    finally:
        await front.stop()
        await store.stop()


async def test_private_listener_refuses_bad_credentials(secret, monkeypatch):
    import httpx

    port = free_port()
    topo = split([port])
    store = await start(topo, "store", secret)
    try:
        async with httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{port}/store/items/0"
            r = await http.get(url)
            assert r.status_code == 401
            assert r.json()["error"]["type"] == "Unauthorized"
            wrong = TokenSigner(b"another-secret").issue("store", "intruder")
            assert (await http.get(url, headers={"x-amoeba-token": wrong})).status_code == 401
            other = TokenSigner(b"test-secret").issue("front", "x")  # valid, wrong audience
            assert (await http.get(url, headers={"x-amoeba-token": other})).status_code == 401
            good = TokenSigner(b"test-secret").issue("store", "ops")
            assert (await http.get(url, headers={"x-amoeba-token": good})).status_code == 200
            assert (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        # An RPC caller with the wrong secret is refused at the handshake.
        monkeypatch.setenv("AMOEBA_SECRET", "wrong")
        front = await start(topo, "front", secret)
        try:
            with pytest.raises(Unavailable, match="same AMOEBA_SECRET"):
                await front.instances["front"].store.echo_int(1)
        finally:
            await front.stop()
    finally:
        await store.stop()


def test_tokens_expire():
    s = TokenSigner(b"k")
    tok = s.issue("a", "b", ttl=-1)
    with pytest.raises(Unauthorized, match="expired"):
        s.verify(tok, "a")
    assert s.verify(s.issue("a", "b"), "a") == "b"


async def test_draining_answers_readyz_503_while_still_serving(secret):
    import httpx

    port = free_port()
    # drain_delay: long enough for the two requests below on a loaded machine.
    topo = split([port], private=False, drain_delay=3.0)
    store = await start(topo, "store", secret)
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
        drain = asyncio.ensure_future(store.drain())
        await eventually(checked(lambda: store.draining), 30, "the host draining", every=0.01)
        r = await http.get(f"http://127.0.0.1:{port}/readyz")
        assert r.status_code == 503 and r.json()["status"] == "draining"
        assert (await http.get(f"http://127.0.0.1:{port}/store/items/0")).status_code == 200
        await drain
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{port}/readyz")


async def test_port_in_use_is_a_clear_error(secret):
    import socket

    from amoeba.runtime.host import ListenError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ListenError, match=rf"listener l0: 127.0.0.1:{port} is already in use"):
            await start(split([port]), "store", secret)


async def test_pipelined_requests_are_answered_in_order(secret):
    port = free_port()
    store = await start(split([port], private=False), "store", secret)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 100  # more than the pipelining window: reading pauses and resumes
        def req(i: int) -> bytes:
            body = f'{{"x": {i}, "y": 0}}'.encode()
            return (f"POST /store/items HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\n\r\n").encode() + body

        writer.write(b"".join(req(i) for i in range(n)))
        await writer.drain()
        seen = []
        for _ in range(n):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            seen.append(await reader.readexactly(length))
        import json

        assert [json.loads(b)["x"] for b in seen] == list(range(n))
        writer.close()
    finally:
        await store.stop()
