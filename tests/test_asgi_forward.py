"""Mounted routes across processes: a public gateway forwards them over RPC to
the private process hosting the mounting service — the verified principal,
the request id and streamed answers (as they are produced) come along."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from mountapp.app import app
from test_auth import KEYFILE, bearer, claims, sign

from amoeba.testing import TopologyGroup

GATEWAY = Path(__file__).parent / "mountapp" / "topologies" / "gateway.yaml"


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TopologyGroup]:
    raw = yaml.safe_load(GATEWAY.read_text())
    raw["pythonpath"] = [str(GATEWAY.parent.parent.parent.resolve())]
    raw["settings"] = {"auth": {"keys": str(KEYFILE), "issuer": "authapp", "audience": "authapp"}}
    path = tmp_path_factory.mktemp("gateway") / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw))
    group = TopologyGroup(app, "gateway-auth", path, {})
    group.start()
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def gateway(group: TopologyGroup) -> str:
    return group.url()


def test_principal_and_request_id_cross_to_the_app(gateway: str) -> None:
    r = httpx.get(gateway + "/raw/echo", headers={**bearer(sign(claims(sub="zoe"))),
                                                  "X-Request-Id": "fw-1"})
    assert r.status_code == 200
    body = r.json()
    assert body["principal"] == "zoe" and body["request_id"] == "fw-1"
    assert r.headers["x-request-id"] == "fw-1" and r.headers["x-raw"] == "1"
    r = httpx.get(gateway + "/fast/whoami", headers=bearer(sign(claims(sub="yan"))))
    assert r.json() == {"subject": "yan", "flavour": "fastapi"}


def test_the_back_process_refuses_direct_requests(group: TopologyGroup) -> None:
    port = group.topo.processes["back"].listeners[0].port_for(0)
    r = httpx.get(f"http://127.0.0.1:{port}/raw/echo")
    assert r.status_code == 401  # the mount is private there: only the gateway reaches it


def test_streams_cross_as_they_are_produced(gateway: str) -> None:
    started = time.monotonic()
    arrivals: list[float] = []
    parts: list[bytes] = []
    with httpx.stream("GET", gateway + "/raw/stream?n=20") as r:
        assert r.headers["transfer-encoding"] == "chunked"
        for part in r.iter_raw():
            arrivals.append(time.monotonic() - started)
            parts.append(part)
    assert b"".join(parts) == b"".join(b"chunk %d\n" % i for i in range(20))
    # 20 parts 10 ms apart: more than one read, the first well before the last.
    assert len(parts) > 1 and arrivals[-1] - arrivals[0] > 0.05
    with httpx.stream("GET", gateway + "/fast/events?n=3") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert b"".join(r.iter_raw()) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_app_errors_and_misses_cross_as_answers(gateway: str) -> None:
    assert httpx.get(gateway + "/raw/boom").status_code == 500
    r = httpx.get(gateway + "/fast/nope")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    r = httpx.post(gateway + "/fast/add", json={"n": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "n"]


async def test_only_safe_methods_may_be_sent_again() -> None:
    """The pool retries a call lost under a dropped connection only when its
    codec says idempotent: forwarded GETs are, POSTs are not."""
    from amoeba.gateway.forward import Forwarder, HttpReply
    from amoeba.gateway.http import Request

    seen = []

    class Pool:
        process = "back"

        async def call(self, codec, caller, args, stat=None, pin=None):  # type: ignore[no-untyped-def]
            seen.append((args[0], codec.spec.idempotent, codec.spec.qualname))
            return HttpReply(200, [], b"{}")

    fw = Forwarder("front", Pool(), "edge")  # type: ignore[arg-type]
    for method in ("GET", "POST", "HEAD", "DELETE"):
        await fw(Request(method, "/raw/echo", "", {}, b""), "rid")
    assert seen == [("GET", True, "front.__http__"), ("POST", False, "front.__http__"),
                    ("HEAD", True, "front.__http__"), ("DELETE", False, "front.__http__")]


def test_amoeba_run_fails_when_a_mounted_app_cannot_start(tmp_path: Path) -> None:
    """The process fails, saying why, and its listener never opened (so /readyz
    never said ready).  (Under the `amoeba run` supervisor it is restarted with
    backoff, as systemd or Kubernetes would.)"""
    import os
    import socket
    import subprocess
    import sys

    from amoeba.testing import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "amoeba", "run", str(GATEWAY.parent / "broken.yaml"),
         "--process", "main"],
        env={**os.environ, "PORT": str(port), "AMOEBA_DATA_DIR": str(tmp_path / "data")},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    ready = False
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                ready = True
        time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 1, out
    assert not ready, "the listener opened although the app's startup failed"
    assert ("amoeba run: service 'broken', Mount('mountapp.failing:app'): the app's lifespan "
            "startup failed: RuntimeError: cannot reach the warehouse") in out, out
