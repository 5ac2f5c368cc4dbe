"""Graceful stop of one process, as a load balancer sees it: SIGTERM flips
``/readyz`` to 503 and answers say ``connection: close`` while the listener
stays open for ``drain_delay``; then new connections are refused; requests
in flight finish; the process exits within its grace.  An RPC caller is told
to go away and loses no call."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
import yaml
from e2e import ROOT, Run
from waiting import checked, eventually

from amoeba.testing import free_port

pytestmark = pytest.mark.e2e

DRAIN_DELAY, GRACE = 1.0, 3.0
# The SIGTERM test looks at the server during its delay: long enough for a loaded
# machine to make those requests inside it.
SIGTERM_DELAY = 3.0


def _topology(tmp_path, port: int, delay: float = DRAIN_DELAY) -> object:
    path = tmp_path / "drain.yaml"
    path.write_text(yaml.safe_dump({
        "name": "drain", "app": "demo.app:app", "pythonpath": str(ROOT / "tests"),
        "settings": {"grace": f"{GRACE}s", "drain_delay": f"{delay}s"},
        "processes": {"main": {"services": "*", "listeners": [{"port": port,
                                                               "host": "127.0.0.1"}]}},
    }))
    return path


def test_sigterm_readyz_503_then_refused_in_flight_finishes_exit_within_grace(tmp_path):
    port = free_port()
    run = Run(_topology(tmp_path, port, SIGTERM_DELAY), {"AMOEBA_DATA_DIR": str(tmp_path)}, [port],
              tmp_path, args=("--process", "main"))
    url = f"http://127.0.0.1:{port}"
    finishing = SIGTERM_DELAY + 1.5  # seconds: ends inside grace, after the listener closed

    async def scenario() -> dict[str, object]:
        seen: dict[str, object] = {}
        async with httpx.AsyncClient(timeout=60) as slow_client, \
                httpx.AsyncClient(timeout=10) as kept, httpx.AsyncClient(timeout=10) as probe:
            assert (await kept.get(url + "/")).status_code == 200  # an idle keep-alive connection
            finishes = asyncio.ensure_future(
                slow_client.post(url + "/store/slow", json={"seconds": finishing}))
            too_long = asyncio.ensure_future(
                slow_client.post(url + "/store/slow", json={"seconds": 60.0}))

            async def both_in_flight() -> bool:  # the stats request counts itself
                stats = (await probe.get(url + "/_amoeba/api/stats")).json()
                return stats["http"]["inflight"] >= 3

            await eventually(both_in_flight, 30, "the two slow requests in flight")
            run.proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()

            async def draining() -> tuple[int, str, str | None] | None:
                async with httpx.AsyncClient(timeout=10) as fresh:  # accepted during drain_delay
                    ready = await fresh.get(url + "/readyz")
                if ready.status_code == 200:
                    return None  # the signal is not handled yet
                return ready.status_code, ready.json()["status"], ready.headers.get("connection")

            seen["readyz"] = await eventually(draining, SIGTERM_DELAY, "/readyz saying draining",
                                              every=0.05)
            again = await kept.get(url + "/")  # the idle keep-alive connection: served, then closed
            seen["keep-alive"] = (again.status_code, again.headers.get("connection"))
            seen["inside the delay"] = time.monotonic() - sent < SIGTERM_DELAY

            async def refused() -> bool:
                try:
                    async with httpx.AsyncClient(timeout=10) as late:
                        await late.get(url + "/healthz")
                except httpx.ConnectError:
                    return True
                return False

            await eventually(refused, SIGTERM_DELAY + 30, "new connections refused", every=0.05)
            seen["refused after"] = time.monotonic() - sent
            r = await finishes
            seen["in flight"] = (r.status_code, r.json())
            try:
                seen["past grace"] = (await too_long).status_code
            except httpx.HTTPError as exc:
                seen["past grace"] = type(exc).__name__
            seen["exit"] = await asyncio.to_thread(run.proc.wait, 30)
            seen["stopped after"] = round(time.monotonic() - sent, 1)
        return seen

    seen = asyncio.run(scenario())
    print(f"\ndrain: {seen}")
    assert seen["readyz"] == (503, "draining", "close")
    assert seen["keep-alive"] == (200, "close")
    assert seen["inside the delay"], "the checks above came after drain_delay: they proved nothing"
    # New connections are refused once drain_delay is over, not before.
    assert seen["refused after"] >= SIGTERM_DELAY - 0.1  # type: ignore[operator]
    assert seen["in flight"] == (200, finishing)
    assert seen["past grace"] == "RemoteProtocolError"  # cut when grace ran out
    assert seen["exit"] == 0
    # Not before drain_delay + grace (the in-flight request had that long); the upper bound
    # is generous: a loaded machine may be slow to reap, never early.
    assert SIGTERM_DELAY + GRACE - 0.5 <= seen["stopped after"] <= SIGTERM_DELAY + GRACE + 8  # type: ignore[operator]
    assert "still running after 3.0s grace" in run.output()


def test_a_draining_replica_loses_no_rpc_call(tmp_path):
    """Calls that are not idempotent (never retried) keep flowing to a process
    of two replicas while one is stopped with SIGTERM: the caller is told to
    go away, gets its calls in flight answered, and uses the other replica."""
    from demo.app import app

    from amoeba.codec import codec_for
    from amoeba.observe.fetch import FetchError, fetch_json
    from amoeba.testing import _free_run
    from amoeba.topology.model import Settings
    from amoeba.transport.client import ProcessClient
    from amoeba.transport.credential import TokenSigner
    from amoeba.transport.stub import remote_stub

    port = _free_run(2)
    secret = "d" * 32
    path = tmp_path / "rpc.yaml"
    path.write_text(yaml.safe_dump({
        "name": "rpc-drain", "app": "demo.app:app", "pythonpath": str(ROOT / "tests"),
        "settings": {"grace": f"{GRACE}s", "drain_delay": f"{DRAIN_DELAY}s"},
        "processes": {"front": {"services": ["front"], "listeners": [{"port": free_port()}]},
                      "store": {"services": ["store"], "replicas": 2, "private": True,
                                "listeners": [{"port": port, "host": "127.0.0.1"}]}},
    }))
    run = Run(path, {"AMOEBA_DATA_DIR": str(tmp_path), "AMOEBA_SECRET": secret},
              [port, port + 1], tmp_path)
    signer = TokenSigner(secret.encode())

    async def scenario() -> dict[str, object]:
        token = {"x-amoeba-token": signer.issue("store", "test")}
        victim = (await fetch_json("127.0.0.1", port, "/", headers=token))["pid"]
        client = ProcessClient(process="store", settings=Settings(), signer=signer,
                               addresses=[("127.0.0.1", port), ("127.0.0.1", port + 1)],
                               caller_process="test")
        spec = app.specs["store"]
        store = remote_stub(spec, {m: codec_for(s) for m, s in spec.methods.items()}, client, "test")
        counts = {"calls": 0, "failed": 0}
        errors: list[str] = []
        stop = asyncio.Event()

        async def caller() -> None:
            while not stop.is_set():
                try:
                    await store.slow(0.05)  # not idempotent: a lost call would be an error
                except Exception as exc:
                    counts["failed"] += 1
                    errors.append(repr(exc))
                counts["calls"] += 1

        try:
            callers = [asyncio.ensure_future(caller()) for _ in range(8)]
            long = asyncio.gather(*(store.slow(1.5) for _ in range(4)))
            await eventually(checked(lambda: counts["calls"] >= 16), 30, "calls flowing")
            os.kill(victim, signal.SIGTERM)

            async def replaced() -> int | None:  # drained, exited, restarted by amoeba run
                try:
                    pid = (await fetch_json("127.0.0.1", port, "/", headers=token))["pid"]
                except FetchError:  # not listening (yet)
                    return None
                return pid if pid != victim else None

            # The calls keep flowing all along: through the drain, the exit and the restart.
            fresh = await eventually(replaced, 60, "replica 0 restarted", every=0.2)
            stop.set()
            await asyncio.gather(*callers)
            await long
        finally:
            await client.aclose()
        return {**counts, "errors": errors[:3], "restarted": fresh != victim}

    try:
        seen = asyncio.run(scenario())
    finally:
        assert run.stop() == 0
    print(f"\nrpc drain: {seen}")
    assert seen["calls"] > 200 and seen["failed"] == 0 and seen["restarted"]


def test_sighup_restarts_every_child_once_and_a_stop_restarts_nothing(tmp_path):
    from amoeba.testing import _free_run

    port, vport = free_port(), _free_run(2)
    path = tmp_path / "roll.yaml"
    path.write_text(yaml.safe_dump({
        "name": "roll", "app": "tickets.app:app", "pythonpath": str(ROOT / "examples"),
        "settings": {"drain_delay": "0.2s"},
        "processes": {"ticket": {"services": ["ticket"], "listeners": [{"port": port}]},
                      "vacancy": {"services": ["vacancy"], "replicas": 2, "private": True,
                                  "listeners": [{"port": vport, "host": "127.0.0.1"}]}},
    }))
    run = Run(path, {"AMOEBA_DATA_DIR": str(tmp_path / "data")}, [port, vport, vport + 1], tmp_path)
    try:
        before = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json()["pid"]
        run.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + 30
        while "rolling restart done" not in run.output():
            assert time.monotonic() < end, run.output()
            time.sleep(0.1)
        after = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json()["pid"]
        r = httpx.post(f"http://127.0.0.1:{port}/api/v1/purchase", json={"qty": 1}, timeout=5)
    finally:
        assert run.stop(signal.SIGTERM) == 0
    out = run.output()
    print(f"\nroll: ticket pid {before} -> {after}; purchase after the roll {r.status_code}")
    assert after != before and r.status_code == 200 and r.json()["success"]
    assert out.count("for the rolling restart; starting it") == 3
    assert all(f"{c} is back and ready" in out for c in ("ticket", "vacancy.0", "vacancy.1"))
    stopped = out[out.index("stopping: SIGINT to every process"):]
    assert "restarting" not in stopped and "starting it" not in stopped
    assert "exited (" not in out  # no child counted as crashed
