"""Real load balancers in front of a running topology, configured by what
``amoeba deploy nginx|haproxy`` generates, and a client that drives load
through them and counts what happened.

nginx and HAProxy are the Debian packages (``apt-get install nginx haproxy``);
a missing one skips the test, or fails it when ``AMOEBA_REQUIRE_SERVICES=1``.
Each runs as a child of the test (``daemon off`` / foreground) on a free port.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from require import missing

from amoeba.testing import free_port

__all__ = ["Balancer", "Load", "require_binary"]

BINARIES = {"nginx": "/usr/sbin/nginx", "haproxy": "/usr/sbin/haproxy"}


def require_binary(kind: str) -> str:
    path = shutil.which(kind) or (BINARIES[kind] if os.access(BINARIES[kind], os.X_OK) else None)
    if path is not None:
        return path
    missing(f"{kind} is not installed: apt-get install {kind}")


class Balancer:
    """nginx or HAProxy started from the config ``amoeba deploy`` writes for
    ``topology`` (whose ``deploy.edge.port`` reads ``EDGE_PORT``)."""

    def __init__(self, kind: str, topology: Path, env: dict[str, str], workdir: Path):
        self.kind = kind
        self.binary = require_binary(kind)
        self.port = free_port()
        self.dir = workdir / kind
        self.dir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "amoeba", "deploy", kind, str(topology), "-o", str(self.dir)],
            env={**env, "EDGE_PORT": str(self.port)}, capture_output=True, text=True)
        assert done.returncode == 0, f"amoeba deploy {kind} failed:\n{done.stdout}{done.stderr}"
        self.log = self.dir / "balancer.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<Balancer {self.kind} :{self.port}>"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        if self.kind == "nginx":
            argv = [self.binary, "-p", str(self.dir), "-c", "nginx.conf", "-g", "daemon off;"]
        else:
            argv = [self.binary, "-db", "-f", str(self.dir / "haproxy.cfg")]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        end = time.monotonic() + timeout
        while True:  # ready: the balancer answers /readyz from a replica
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n"
                                   f"{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > end:
                raise TimeoutError(f"{self.kind} not answering on :{self.port}:\n"
                                   f"{self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


RETRYABLE = {409, 429, 502, 503, 504}  # 409: the first try with this key is still running


@dataclass
class Load:
    """Steady traffic through a balancer: GET workers (``/`` to see which
    replica answered, and a product through the catalog) and POST workers
    placing orders, each with an Idempotency-Key of its own.

    A client makes a POST safe to repeat with that key: when the balancer
    answers 502/503/504 (or the connection breaks) the order may or may not
    have been placed, so the same request goes again with the same key and
    the shop answers with the order the first attempt made, if it made one."""

    url: str
    auth: dict[str, str]
    product: int
    gets: int = 0
    get_failures: list[str] = field(default_factory=list)
    posts: int = 0
    post_retries: int = 0
    post_failures: list[str] = field(default_factory=list)
    orders: dict[str, int] = field(default_factory=dict)  # key -> order id
    hits: Counter[tuple[int, int]] = field(default_factory=Counter)  # (replica, pid) -> answers

    async def run(self, seconds: float, *, get_workers: int = 4, post_workers: int = 2,
                  during: Any = None) -> None:
        """Load for ``seconds``; ``during``: a coroutine run alongside it."""
        stop = asyncio.Event()
        limits = httpx.Limits(max_connections=get_workers + post_workers)
        async with httpx.AsyncClient(timeout=20, limits=limits) as client:
            workers = [asyncio.ensure_future(self._getter(client, stop)) for _ in range(get_workers)]
            workers += [asyncio.ensure_future(self._poster(client, stop)) for _ in range(post_workers)]
            side = asyncio.ensure_future(during) if during is not None else None
            await asyncio.sleep(seconds)
            if side is not None:
                await side
            stop.set()
            await asyncio.gather(*workers)

    async def _getter(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            path = "/" if n % 2 == 0 else f"/api/products/{self.product}"
            n += 1
            self.gets += 1
            try:
                r = await client.get(self.url + path)
            except httpx.HTTPError as exc:
                self.get_failures.append(f"GET {path}: {type(exc).__name__}")
                continue
            if r.status_code != 200:
                self.get_failures.append(f"GET {path}: {r.status_code} {r.text[:120]}")
            elif path == "/":
                body = r.json()
                self.hits[(body["replica"], body["pid"])] += 1

    async def _poster(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            key = uuid.uuid4().hex
            self.posts += 1
            for attempt in range(100):
                try:
                    r = await client.post(self.url + "/api/orders", headers={
                        **self.auth, "Idempotency-Key": key},
                        json={"items": [{"product_id": self.product, "qty": 1}]})
                except httpx.HTTPError:
                    status = 0
                else:
                    status = r.status_code
                if status == 201:
                    self.orders[key] = int(r.json()["id"])
                    break
                if status not in RETRYABLE and status != 0:
                    self.post_failures.append(f"POST: {status} {r.text[:160]}")
                    break
                self.post_retries += 1
                await asyncio.sleep(min(0.05 * (attempt + 1), 0.5))
            else:
                self.post_failures.append(f"POST {key}: no answer after 100 tries")

    def summary(self) -> str:
        return (f"{self.gets} GETs ({len(self.get_failures)} failed), {self.posts} orders posted "
                f"({self.post_retries} POST retries, {len(self.post_failures)} failed), "
                f"{len(self.orders)} keys with an order")
