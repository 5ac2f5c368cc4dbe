"""Dead letters and their replay on the real brokers (NATS JetStream, Redis
Streams): a handler that keeps failing is parked after ``max_attempts`` with
its error, listed by ``amoeba events dead-letters``, and ``amoeba events
replay`` hands it back through the outbox once the handler is fixed."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import servers
from evdemo.app import Reader, app

from amoeba.cli import main
from amoeba.events import admin
from amoeba.testing import InProcessHarness

HERE = Path(__file__).resolve().parent


@pytest.fixture(params=["nats", "redis"])
def broker(request: pytest.FixtureRequest) -> str:
    tag = uuid.uuid4().hex[:8]
    if request.param == "nats":
        url = servers.nats_url()
        request.addfinalizer(lambda: servers._run(servers._nats_clean, url, f"evdemo_t{tag}"))
        return f"{url}?namespace=t{tag}"
    base = servers.redis_url()
    prefix = f"amoeba-test-dl-{tag}:"
    request.addfinalizer(lambda: servers._run(servers._redis_clean, base, prefix))
    return f"{base}/0?prefix={prefix}"


async def test_dead_letters_are_parked_and_replayed_on_a_real_broker(broker, tmp_path, capsys,
                                                                     monkeypatch):
    topo = tmp_path / "evdemo.yaml"
    topo.write_text(
        f"name: evdemo\napp: evdemo.app:app\npythonpath: {HERE}\n"
        f"settings:\n  events: {{max_attempts: 3, backoff: 0.05, relay_poll: 0.2}}\n"
        f"resources:\n  events: \"{broker}\"\n"
        f"processes:\n  main:\n    services: ['*']\n    listeners: [{{port: 18998}}]\n")
    h = InProcessHarness(app, tmp_path / "data", strict=False, env={}, topology=topo)
    await h.start()
    Reader.broken = True
    try:
        assert (await h.post("/note", json={"text": "bad apple"})).status == 200
        reader_db = h.host.instances["reader"].db
        parked: list = []
        for _ in range(500):
            parked = await admin.list_dead_letters(reader_db)
            if parked:
                break
            await asyncio.sleep(0.02)
        assert [(p.name, p.attempts, p.handler) for p in parked] == [("demo.noted", 3, "reader.noted")]
        assert "cannot take bad notes" in parked[0].error
        assert (await h.get("/notes")).json()["texts"] == []
        for _ in range(500):  # parked, then acked: not left in the broker
            if await h.host.events.lag() == {"reader": 0}:
                break
            await asyncio.sleep(0.02)
        assert await h.host.events.lag() == {"reader": 0}
        Reader.broken = False
        monkeypatch.setenv("AMOEBA_DATA_DIR", str(h.host.data_dir))
        # (in a thread: the commands run their own event loop)
        assert await asyncio.to_thread(main, ["events", "dead-letters", str(topo)]) == 0
        assert "1 dead letter(s)" in capsys.readouterr().out
        assert await asyncio.to_thread(
            main, ["events", "replay", str(topo), "--service", "reader", "--all"]) == 0
        assert "reader: 1 dead letter(s) back in the outbox" in capsys.readouterr().out
        for _ in range(500):
            if (await h.get("/notes")).json()["texts"]:
                break
            await asyncio.sleep(0.02)
        assert (await h.get("/notes")).json()["texts"] == ["bad apple"]
        assert await admin.list_dead_letters(reader_db) == []
    finally:
        Reader.broken = False
        await h.aclose()
