"""The four tickets topologies (and a replicated one) started with `amoeba run`."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest
from e2e import ROOT, Run, get, post
from waiting import eventually

from amoeba.testing import free_port

pytestmark = pytest.mark.e2e
TOPOS = ROOT / "examples" / "tickets" / "topologies"


def two_ports() -> tuple[int, int]:
    a, b = free_port(), free_port()
    while b == a or abs(b - a) == 1:
        b = free_port()
    return a, b


def start_pair(topology: str, env: dict[str, str], tmp_path) -> tuple[Run, int, int]:
    """A topology with vacancy on one port and ticket on another; both ready."""
    vp, tp = two_ports()
    run = Run(TOPOS / topology, {**env, "VACANCY_PORT": str(vp), "TICKET_PORT": str(tp)},
              [vp, tp], tmp_path)
    return run, vp, tp


@pytest.fixture
def env(tmp_path):
    return {"AMOEBA_DATA_DIR": str(tmp_path / "data"), "INITIAL_STOCK": "50"}


def test_monolith_single_port(env, tmp_path):
    port = free_port()
    run = Run(TOPOS / "monolith.yaml", {**env, "PORT": str(port)}, [port], tmp_path)
    try:
        assert get(port, "/").json()["mode"] == "monolith"
        r = post(port, "/api/v1/purchase", {"qty": 2}).json()
        assert r["success"] and r["remaining"] == 48
        assert get(port, "/api/v1/available").json() == {"qty": 48}
        assert post(port, "/api/v1/reserve", {"qty": 1}).json()["remaining"] == 47
    finally:
        assert run.stop() == 0


def test_monolith_several_ports(env, tmp_path):
    run, vp, tp = start_pair("monolith-multi.yaml", env, tmp_path)
    try:
        assert get(tp, "/").json()["mode"] == "monolith-multi"
        assert post(tp, "/api/v1/purchase", {"qty": 1}).json()["remaining"] == 49
        assert get(vp, "/api/v1/available").json() == {"qty": 49}
        assert get(tp, "/api/v1/available").status_code == 404  # vacancy routes live on :vp
        assert get(vp, "/").json()["process"] == "main"
    finally:
        assert run.stop() == 0


def test_microservices(env, tmp_path):
    run, vp, tp = start_pair("microservices.yaml", env, tmp_path)
    try:
        assert get(tp, "/").json()["process"] == "ticket"
        assert get(vp, "/").json()["process"] == "vacancy"
        assert get(tp, "/").json()["pid"] != get(vp, "/").json()["pid"]
        assert post(tp, "/api/v1/purchase", {"qty": 5}).json()["remaining"] == 45
        assert get(vp, "/api/v1/available").json() == {"qty": 45}
        assert get(tp, "/api/v1/ready").status_code == 200
    finally:
        assert run.stop() == 0
    out = run.output()
    assert "ticket | " in out and "vacancy | " in out  # output prefixed by process


def test_hybrid_private_internals(env, tmp_path):
    pp, vp = two_ports()
    run = Run(TOPOS / "hybrid.yaml", {**env, "PORT": str(pp), "VACANCY_PORT": str(vp)},
              [pp], tmp_path)
    try:
        assert get(pp, "/").json()["mode"] == "hybrid"
        assert post(pp, "/api/v1/purchase", {"qty": 1}).json()["success"] is True
        assert get(pp, "/api/v1/reserve").status_code in (404, 405)  # not on the public port
        r = get(vp, "/api/v1/available")
        assert r.status_code == 401 and r.json()["error"]["type"] == "Unauthorized"
        r = post(vp, "/api/v1/reserve", {"qty": 1})
        assert r.status_code == 401
        assert get(vp, "/healthz").status_code == 200  # probes stay open
    finally:
        assert run.stop() == 0


def _served(port: int, method: str) -> int:
    """Remote calls of ``method`` this replica served, read off its /metrics."""
    text = get(port, "/metrics").text
    prefix = "amoeba_rpc_served_duration_seconds_count{"
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith(prefix) and f'method="{method}"' in line)


def test_two_replicas_never_oversell_and_a_restart_keeps_the_stock(env, tmp_path):
    tp, vp = two_ports()
    topo = ROOT / "tests" / "topologies" / "tickets-replicated.yaml"
    e = {**env, "INITIAL_STOCK": "100", "TICKET_PORT": str(tp), "VACANCY_PORT": str(vp)}
    run = Run(topo, e, [tp], tmp_path)

    async def buy_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as c:
            return await asyncio.gather(*(
                c.post(f"http://127.0.0.1:{tp}/api/v1/purchase", json={"qty": 1})
                for _ in range(300)))

    try:
        results = asyncio.run(buy_all())
        ok = [r for r in results if r.json()["success"]]
        print(f"replicated: 300 buyers for 100 tickets: {len(ok)} sold")
        assert all(r.status_code == 200 for r in results)
        assert len(ok) == 100
        remaining = sorted(r.json()["remaining"] for r in ok)
        assert remaining == list(range(100))  # each ticket sold exactly once
        # Both vacancy replicas (private ports vp and vp+1) served reserves.
        served = [_served(port, "reserve") for port in (vp, vp + 1)]
        print(f"replicated: reserves served per vacancy replica: {served}")
        assert all(n > 0 for n in served), served
        assert sum(served) >= 100
    finally:
        assert run.stop() == 0
    # Restart with a different INITIAL_STOCK: the database exists, nothing is reseeded.
    run = Run(topo, {**e, "INITIAL_STOCK": "5000"}, [tp], tmp_path)
    try:
        r = post(tp, "/api/v1/purchase", {"qty": 1}).json()
        assert r == {"success": False, "remaining": 0, "message": r["message"]}
    finally:
        assert run.stop() == 0


def test_crashed_process_is_restarted(env, tmp_path):
    run, vp, tp = start_pair("microservices.yaml", env, tmp_path)
    try:
        pid = get(vp, "/").json()["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:
            try:
                if get(vp, "/").json()["pid"] != pid:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, run.output()
            time.sleep(0.1)
        # ticket's pool notices the new vacancy process and calls it again.
        deadline = time.monotonic() + 30
        while (r := post(tp, "/api/v1/purchase", {"qty": 1})).status_code != 200:
            assert time.monotonic() < deadline, (r.status_code, r.text, run.output())
            time.sleep(0.1)
        assert r.status_code == 200 and r.json()["success"]
    finally:
        assert run.stop() == 0
    assert "vacancy exited (signal 9)" in run.output()


def test_sigterm_drains_in_flight_requests(tmp_path):
    port = free_port()
    topo = ROOT / "tests" / "topologies" / "demo.yaml"
    run = Run(topo, {"PORT": str(port), "AMOEBA_DATA_DIR": str(tmp_path)}, [port], tmp_path,
              args=("--process", "main"))

    async def scenario() -> tuple[httpx.Response, bool, int]:
        async with httpx.AsyncClient(timeout=30) as c:
            slow = asyncio.ensure_future(
                c.post(f"http://127.0.0.1:{port}/store/slow", json={"seconds": 3.0}))

            async def in_flight() -> bool:  # the stats request counts itself
                stats = (await c.get(f"http://127.0.0.1:{port}/_amoeba/api/stats")).json()
                return stats["http"]["inflight"] >= 2

            await eventually(in_flight, 30, "the slow request in flight")
            run.proc.send_signal(signal.SIGTERM)

            async def refused() -> bool:  # drain_delay 0: the listener closes at once
                try:
                    async with httpx.AsyncClient(timeout=10) as late:
                        await late.get(f"http://127.0.0.1:{port}/healthz")
                except httpx.ConnectError:
                    return True
                return False

            await eventually(refused, 30, "new connections refused", every=0.05)
            closed_while_in_flight = not slow.done()
            r = await slow
            return r, closed_while_in_flight, await asyncio.to_thread(run.proc.wait, 30)

    r, closed_while_in_flight, code = asyncio.run(scenario())
    assert closed_while_in_flight  # the listener closed with the request still running...
    assert r.status_code == 200 and r.json() == 3.0  # ...which finished all the same
    assert code == 0
