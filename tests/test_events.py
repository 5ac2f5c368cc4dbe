"""The events runtime on the in-process bus: outbox in the publisher's
transaction, inbox deduplication, retries with backoff, dead letters and
their replay; the dead letters once more with events on Kafka."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import servers
from evdemo.app import Reader, app

from amoeba.cli import main
from amoeba.events import admin
from amoeba.testing import Harness, app_fixture

demo = app_fixture(app, modes=("inprocess", "strict"),
                   settings={"events": {"max_attempts": 3, "backoff": 0.02, "relay_poll": 0.2}})


def _kafka(mode: str, request: pytest.FixtureRequest) -> dict[str, str]:
    import uuid

    return {"EVENTS_URL": f"{servers.kafka_url()}?namespace=t{uuid.uuid4().hex[:8]}"}


demo_kafka = app_fixture(app, modes=("inprocess",), setup=_kafka,
                         topology=Path(__file__).parent / "topologies" / "evdemo-kafka.yaml")


async def settled(h: Harness, within: float = 15.0) -> None:
    """Wait until the outbox is empty and every delivery is acked: no event is
    still on its way, so nothing can arrive (again) after this returns."""
    events = h.host.events
    end = asyncio.get_running_loop().time() + within
    while True:
        lag, waiting = await events.lag(), await events.outbox_waiting()
        if not any(lag.values()) and not any(waiting.values()):
            return
        assert asyncio.get_running_loop().time() < end, f"not settled: lag {lag}, outbox {waiting}"
        await asyncio.sleep(0.02)


async def texts(h: Harness, n: int) -> list[str]:
    for _ in range(500):
        got = (await h.get("/notes")).json()["texts"]
        if len(got) >= n:
            await settled(h)  # and nothing more arrives
            return list((await h.get("/notes")).json()["texts"])
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {n} notes: {got}")


async def test_published_in_a_transaction_arrives_once(demo):
    assert (await demo.post("/note", json={"text": "hello"})).status == 200
    assert await texts(demo, 1) == ["hello"]
    events = demo.host.events
    assert events.published == {"demo.noted": 1}
    c = events.counters[("reader", "demo.noted")]
    assert (c.delivered, c.acked, c.retried, c.dead_lettered) == (1, 1, 0, 0)
    assert await events.lag() == {"reader": 0}


async def test_a_rolled_back_transaction_publishes_nothing(demo):
    assert (await demo.post("/note", json={"text": "ghost", "fail": True})).status == 409
    assert (await demo.post("/note", json={"text": "real"})).status == 200
    assert await texts(demo, 1) == ["real"]


async def test_a_redelivered_event_is_handled_once(demo):
    assert (await demo.post("/note", json={"text": "twice", "times": 2})).status == 200
    assert await texts(demo, 1) == ["twice"]  # both copies acked by then
    assert demo.host.events.counters[("reader", "demo.noted")].duplicates == 1


async def test_a_failing_handler_is_retried_and_its_writes_undone(demo):
    Reader.flaky["wobbly"] = 2
    assert (await demo.post("/note", json={"text": "wobbly"})).status == 200
    assert await texts(demo, 1) == ["wobbly"]  # the two failed attempts left no row
    c = demo.host.events.counters[("reader", "demo.noted")]
    assert (c.retried, c.acked) == (2, 1)


async def test_one_failing_handler_of_a_batch_undoes_only_its_own_writes(demo):
    """Events that arrive together are handled in one transaction, each in a
    savepoint: the failing one's row is rolled back alone (else "wobbly" would
    be kept by each failed attempt), it is retried, the others commit once."""
    Reader.flaky["wobbly"] = 2
    sent = ["a", "b", "wobbly", "c", "d"]
    assert (await demo.post("/notes", json={"texts": sent})).status == 200
    got = await texts(demo, len(sent))
    assert sorted(got) == sorted(sent)
    c = demo.host.events.counters[("reader", "demo.noted")]
    assert (c.retried, c.acked, c.dead_lettered, c.duplicates) == (2, 5, 0, 0)
    box = demo.host.events.inboxes["reader"]
    assert box.largest == len(sent), box  # they did share a batch


async def test_a_repeat_inside_one_batch_is_handled_once(demo):
    assert (await demo.post("/note", json={"text": "echo", "times": 3})).status == 200
    assert await texts(demo, 1) == ["echo"]
    c = demo.host.events.counters[("reader", "demo.noted")]
    assert (c.acked, c.duplicates) == (3, 2)
    assert demo.host.events.inboxes["reader"].largest == 3


async def test_dead_letters_are_parked_and_replayed(demo, tmp_path, monkeypatch, capsys):
    await dead_letters_round(demo, tmp_path, monkeypatch, capsys)


async def test_dead_letters_are_parked_and_replayed_on_kafka(demo_kafka, tmp_path, monkeypatch,
                                                             capsys):
    """Retries through the service's retry topic, then the dead-letter table and
    ``events replay``, unchanged."""
    from amoeba.events.kafka import KafkaBus

    assert isinstance(demo_kafka.host.events.bus, KafkaBus)
    await dead_letters_round(demo_kafka, tmp_path, monkeypatch, capsys)
    assert await demo_kafka.host.events.lag() == {"reader": 0}


async def dead_letters_round(demo: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    Reader.broken = True
    try:
        assert (await demo.post("/note", json={"text": "bad apple"})).status == 200
        reader_db = demo.host.instances["reader"].db
        for _ in range(200):
            parked = await admin.list_dead_letters(reader_db)
            if parked:
                break
            await asyncio.sleep(0.02)
        assert [(p.name, p.attempts, p.handler) for p in parked] == [
            ("demo.noted", 3, "reader.noted")]
        assert "cannot take bad notes" in parked[0].error
        assert (await demo.get("/notes")).json()["texts"] == []
        assert demo.host.events.counters[("reader", "demo.noted")].dead_lettered == 1
    finally:
        Reader.broken = False
    # The commands, on the same data directory as the running app.
    topo = tmp_path / "evdemo.yaml"
    topo.write_text(f"name: evdemo\napp: evdemo.app:app\npythonpath: {Path(__file__).parent}\n"
                    f"processes:\n  main:\n    services: ['*']\n    listeners: [{{port: 18999}}]\n")
    monkeypatch.setenv("AMOEBA_DATA_DIR", str(demo.host.data_dir))
    # (in a thread: the commands run their own event loop)
    assert await asyncio.to_thread(main, ["events", "dead-letters", str(topo)]) == 0
    out = capsys.readouterr().out
    assert "demo.noted" in out and "reader.noted" in out and "1 dead letter(s)" in out
    assert await asyncio.to_thread(
        main, ["events", "replay", str(topo), "--service", "reader", "--all"]) == 0
    assert "reader: 1 dead letter(s) back in the outbox" in capsys.readouterr().out
    assert await texts(demo, 1) == ["bad apple"]
    assert await admin.list_dead_letters(reader_db) == []


async def test_publishing_an_undeclared_event_says_how_to_fix_it(demo, caplog):
    with caplog.at_level(logging.ERROR):
        r = await demo.post("/unlisted")
    assert r.status == 500  # a programming error: opaque to the client, logged
    assert "Unlisted" not in str(r.json()) and "publishes" not in str(r.json())
    logged = "\n".join(f"{rec.getMessage()} {rec.exc_info[1] if rec.exc_info else ''}"
                       for rec in caplog.records)  # the message and the exception it logged
    assert "Unlisted is not in Writer.publishes; fix: publishes = (Unlisted, ...)" in logged, logged


@pytest.fixture(autouse=True)
def _reset() -> None:
    Reader.flaky.clear()
    Reader.broken = False


async def test_events_keep_flowing_after_the_outbox_empties(demo):
    """The relay reads past what it handed over: an emptied outbox must not
    hand out the same row numbers again (SQLite reuses them unless told)."""
    for i in range(3):
        assert (await demo.post("/note", json={"text": f"n{i}"})).status == 200
        assert await texts(demo, i + 1) == [f"n{k}" for k in range(i + 1)]
