"""Run exactly one process (one replica) of a topology in this interpreter:
what ``amoeba run TOPOLOGY --process NAME`` does, and what systemd or
Kubernetes run."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Literal

import msgspec

from amoeba import context
from amoeba.app import App
from amoeba.drivers import MissingDriver, UnsupportedURL
from amoeba.gateway.access import iso_utc
from amoeba.runtime.host import Host, ListenError, data_dir
from amoeba.runtime.preflight import EX_CONFIG, preflight
from amoeba.spec import SpecError
from amoeba.topology import Problem, Topology, TopologyError, bind, load_topology

__all__ = ["LogFormatter", "configure_logging", "load_app", "load_bound", "report", "run_process",
           "serve"]

log = logging.getLogger("amoeba.process")
START_GATE = "AMOEBA_START_GATE"  # "stdin": wait for the supervisor's go (amoeba run sets it)


class LogFormatter(logging.Formatter):
    """``2025-05-01T12:00:00.123Z INFO amoeba.host: message`` lines (UTC), or
    with ``style="json"`` one JSON object per line: time, level, logger, the
    constant ``fields`` (process, replica), message, any ``extra=`` fields, and
    ``exc``/``stack`` when present.  A :class:`~amoeba.gateway.access.LineFormat`,
    so the access log writes its lines in the same shape without a LogRecord."""

    def __init__(self, style: Literal["text", "json"] = "text",
                 fields: Mapping[str, object] | None = None):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.line_style: Literal["text", "json"] = style
        self.fields: Mapping[str, object] = dict(fields or {})

    def __repr__(self) -> str:
        return f"<LogFormatter {self.line_style} {dict(self.fields)}>"

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_utc(record.created)

    def format(self, record: logging.LogRecord) -> str:
        if self.line_style == "text":
            return super().format(record)
        line: dict[str, object] = {"time": iso_utc(record.created), "level": record.levelname,
                                   "logger": record.name, **self.fields}
        # The call being served when the record was made (the record is formatted
        # in the same task, so the context is still the caller's).
        service, rid, trace = context.service.get(), context.request_id.get(), context.trace_id()
        if service:
            line["service"] = service
        if rid:
            line["request_id"] = rid
        if trace:
            line["trace_id"] = trace
        line["message"] = record.getMessage()
        line.update((k, v) for k, v in record.__dict__.items()
                    if k not in _RECORD_KEYS and not k.startswith("_"))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _encode_json(line).decode()


_RECORD_KEYS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_encode_json = msgspec.json.Encoder(enc_hook=repr).encode


def log_style() -> Literal["text", "json"]:
    """``AMOEBA_LOG_FORMAT``: ``text``, ``json``, or ``auto`` (the default):
    text when stderr is a terminal, JSON lines otherwise (a log collector)."""
    style = os.environ.get("AMOEBA_LOG_FORMAT", "auto").lower()
    if style == "auto":
        return "text" if sys.stderr.isatty() else "json"
    if style not in ("text", "json"):
        raise ValueError(f"AMOEBA_LOG_FORMAT={style!r} is not text, json or auto; "
                         f"fix: unset it, or set AMOEBA_LOG_FORMAT=json")
    return "json" if style == "json" else "text"


def configure_logging(process: str | None = None, replica: int = 0) -> None:
    """Root logging to stderr at ``AMOEBA_LOG_LEVEL`` (default INFO), in the
    style :func:`log_style` says."""
    level = os.environ.get("AMOEBA_LOG_LEVEL", "INFO").upper()
    style = log_style()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter(style,
                                      {"process": process, "replica": replica} if process else None))
    logging.basicConfig(level=level, handlers=[handler])
    # Alembic narrates every step at INFO; amoeba.data says what changed.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))


def load_app(topo: Topology) -> App:
    """Import the ``app:`` named by the topology (after adding its pythonpath)."""
    if not topo.app:
        raise TopologyError([Problem(topo.file, None, "app", "no app is named",
                                     "add app: package.module:attribute")])
    for p in reversed(topo.pythonpath):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    module_name, _, attr = topo.app.partition(":")
    where = Problem(topo.file, topo.lines.get("app"), "app", "", "")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and not (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            # The app's module was found; something it imports is not installed.
            raise TopologyError([_raised_in(topo, module_name, exc,
                                            f"install {exc.name!r} (pip install ...) in the "
                                            f"environment that runs the app")]) from None
        raise TopologyError([Problem(where.file, where.line, "app",
                                     f"cannot import {module_name!r}: {exc}",
                                     "check app: and pythonpath: (relative to the topology file)")]
                            ) from None
    except SpecError as exc:
        if exc.fix is not None:  # one method's fault: said where that method is
            raise TopologyError([Problem(exc.file or where.file, exc.line or where.line,
                                         exc.key or "app", exc.message, exc.fix)]) from None
        raise TopologyError([Problem(where.file, where.line, "app",
                                     f"importing {module_name!r} failed: {exc}",
                                     "fix the service class named in the message")]) from None
    except ValueError as exc:
        raise TopologyError([Problem(where.file, where.line, "app",
                                     f"importing {module_name!r} failed: {exc}",
                                     "fix the service class named in the message")]) from None
    except Exception as exc:  # the app's own code fails on import: where, not a traceback
        raise TopologyError([_raised_in(topo, module_name, exc, "fix the app's code there")]
                            ) from None
    app = getattr(module, attr or "app", None)
    if not isinstance(app, App):
        raise TopologyError([Problem(where.file, where.line, "app",
                                     f"{topo.app!r} is not an amoeba.App ({type(app).__name__})",
                                     "point app: at the module-level App(...) object")])
    return app


def _raised_in(topo: Topology, module: str, exc: BaseException, fix: str) -> Problem:
    """``exc``, raised while importing the app, at the app's innermost line it
    passed through (else the innermost line, else the topology's ``app:``)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    roots = tuple(str(p) for p in topo.pythonpath)
    mine = [f for f in frames if roots and f.filename.startswith(roots)] or frames
    message = f"importing {module!r} raised {type(exc).__name__}: {exc}"
    if not mine:
        return Problem(topo.file, topo.lines.get("app"), "app", message, fix)
    return Problem(mine[-1].filename, mine[-1].lineno, "app", message, fix)


def load_bound(path: str | Path) -> tuple[App, Topology]:
    topo = load_topology(path)
    app = load_app(topo)
    return app, bind(topo, app)


async def serve(host: Host, *, gated: bool = False) -> None:
    """Start the host and run until SIGTERM/SIGINT, then drain.

    SIGTERM (systemd, Kubernetes, a rolling restart) drains with the
    topology's ``drain_delay``, so balancers see ``/readyz`` fail before the
    listener closes; SIGINT (Ctrl-C, or ``amoeba run`` stopping everything,
    when no replica is left to take over) skips that delay."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    delay = True

    def on_signal(sig: signal.Signals) -> None:
        nonlocal delay
        delay = delay and sig == signal.SIGTERM
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    if not await host.start(partial(_go_from_stdin, stop) if gated else None):
        log.info("%s: stopped before it started", host)
        return
    # What startup made (modules, classes, the app) lives as long as the
    # process: keep it out of every later garbage collection, whose full
    # passes would otherwise walk it all and show up as latency spikes.
    gc.freeze()
    await stop.wait()
    log.info("%s: draining%s", host, "" if delay else " (no drain_delay: SIGINT)")
    await host.drain(delay)
    log.info("%s: stopped", host)


def report(path: str | Path, problems: list[Problem]) -> None:
    """Problems on stderr, as ``amoeba check`` prints them."""
    text = "\n".join(str(p) for p in problems)
    print(f"{path}: {len(problems)} problem(s)\n{text}", file=sys.stderr, flush=True)


async def _go_from_stdin(stop: asyncio.Event) -> bool:
    """The start gate under ``amoeba run``: a process that calls others is
    spawned at once, so its imports, checks and resources overlap its callees'
    start, but it starts (``start()`` hooks, event handlers, listeners) only
    when the supervisor writes ``go`` on its stdin, once the processes it calls
    answer ``/readyz``.  False: stopped (a signal, or stdin closed) before."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    line = loop.create_task(reader.readline())
    stopped = loop.create_task(stop.wait())
    try:
        await asyncio.wait({line, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        line.cancel()
        stopped.cancel()
        transport.close()
    return line.done() and not line.cancelled() and line.result() == b"go\n"


def run_process(path: str, process: str, replica: int = 0, *, strict: bool = False) -> int:
    """Run one process until a signal stops it; the exit code (see
    ``runtime/preflight.py``).  Whatever ``amoeba check`` would report stops
    it before anything starts, with ``EX_CONFIG``."""
    configure_logging(process, replica)
    app, topo = load_bound(path)
    if process not in topo.processes:  # before the checks: a usage error, not the topology's
        raise KeyError(f"topology {topo.file} has no process {process!r}; "
                       f"its processes are: {', '.join(topo.processes)}")
    problems = preflight(topo, app, data_dir())
    if problems:
        report(path, problems)
        return EX_CONFIG
    for key, value in topo.processes[process].env.items():
        os.environ.setdefault(key, value)
    host = Host(app, topo, process, replica, strict=strict)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        runner = asyncio.run
    else:
        runner = uvloop.run
    from amoeba.gateway.asgi import LifespanError

    gated = os.environ.pop(START_GATE, "") == "stdin"
    try:
        runner(serve(host, gated=gated))
    except ListenError as exc:
        print(f"amoeba run: {exc}", file=sys.stderr)
        return 1  # another process may let go of it: amoeba run gives up the second time
    except LifespanError as exc:  # said plainly: no traceback to read through
        print(f"amoeba run: {exc}", file=sys.stderr)
        return 1  # the app's startup may depend on something that comes back: restarted
    except (MissingDriver, UnsupportedURL) as exc:  # what preflight saw may have changed since
        print(f"amoeba run: {exc}", file=sys.stderr)
        return EX_CONFIG
    return 0
