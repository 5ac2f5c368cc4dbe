"""The edge as an ASGI app under uvicorn: the tickets contract and a mounted
app's streamed answer, served through the ASGI server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from amoeba.runtime.asgi_edge import asgi_edge
from amoeba.testing import free_port

ROOT = Path(__file__).resolve().parent.parent


async def serve(app, port: int):  # type: ignore[no-untyped-def]
    uvicorn = pytest.importorskip("uvicorn")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                           log_level="warning"))
    task = asyncio.get_running_loop().create_task(server.serve())
    for _ in range(300):
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    assert server.started, "uvicorn did not start"
    return server, task


async def test_tickets_through_uvicorn(tmp_path, monkeypatch):
    monkeypatch.setenv("PORT", str(free_port()))  # the listener (RPC, and HTTP too)
    monkeypatch.setenv("AMOEBA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("INITIAL_STOCK", "100")
    app = asgi_edge(ROOT / "examples" / "tickets" / "topologies" / "monolith.yaml", "main")
    port = free_port()
    server, task = await serve(app, port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            r = await http.post("/api/v1/purchase", json={"qty": 2},
                                headers={"x-request-id": "edge-1"})
            assert r.status_code == 200 and r.json()["remaining"] == 98
            assert r.headers["x-request-id"] == "edge-1"
            r = await http.post("/api/v1/purchase", json={"qty": 0})
            assert r.status_code == 422 and r.json()["error"]["details"][0]["path"] == "$.qty"
            assert (await http.get("/readyz")).status_code == 200
            assert (await http.get("/api/v1/available")).json() == {"qty": 98}
    finally:
        server.should_exit = True
        await task


async def test_a_mounted_app_streams_through_uvicorn(tmp_path, monkeypatch):
    monkeypatch.setenv("PORT", str(free_port()))
    monkeypatch.setenv("AMOEBA_DATA_DIR", str(tmp_path / "data"))
    topo = tmp_path / "mono.yaml"
    topo.write_text(f"name: mono\napp: mountapp.app:app\npythonpath: {ROOT / 'tests'}\n"
                    "processes:\n  main:\n    services: '*'\n"
                    "    listeners: [{port: '${PORT}', host: 127.0.0.1}]\n")
    port = free_port()
    server, task = await serve(asgi_edge(topo, "main"), port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            r = await http.get("/fast/events?n=3")
            assert r.status_code == 200 and r.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
            r = await http.post("/fast/add", json={"n": 1})
            assert r.status_code == 200 and r.json()["total"] >= 1
    finally:
        server.should_exit = True
        await task
