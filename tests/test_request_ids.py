"""The request id the client got back is in every log line the request causes,
in every process: the callee of a remote call and the handler of an event."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from test_remote import split, start

from amoeba.runtime.process import LogFormatter
from amoeba.testing import free_port


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Every amoeba log line, formatted as a process formats them (JSON)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LogFormatter("json", {"process": "test"}))
    root = logging.getLogger("amoeba")
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)


async def test_a_remote_methods_error_line_names_the_clients_request_id(monkeypatch, tmp_path,
                                                                        json_lines):
    monkeypatch.setenv("AMOEBA_SECRET", "test-secret")
    topo = split([free_port()])
    store = await start(topo, "store", tmp_path)
    front = await start(topo, "front", tmp_path)
    try:
        port = topo.processes["front"].listeners[0].port
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://127.0.0.1:{port}/front/crash",
                                  headers={"x-request-id": "req-7f3a"})
        assert r.status_code == 500 and r.json()["error"]["request_id"] == "req-7f3a"
    finally:
        await front.stop()
        await store.stop()
    lines = [json.loads(x) for x in json_lines.getvalue().splitlines()]
    served = [x for x in lines if x["logger"] == "amoeba.rpc" and "store.crash" in x["message"]]
    assert served, lines
    assert served[0]["request_id"] == "req-7f3a" and served[0]["service"] == "store"
    assert served[0]["trace_id"]  # and the trace, as before


async def test_an_event_handlers_lines_name_the_publishing_request(tmp_path, json_lines):
    import asyncio

    from evdemo.app import Reader, app

    from amoeba.testing import InProcessHarness

    h = InProcessHarness(app, tmp_path / "data", strict=False, env={},
                         settings={"events": {"max_attempts": 2, "backoff": 0.01, "relay_poll": 0.1}})
    await h.start()
    Reader.broken = True
    try:
        r = await h.post("/note", json={"text": "bad apple"}, headers={"x-request-id": "req-e1"})
        assert r.status == 200
        for _ in range(500):
            if "parked as a dead letter" in json_lines.getvalue():
                break
            await asyncio.sleep(0.02)
    finally:
        Reader.broken = False
        await h.aclose()
    lines = [json.loads(x) for x in json_lines.getvalue().splitlines()]
    handler = [x for x in lines if x["logger"] == "amoeba.events" and "reader.noted" in x["message"]]
    assert [x["level"] for x in handler] == ["WARNING", "ERROR"], handler  # a retry, then parked
    assert all(x["request_id"] == "req-e1" and x["service"] == "reader" for x in handler), handler
