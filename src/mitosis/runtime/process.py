"""Run exactly one process (one replica) of a topology in this interpreter:
what ``mitosis run TOPOLOGY --process NAME`` does, and what systemd or
Kubernetes run."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
from pathlib import Path

from mitosis.app import App
from mitosis.runtime.host import Host, ListenError
from mitosis.spec import SpecError
from mitosis.topology import Problem, Topology, TopologyError, bind, load_topology

__all__ = ["configure_logging", "load_app", "load_bound", "run_process", "serve"]

log = logging.getLogger("mitosis.process")


def configure_logging() -> None:
    level = os.environ.get("MITOSIS_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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
        raise TopologyError([Problem(where.file, where.line, "app",
                                     f"cannot import {module_name!r}: {exc}",
                                     "check app: and pythonpath: (relative to the topology file)")]
                            ) from None
    except (SpecError, ValueError) as exc:
        raise TopologyError([Problem(where.file, where.line, "app",
                                     f"importing {module_name!r} failed: {exc}",
                                     "fix the service class named in the message")]) from None
    app = getattr(module, attr or "app", None)
    if not isinstance(app, App):
        raise TopologyError([Problem(where.file, where.line, "app",
                                     f"{topo.app!r} is not a mitosis.App ({type(app).__name__})",
                                     "point app: at the module-level App(...) object")])
    return app


def load_bound(path: str | Path) -> tuple[App, Topology]:
    topo = load_topology(path)
    app = load_app(topo)
    return app, bind(topo, app)


async def serve(host: Host) -> None:
    """Start the host and run until SIGTERM/SIGINT, then drain."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await host.start()
    await stop.wait()
    log.info("%s: draining", host)
    await host.drain()
    log.info("%s: stopped", host)


def run_process(path: str, process: str, replica: int = 0, *, strict: bool = False) -> int:
    configure_logging()
    app, topo = load_bound(path)
    for key, value in topo.processes[process].env.items():
        os.environ.setdefault(key, value)
    host = Host(app, topo, process, replica, strict=strict)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(host))
    except ListenError as exc:
        print(f"mitosis run: {exc}", file=sys.stderr)
        return 1
    return 0
