"""The access log's buffered path: the lines a public listener writes, in the
process's log format, on the stream of the handler ``configure_logging`` sets up."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import select
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from authapp.app import app
from test_auth import SETTINGS

from amoeba.gateway import access as access_module
from amoeba.gateway.access import AccessLog
from amoeba.runtime.process import LogFormatter, configure_logging
from amoeba.testing import InProcessHarness

ACCESS = logging.getLogger("amoeba.access")
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO amoeba\.access: "
                       r"method=GET path=(\S+) status=(\d{3}) duration_ms=\d+\.\d\d "
                       r"request_id=(\S+) trace_id=[0-9a-f]{32} user=- ip=127\.0\.0\.1\n")


@contextmanager
def routed(tmp_path: Path, formatter: LogFormatter) -> Iterator[Path]:
    """``amoeba.access`` to a file (it has a real fd, like stderr) through one
    handler, as configure_logging routes it to stderr.  Entered in the test body:
    pytest hangs its own handlers on every logger for the call."""
    path = tmp_path / "access.log"
    with path.open("w") as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        saved = ACCESS.handlers[:], ACCESS.propagate, ACCESS.level, ACCESS.disabled
        ACCESS.handlers[:] = [handler]
        ACCESS.propagate = False
        ACCESS.setLevel(logging.INFO)
        try:
            yield path
        finally:
            ACCESS.handlers[:], ACCESS.propagate, _, ACCESS.disabled = saved
            ACCESS.setLevel(saved[2])


async def serve(tmp_path: Path, paths: list[str]) -> tuple[AccessLog, list[str]]:
    """Requests with request ids ``t-0``, ``t-1``…; the AccessLog and the ids."""
    h = InProcessHarness(app, tmp_path / "data", strict=False, env={}, settings=SETTINGS)
    await h.start()
    try:
        assert h.host.policy is not None and h.host.policy.access is not None
        ids = [f"t-{i}" for i in range(len(paths))]
        for path, rid in zip(paths, ids, strict=True):
            await h.get(path, headers={"X-Request-Id": rid})
        return h.host.policy.access, ids
    finally:
        await h.aclose()


async def test_one_text_line_per_request_after_flush(tmp_path):
    with routed(tmp_path, LogFormatter("text")) as path:
        log, ids = await serve(tmp_path, ["/api/open", "/api/me", "/api/open"])
        assert "buffered" in repr(log)
        log.flush()
        lines = path.read_text().splitlines(keepends=True)
    assert [TEXT_LINE.fullmatch(line).groups() for line in lines] == [  # type: ignore[union-attr]
        ("/api/open", "200", ids[0]), ("/api/me", "401", ids[1]), ("/api/open", "200", ids[2])]


async def test_lines_are_written_soon_without_an_explicit_flush(tmp_path):
    with routed(tmp_path, LogFormatter("text")) as path:
        h = InProcessHarness(app, tmp_path / "data", strict=False, env={}, settings=SETTINGS)
        await h.start()
        try:
            await h.get("/api/open", headers={"X-Request-Id": "soon"})
            await asyncio.sleep(access_module.FLUSH_AFTER * 3)
            assert "request_id=soon " in path.read_text()
        finally:
            await h.aclose()


async def test_json_lines_parse_and_carry_the_fields(tmp_path):
    with routed(tmp_path, LogFormatter("json", {"process": "main", "replica": 0})) as path:
        log, ids = await serve(tmp_path, ["/api/open", "/api/me"])
        log.flush()
        lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(x["path"], x["status"], x["request_id"]) for x in lines] == [
        ("/api/open", 200, ids[0]), ("/api/me", 401, ids[1])]
    first = lines[0]
    assert (first["level"], first["logger"], first["process"], first["user"]) == (
        "INFO", "amoeba.access", "main", None)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert first["message"].startswith("method=GET path=/api/open status=200 ")


@pytest.mark.parametrize("off", ["disabled", "level", "setting"])
async def test_nothing_is_written_when_the_logger_is_off(tmp_path, off):
    with routed(tmp_path, LogFormatter("text")) as path:
        if off == "disabled":
            ACCESS.disabled = True
        elif off == "level":
            ACCESS.setLevel(logging.WARNING)
        h = InProcessHarness(app, tmp_path / "data", strict=False, env={},
                             settings={**SETTINGS, "access_log": off != "setting"})
        await h.start()
        try:
            assert h.host.policy is not None
            log = h.host.policy.access
            assert (log is None) == (off == "setting")
            await h.get("/api/open")
            if log is not None:
                log.flush()
            assert path.read_text() == ""
            # The same listener writes once the logger is on again: the check is live.
            ACCESS.disabled = False
            ACCESS.setLevel(logging.INFO)
            await h.get("/api/open", headers={"X-Request-Id": "back"})
            if log is not None:
                log.flush()
            assert ("request_id=back " in path.read_text()) == (off != "setting")
        finally:
            await h.aclose()


def test_writes_are_whole_lines_of_at_most_pipe_buf(monkeypatch):
    writes: list[bytes] = []

    def write(fd: int, data: Any) -> int:
        writes.append(bytes(data))
        return len(data)

    monkeypatch.setattr(access_module.os, "write", write)
    lines = [f"line {i} {'x' * (i % 200)}\n".encode() for i in range(300)]
    long = b"y" * (select.PIPE_BUF + 10) + b"\n"
    access_module._write_chunks(1, b"".join([*lines[:150], long, *lines[150:]]))
    assert b"".join(writes) == b"".join([*lines[:150], long, *lines[150:]])
    assert all(w.endswith(b"\n") for w in writes)
    assert [w for w in writes if len(w) > select.PIPE_BUF] == [long]


def test_ordinary_records_as_json_lines():
    record = logging.LogRecord("amoeba.host", logging.WARNING, __file__, 1, "slow %s", ("x",), None)
    record.service = "vacancy"
    line = json.loads(LogFormatter("json", {"process": "main", "replica": 1}).format(record))
    assert {k: line[k] for k in ("level", "logger", "process", "replica", "message", "service")} == {
        "level": "WARNING", "logger": "amoeba.host", "process": "main", "replica": 1,
        "message": "slow x", "service": "vacancy"}
    assert re.fullmatch(r"\S+Z WARNING amoeba\.host: slow x", LogFormatter("text").format(record))


def test_log_format_setting_is_checked(monkeypatch):
    monkeypatch.setenv("AMOEBA_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="AMOEBA_LOG_FORMAT='xml' is not text, json or auto"):
        configure_logging()


def test_logging_configured_otherwise_gets_records(caplog):
    with caplog.at_level(logging.INFO, logger="amoeba.access"):
        log = AccessLog()
        log.write("GET", "/x", 204, 0.5, "r-1", "ann", "10.0.0.1")
    assert "records" in repr(log)
    [record] = [r for r in caplog.records if r.name == "amoeba.access"]
    assert record.getMessage().endswith(
        "status=204 duration_ms=0.50 request_id=r-1 trace_id=- user=ann ip=10.0.0.1")
