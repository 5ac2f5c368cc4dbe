"""Synthetic snapshots in the shape of ``amoeba.observe.snapshot``, for the
readers' tests (advice, status, the dashboard's fake server)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from amoeba.observe.snapshot import BUCKETS


def hist(count: int, at: float) -> list[int]:
    """``count`` observations all in the bucket holding ``at`` seconds."""
    out = [0] * (len(BUCKETS) + 1)
    idx = next((i for i, b in enumerate(BUCKETS) if at <= b), len(BUCKETS))
    out[idx] = count
    return out


def call(caller: str, callee: str, method: str, kind: str, count: int, each: float,
         *, size: int = 100, errors: int = 0, sampled: int | None = None) -> dict[str, Any]:
    n = count if sampled is None else sampled
    return {"caller": caller, "callee": callee, "method": method, "kind": kind, "count": count,
            "errors": errors, "sum": count * each, "hist": hist(count, each),
            "bytes_out": n * size // 2, "bytes_in": n * size // 2, "sampled": n}


def served(service: str, method: str, count: int, each: float) -> dict[str, Any]:
    return {"service": service, "method": method, "count": count, "sum": count * each}


def snapshot(process: str, services: list[str], *, now: float, replica: int = 0, pid: int = 100,
             started: float = 1000.0, port: int = 8000, calls: Sequence[dict[str, Any]] = (),
             served_: Sequence[dict[str, Any]] = (),
             requests: int = 0, errors: int = 0, ready: bool = True, draining: bool = False,
             events: dict[str, Any] | None = None, public: bool = True) -> dict[str, Any]:
    return {
        "app": "tickets", "topology": "test", "process": process, "replica": replica, "pid": pid,
        "services": services,
        "listeners": [{"host": "127.0.0.1", "port": port + replica, "public": public}],
        "started": started, "now": now, "uptime": now - started, "ready": ready,
        "draining": draining, "buckets": list(BUCKETS),
        "http": {"requests": requests, "errors": errors, "client_errors": 0, "inflight": 0,
                 "routes": []},
        "calls": list(calls), "served": list(served_), "pools": [], "events": events,
    }


def node(process: str, depends: Sequence[str] = (), methods: Sequence[str] = ()) -> dict[str, Any]:
    return {"process": process, "depends": list(depends), "publishes": [], "handles": [],
            "methods": list(methods)}


def cluster(now: float, services: dict[str, dict[str, Any]],
            processes: list[tuple[str, bool, list[dict[str, Any]]]]) -> dict[str, Any]:
    """``processes``: (name, private, instances)."""
    return {
        "app": "tickets", "topology": "test", "now": now, "services": services,
        "processes": [{"name": name, "services": sorted(s for s, n in services.items()
                                                         if n["process"] == name),
                       "replicas": len(inst), "private": private, "instances": inst}
                      for name, private, inst in processes],
    }


def tickets_pair(t: float, n: int, *, pid: int = 100) -> dict[str, Any]:
    """The tickets app as microservices after ``n`` purchases (1000/s from t=0):
    ticket calls vacancy remotely; each call takes 200 µs as the caller sees
    it, 80 µs inside vacancy: 120 µs crossing."""
    services = {"ticket": node("ticket", ["vacancy"], ["purchase"]),
                "vacancy": node("vacancy", [], ["available", "reserve"])}
    ticket = snapshot("ticket", ["ticket"], now=t, port=8002, pid=pid, requests=n, calls=[
        call("http", "ticket", "purchase", "local", n, 0.0004),
        call("ticket", "vacancy", "reserve", "remote", n, 0.0002, size=150),
    ])
    vacancy = snapshot("vacancy", ["vacancy"], now=t, port=8001, pid=pid + 1, requests=n,
                       served_=[served("vacancy", "reserve", n, 0.00008)])
    return cluster(t, services, [("ticket", False, [ticket]), ("vacancy", False, [vacancy])])


@contextlib.contextmanager
def dashboard_server(cluster: Callable[[], dict[str, Any]]) -> Iterator[str]:
    """The dashboard page and a ``/_amoeba/api/cluster`` answering ``cluster()``,
    served on a free loopback port; the page's URL."""
    page = resources.files("amoeba.observe").joinpath("dashboard.html").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/_amoeba/api/cluster":
                body, kind = json.dumps(cluster()).encode(), "application/json"
            elif self.path == "/_amoeba/":
                body, kind = page, "text/html; charset=utf-8"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/_amoeba/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
