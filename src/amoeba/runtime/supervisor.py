"""``amoeba run TOPOLOGY``: start every process and replica of a topology as
a child, prefix their output, restart a crashed child with backoff, and stop
them all cleanly on Ctrl-C / SIGTERM (exit 0).

``SIGHUP`` restarts every child, one at a time (a rolling restart, to load
new code or configuration): SIGTERM to one replica, which drains; the new one
is started at once and must answer ``/readyz`` with 200 on every listener,
then ``drain_delay`` passes (the time a balancer's health checks take to see
it back) before the next replica goes.  With two or more replicas of every
process behind a balancer, no request fails.  A child that does not come
back ready within ``ROLL_READY`` stops the roll (the rest keep running).

Children run ``python -m amoeba run TOPOLOGY --process P --replica N``
exactly as systemd or Kubernetes would, with a shared ``AMOEBA_SECRET``
(generated here when the environment has none).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field

from amoeba.observe.fetch import FetchError, fetch
from amoeba.topology.model import Topology

__all__ = ["Supervisor"]

MAX_BACKOFF = 30.0
STABLE_AFTER = 30.0  # a child that ran this long gets its backoff reset
ROLL_READY = 60.0  # seconds a restarted child has to answer /readyz 200


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class _Child:
    process: str
    replica: int
    label: str
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    backoff: float = 0.5
    restarts: int = 0
    rolling: bool = False  # stopped by a rolling restart: start again at once
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


class Supervisor:
    def __init__(self, topology_path: str, topo: Topology, *, strict: bool = False):
        self.path = topology_path
        self.topo = topo
        self.strict = strict
        self.stopping = False
        self.roll: asyncio.Task[None] | None = None
        self.children = [
            _Child(p.name, i, p.name if p.replicas == 1 else f"{p.name}.{i}")
            for p in topo.processes.values() for i in range(p.replicas)
        ]
        self.width = max(len(c.label) for c in self.children)
        self.env = dict(os.environ)
        self.env.setdefault("AMOEBA_SECRET", secrets.token_hex(32))
        self.env["PYTHONUNBUFFERED"] = "1"
        # Children write to a pipe: they log as the supervisor's own stderr would
        # (text on a terminal, JSON lines otherwise) unless told.
        from amoeba.runtime.process import log_style

        self.env.setdefault("AMOEBA_LOG_FORMAT", log_style())

    def __repr__(self) -> str:
        return f"<Supervisor {self.topo.name} children={[c.label for c in self.children]}>"

    def say(self, text: str) -> None:
        sys.stdout.write(f"{'amoeba':>{self.width}} | {text}\n")
        sys.stdout.flush()

    async def _pump(self, child: _Child, stream: asyncio.StreamReader) -> None:
        # Whatever the child wrote since the last read, prefixed line by line
        # and written at once: a busy child's access log costs one write per
        # batch here, not one per line.
        prefix = f"{child.label:>{self.width}} | ".encode()
        out = sys.stdout.buffer
        rest = b""
        while chunk := await stream.read(1 << 16):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            if len(rest) > 1 << 16:  # a line without end: pass it on anyway
                lines.append(rest)
                rest = b""
            if lines:
                out.write(b"".join(prefix + line + b"\n" for line in lines))
                out.flush()
        if rest:
            out.write(prefix + rest + b"\n")
            out.flush()

    async def _spawn(self, child: _Child) -> None:
        argv = [sys.executable, "-m", "amoeba", "run", self.path,
                "--process", child.process, "--replica", str(child.replica)]
        if self.strict:
            argv.append("--strict")
        env = dict(self.env)
        env.update(self.topo.processes[child.process].env)
        child.proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent,
            start_new_session=True)
        child.started = time.monotonic()
        assert child.proc.stdout is not None
        child.pumps = [asyncio.get_running_loop().create_task(self._pump(child, child.proc.stdout))]

    async def _watch(self, child: _Child) -> None:
        while True:
            await self._spawn(child)
            assert child.proc is not None
            code = await child.proc.wait()
            await asyncio.gather(*child.pumps)
            if self.stopping:
                return
            ran = time.monotonic() - child.started
            if child.rolling:
                child.rolling = False
                self.say(f"{child.label} stopped (code {code}) for the rolling restart; starting it")
                continue
            if ran > STABLE_AFTER:
                child.backoff = 0.5
            child.restarts += 1
            how = f"signal {-code}" if code < 0 else f"code {code}"
            self.say(f"{child.label} exited ({how}) after {ran:.1f}s; restarting in "
                     f"{child.backoff:.1f}s (restart {child.restarts})")
            await asyncio.sleep(child.backoff)
            child.backoff = min(child.backoff * 2, MAX_BACKOFF)
            if self.stopping:
                return

    def _on_hup(self) -> None:
        if self.stopping:
            return
        if self.roll is not None and not self.roll.done():
            self.say("SIGHUP: a rolling restart is already running; ignored")
            return
        self.roll = asyncio.get_running_loop().create_task(self._roll())

    async def _roll(self) -> None:
        self.say(f"rolling restart of {len(self.children)} process(es), one at a time")
        for child in self.children:
            old = child.proc
            if self.stopping:
                return
            if old is not None and old.returncode is None:
                child.rolling = True
                old.send_signal(signal.SIGTERM)
            end = time.monotonic() + self.topo.settings.grace + self.topo.settings.drain_delay \
                + ROLL_READY
            while not self.stopping and not await self._ready(child, old):
                if time.monotonic() > end:
                    self.say(f"rolling restart stopped: {child.label} is not ready after "
                             f"{ROLL_READY:.0f}s; the processes after it keep their old version")
                    return
                await asyncio.sleep(0.1)
            self.say(f"{child.label} is back and ready")
            await asyncio.sleep(self.topo.settings.drain_delay)
        self.say("rolling restart done")

    async def _ready(self, child: _Child, old: asyncio.subprocess.Process | None) -> bool:
        """Whether a new process of ``child`` runs and every listener answers
        ``/readyz`` with 200."""
        proc = child.proc
        if proc is None or proc is old or proc.returncode is not None:
            return False
        for lst in self.topo.processes[child.process].listeners:
            host = "127.0.0.1" if lst.host in ("", "0.0.0.0", "::") else lst.host
            try:
                status, _ = await fetch(host, lst.port_for(child.replica), "/readyz")
            except FetchError:
                return False
            if status != 200:
                return False
        return True

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        self.say(f"topology {self.topo.name!r} from {self.path}: starting "
                 f"{', '.join(c.label for c in self.children)}")
        watchers = [loop.create_task(self._watch(c)) for c in self.children]
        await stop.wait()
        self.stopping = True
        if self.roll is not None:
            self.roll.cancel()
        # SIGINT: the children drain without drain_delay (no replica is left
        # that a balancer could send to instead).
        self.say("stopping: SIGINT to every process, waiting for in-flight requests")
        for c in self.children:
            if c.proc is not None and c.proc.returncode is None:
                c.proc.send_signal(signal.SIGINT)
        deadline = self.topo.settings.grace + self.topo.settings.drain_delay + 5.0
        try:
            await asyncio.wait_for(asyncio.gather(*watchers), deadline)
        except TimeoutError:
            for c in self.children:
                if c.proc is not None and c.proc.returncode is None:
                    self.say(f"{c.label} did not stop within {deadline:.0f}s: SIGKILL")
                    c.proc.kill()
            await asyncio.gather(*watchers, return_exceptions=True)
        self.say("stopped")
        return 0

