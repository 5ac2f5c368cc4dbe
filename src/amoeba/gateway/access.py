"""The access log: one line per request on public listeners, as logger
``amoeba.access`` at INFO, in the shape of the process's other log lines
(here folded; it is one line)::

    2025-05-01T12:00:00.123Z INFO amoeba.access: method=POST path=/api/v1/purchase
        status=200 duration_ms=0.42 request_id=9f3a-1c trace_id=4bf9… user=- ip=10.0.0.7

or, in JSON style (``AMOEBA_LOG_FORMAT=json``, or ``auto`` when stderr is not a
terminal), one JSON object per line: the keys of every JSON log line (time,
level, logger, process, replica, message) and the fields (method, path,
status, duration_ms, request_id, trace_id, user, ip).

Why it does not call ``Logger.info`` per request: a LogRecord, the handler
lock and a write+flush per request cost more than half of a small handler's
throughput.  So when the process's logging is what ``configure_logging`` set
up (the records of ``amoeba.access`` reach exactly one stream handler, whose
formatter is a :class:`LineFormat`), the line is one f-string appended to a
buffer, and the buffer is written ~50 ms after its first line (sooner when it
fills), at exit, or on :meth:`AccessLog.flush`.  It is written under the
handler's lock in whole-line chunks of at most ``PIPE_BUF`` bytes, so it never
splits a line of, or inside, another writer of the same pipe.  That choice is
made once, when the AccessLog is built; logging configured any other way (a
test's caplog, a user's handlers) gets ordinary records with the fields as
``extra=``.

Probes (``/healthz``, ``/readyz``) and the observability endpoints (``/metrics``,
``/_amoeba/...``: the dashboard's polls, Prometheus' scrapes) are not the
app's traffic and are left out, unless ``settings.access_log: all``.

Off with ``settings.access_log: false``, or with standard logging config:
``amoeba.access`` disabled or above INFO.  :meth:`AccessLog.active` is
checked per request, so that is one cached level check and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import time
import weakref
from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

__all__ = ["AccessLog", "LineFormat", "iso_utc"]

log = logging.getLogger("amoeba.access")

FLUSH_AFTER = 0.05  # seconds from the first buffered line to its write
MAX_BUFFERED = 1024  # lines; a full buffer is written at once
_encode = msgspec.json.Encoder(enc_hook=str).encode


_last_stamp = (-1, "")  # (milliseconds, stamp): one tuple, so threads see a matching pair


def iso_utc(t: float) -> str:
    """``2025-05-01T12:00:00.123Z`` for a ``time.time()``; the same millisecond is
    formatted once, because a busy listener writes many lines per millisecond."""
    global _last_stamp
    ms = int(t * 1000)
    last_ms, stamp = _last_stamp
    if ms != last_ms:
        second, milli = divmod(ms, 1000)
        stamp = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second))}.{milli:03d}Z"
        _last_stamp = (ms, stamp)
    return stamp


@runtime_checkable
class LineFormat(Protocol):
    """What a formatter declares to let the access log write lines of its shape
    itself: ``text`` is ``{iso_utc} {LEVEL} {logger}: {message}``, ``json`` one
    object with time, level, logger, the constant ``fields``, message, extras."""

    line_style: Literal["text", "json"]
    fields: Mapping[str, object]


class AccessLog:
    def __init__(self, enabled: bool = True, logger: logging.Logger = log, *,
                 everything: bool = False):
        self.enabled = enabled
        self.everything = everything  # probes and observability requests too
        self.logger = logger
        self._lines: list[str] = []
        self._handler = _sole_handler(logger)
        self._style: Literal["text", "json"] | None = None
        self._json_head = ""
        if self._handler is not None:
            fmt = self._handler.formatter
            assert isinstance(fmt, LineFormat)
            self._style = fmt.line_style
            # "level":…,"logger":…,"process":…: the same on every line, encoded once.
            self._json_head = _encode({"level": "INFO", "logger": logger.name,
                                       **fmt.fields}).decode()[1:-1]
            # Holds the buffer and handler, not self: the lines are written at
            # exit, or when a host's AccessLog is dropped with lines pending.
            weakref.finalize(self, _write_lines, self._lines, self._handler)

    def __repr__(self) -> str:
        how = f"{self._style} lines, buffered" if self._handler else "records"
        return f"<AccessLog {'on' if self.enabled else 'off'} {how}>"

    def active(self) -> bool:
        """Checked per request: the level can change while the process runs."""
        return self.enabled and self.logger.isEnabledFor(logging.INFO)

    def write(self, method: str, path: str, status: int, duration_ms: float, request_id: str,
              user: str | None, ip: str, trace_id: str = "") -> None:
        message = (f"method={method} path={path} status={status} duration_ms={duration_ms:.2f} "
                   f"request_id={request_id} trace_id={trace_id or '-'} user={user or '-'} ip={ip}")
        if self._style is None:
            self.logger.info(message, extra={
                "method": method, "path": path, "status": status, "duration_ms": duration_ms,
                "request_id": request_id, "trace_id": trace_id, "user": user, "ip": ip})
            return
        if self._style == "text":
            line = f"{iso_utc(time.time())} INFO {self.logger.name}: {message}\n"
        else:
            rest = _encode({"message": message, "method": method, "path": path, "status": status,
                            "duration_ms": round(duration_ms, 3), "request_id": request_id,
                            "trace_id": trace_id, "user": user, "ip": ip}).decode()
            line = f'{{"time":"{iso_utc(time.time())}",{self._json_head},{rest[1:]}\n'
        lines = self._lines
        lines.append(line)
        if len(lines) == 1:
            try:
                asyncio.get_running_loop().call_later(FLUSH_AFTER, self.flush)
            except RuntimeError:  # no event loop: nothing would come back for the line
                self.flush()
        elif len(lines) >= MAX_BUFFERED:
            self.flush()

    def flush(self) -> None:
        """Write the buffered lines now (a no-op when they go through ``logging``)."""
        if self._handler is not None:
            _write_lines(self._lines, self._handler)


def _sole_handler(logger: logging.Logger) -> logging.StreamHandler[Any] | None:
    """The one handler INFO records of ``logger`` would reach, when writing lines
    to its stream is exactly what ``logging`` would do; else None."""
    reached: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        reached += [h for h in current.handlers if h.level <= logging.INFO]
        current = current.parent if current.propagate else None
    if len(reached) != 1:
        return None
    handler = reached[0]
    if (not isinstance(handler, logging.StreamHandler) or handler.filters
            or not isinstance(handler.formatter, LineFormat)):
        return None
    return handler


def _write_lines(lines: list[str], handler: logging.StreamHandler[Any]) -> None:
    if not lines:
        return
    text = "".join(lines)
    lines.clear()
    # The handler's lock keeps other threads' records out of the middle of ours.
    handler.acquire()
    try:
        stream = handler.stream
        stream.flush()  # what logging wrote before these lines goes first
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # StringIO and the like
            stream.write(text)
            stream.flush()
            return
        _write_chunks(fd, text.encode(getattr(stream, "encoding", None) or "utf-8", "backslashreplace"))
    except (OSError, ValueError):
        pass  # stderr is gone (closed pipe or file): nowhere left to say so
    finally:
        handler.release()


def _write_chunks(fd: int, data: bytes) -> None:
    """Whole lines, at most PIPE_BUF bytes per write where lines allow: a pipe
    does not interleave such a write with other writers'."""
    view, start, end = memoryview(data), 0, len(data)
    while start < end:
        stop = end
        if end - start > select.PIPE_BUF:
            cut = data.rfind(b"\n", start, start + select.PIPE_BUF)
            if cut < 0:  # one line longer than PIPE_BUF: write it alone
                cut = data.find(b"\n", start + select.PIPE_BUF)
            stop = end if cut < 0 else cut + 1
        while start < stop:
            start += os.write(fd, view[start:stop])
