"""Helpers for driving a real listener over raw sockets: an in-process host on a
free port, an ``amoeba run`` server in a process of its own (whose RSS a test
can read), and a small reader of HTTP/1.1 answers."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from amoeba.app import App
from amoeba.runtime.host import Host
from amoeba.testing import _single_process, free_port, monolith_topology, settings_from

ROOT = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def serving(app: App, data: Path, *, topology: Path | None = None,
                  env: dict[str, str] | None = None, resources: dict[str, str] | None = None,
                  **settings: Any) -> AsyncIterator[tuple[Host, int]]:
    """``app`` as a monolith listening on 127.0.0.1 (a free port), in this loop:
    generated with ``settings``, or ``topology`` (a one-process file, its port 0)."""
    if topology is None:
        topo, process = monolith_topology(app, "edge-test", settings_from(settings)), "main"
    else:
        topo, process = _single_process(app, topology, {**os.environ, **(env or {}), "PORT": "0"})
    if resources:
        topo = dataclasses.replace(topo, resources={**topo.resources, **resources})
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    host = Host(app, topo, process, data=data)
    try:
        await host.start()
        yield host, host.bound_ports()[0]
    finally:
        await host.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.body[:80]!r}>"


def parse_answers(raw: bytes, head_only: tuple[bool, ...] = ()) -> list[Answer]:
    """Every complete answer in ``raw``; ``head_only[i]``: answer i was to a HEAD."""
    out: list[Answer] = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = 0 if status == 100 or (len(out) < len(head_only) and head_only[len(out)]) \
            else int(headers.get("content-length", "0"))
        out.append(Answer(status, headers, rest[:n]))
        raw = rest[n:]
    return out


async def exchange(port: int, data: bytes, *, wait: float = 10.0, close_after: bool = False
                   ) -> bytes:
    """Send ``data``, read until the server closes (or ``wait`` seconds pass)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if close_after:
            writer.write_eof()
        chunks = []
        end = asyncio.get_running_loop().time() + wait
        while True:
            left = end - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                async with asyncio.timeout(left):
                    chunk = await reader.read(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """What the server sent before closing; AssertionError when it did not close in time."""
    got = b""
    try:
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                got += chunk
    except TimeoutError:
        raise AssertionError(f"server kept the connection open for {within}s; sent {got[:200]!r}"
                             ) from None
    except ConnectionResetError:
        pass
    return got


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: t\r\n{extra}\r\n".encode()


class ServerProcess:
    """``amoeba run FILE --process main`` of a one-process topology, in its own process."""

    def __init__(self, tmp: Path, app: str, pythonpath: Path, settings: dict[str, Any]):
        self.port = free_port()
        settings = {"drain_delay": "0s", "grace": "1s", **settings}
        flow = ", ".join(f"{k}: {v}" for k, v in settings.items())
        lines = [f"name: edge-{os.getpid()}", f"app: {app}", f"pythonpath: {pythonpath}",
                 f"settings: {{{flow}}}"]
        lines += ["processes:", "  main:", "    services: '*'", "    listeners:",
                  f"      - {{port: {self.port}, host: 127.0.0.1, public: true}}"]
        self.file = tmp / "topology.yaml"
        self.file.write_text("\n".join(lines) + "\n")
        self.log = tmp / "server.log"
        env = {**os.environ, "AMOEBA_DATA_DIR": str(tmp / "data"), "AMOEBA_LOG_FORMAT": "text",
               "AMOEBA_SECRET": "edge-test-secret"}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "amoeba", "run", str(self.file), "--process", "main"],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
        end = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > end:
                    raise RuntimeError(f"server not up: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def rss(self) -> int:
        """Resident set size of the server process, bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def settled_rss(self, quiet: float = 1.0, limit: float = 20.0) -> int:
        """RSS once it has not grown for ``quiet`` seconds (or after ``limit``)."""
        end = time.monotonic() + limit
        last, since = self.rss(), time.monotonic()
        while time.monotonic() < end:
            time.sleep(0.2)
            now = self.rss()
            if now > last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
