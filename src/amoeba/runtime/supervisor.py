"""``amoeba run TOPOLOGY``: start every process and replica of a topology as
a child, prefix their output, restart a crashed child with backoff, and stop
them all cleanly on Ctrl-C / SIGTERM (exit 0).

Start order (:mod:`amoeba.runtime.order`): a process starts once every
process it calls answers ``/readyz`` with 200 on each listener, so its
first calls find their callees listening.  Processes in a cycle start
together.  A caller is spawned at once all the same, held at a start gate
(``AMOEBA_START_GATE``: it reads ``go`` from its stdin) after it imported
and checked its app and opened its resources, and before anything that may
call another process (``start()`` hooks, event delivery, listeners): the
slow part of starting overlaps its callees', the calls do not.

Giving up: a child that dies before it was ever ready failed *at startup*.
A deterministic failure there (a missing driver, a bad setting, a port in
use, an exception in a service's ``start()``) would fail the same way for
ever, so the supervisor does not restart it again when it

* exits with 78 (``EX_CONFIG``: the process itself said its configuration
  is wrong), at once;
* fails at startup twice in a row the same way (same exit code, same cause
  read from its last output lines, :mod:`amoeba.runtime.cause`);
* fails at startup ``MAX_START_FAILURES`` times in a row whatever the cause.

It then stops every other child and exits non-zero (the child's exit code
when it is one, else 1), with one ``amoeba run: process P failed to start
...: <cause>`` line on stderr.  A child that was ready and then crashed is
restarted with backoff, as before.

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
import contextlib
import ctypes
import os
import secrets
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from amoeba.observe.fetch import FetchError, fetch
from amoeba.runtime.cause import same_cause, startup_cause
from amoeba.runtime.order import callees, start_after, start_waves
from amoeba.runtime.preflight import EX_CONFIG  # a configuration problem: a restart cannot fix it
from amoeba.runtime.process import START_GATE, log_style
from amoeba.topology.model import Topology

if TYPE_CHECKING:
    from amoeba.app import App

__all__ = ["Supervisor"]

MAX_BACKOFF = 30.0
STABLE_AFTER = 30.0  # a child that ran this long gets its backoff reset
ROLL_READY = 60.0  # seconds a restarted child has to answer /readyz 200
MAX_START_FAILURES = 5  # startup failures in a row, even with different causes
NOT_READY_NOTICE = 30.0  # seconds without /readyz 200 before saying what it answers
TAIL_LINES = 60  # output lines of a starting child kept to find why it died


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
    ready: bool = False  # this incarnation answered /readyz 200 on every listener
    held: bool = False  # waits at its start gate (stopped by closing its stdin, not a signal)
    first_ready: asyncio.Event = field(default_factory=asyncio.Event)  # some incarnation did
    tail: deque[bytes] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    start_failures: int = 0  # startup failures in a row
    last_failure: tuple[int, str] | None = None  # (exit code, cause) of the last one



@dataclass(frozen=True)
class _GaveUp:
    """Why the supervisor stopped everything: a child that cannot start."""

    label: str
    code: int
    cause: str
    how: str  # "", "twice", "5 times in a row"

    def exit_code(self) -> int:
        return self.code if 0 < self.code < 126 else 1

    def __str__(self) -> str:
        what = f"process {self.label} failed to start{' ' + self.how if self.how else ''}"
        if not self.cause:
            how = f"was killed by signal {-self.code}" if self.code < 0 \
                else f"exited with code {self.code}"
            return f"{what}: it {how} before it was ready and printed no cause (its output is above)"
        first, *rest = self.cause.splitlines()
        more = "".join(f"\n{line if line.startswith(' ') else '    ' + line}" for line in rest)
        return f"{what}: {first}{more}"


class Supervisor:
    def __init__(self, topology_path: str, topo: Topology, *, app: App | None = None,
                 strict: bool = False):
        """``app`` gives the start order (who calls whom); without it every
        process starts at once."""
        self.path = topology_path
        self.topo = topo
        self.strict = strict
        self.gave_up: _GaveUp | None = None
        self.roll: asyncio.Task[None] | None = None
        self.children = [
            _Child(p.name, i, p.name if p.replicas == 1 else f"{p.name}.{i}")
            for p in topo.processes.values() for i in range(p.replicas)
        ]
        graph = callees(app, topo) if app is not None else {p: frozenset() for p in topo.processes}
        self.after = start_after(graph)
        self.width = max(len(c.label) for c in self.children)
        self.env = dict(os.environ)
        self.env.setdefault("AMOEBA_SECRET", secrets.token_hex(32))
        self.env["PYTHONUNBUFFERED"] = "1"
        # Children write to a pipe: they log as the supervisor's own stderr would
        # (text on a terminal, JSON lines otherwise) unless told.
        self.env.setdefault("AMOEBA_LOG_FORMAT", log_style())
        self._stop = asyncio.Event()

    @property
    def stopping(self) -> bool:
        """Ctrl-C / SIGTERM came, or a child cannot start: no more (re)starts."""
        return self._stop.is_set()

    def __repr__(self) -> str:
        return f"<Supervisor {self.topo.name} children={[c.label for c in self.children]}>"

    def say(self, text: str) -> None:
        sys.stdout.write(f"{'amoeba':>{self.width}} | {text}\n")
        sys.stdout.flush()

    async def _pump(self, child: _Child, stream: asyncio.StreamReader) -> None:
        # Whatever the child wrote since the last read, prefixed line by line
        # and written at once: a busy child's access log costs one write per
        # batch here, not one per line.  Until the child is ready its lines
        # are also kept (the last few), to say why it died if it does.
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
                if not child.ready:
                    child.tail.extend(lines)
        if rest:
            out.write(prefix + rest + b"\n")
            out.flush()
            child.tail.append(rest)

    async def _spawn(self, child: _Child, gated: bool) -> None:
        """Start ``child``; ``gated``: it waits for a go on its stdin before it
        starts (see :meth:`_open_gate`)."""
        argv = [sys.executable, "-m", "amoeba", "run", self.path,
                "--process", child.process, "--replica", str(child.replica)]
        if self.strict:
            argv.append("--strict")
        env = dict(self.env)
        env.update(self.topo.processes[child.process].env)
        if gated:
            env[START_GATE] = "stdin"
        child.ready = False
        child.held = gated
        child.tail.clear()
        child.proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.PIPE if gated else asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            start_new_session=True)
        child.started = time.monotonic()
        assert child.proc.stdout is not None
        child.pumps = [asyncio.get_running_loop().create_task(self._pump(child, child.proc.stdout))]

    async def _until_set(self, events: list[asyncio.Event]) -> bool:
        """Wait until every event is set, unless the supervisor stops first
        (then False)."""
        loop = asyncio.get_running_loop()
        stop = loop.create_task(self._stop.wait())
        waits = {loop.create_task(e.wait()) for e in events}
        try:
            while waits and not stop.done():
                _, waits = await asyncio.wait(waits | {stop}, return_when=asyncio.FIRST_COMPLETED)
                waits.discard(stop)
        finally:
            for task in (stop, *waits):
                task.cancel()
        return not self.stopping

    def _callees(self, child: _Child) -> tuple[list[_Child], str]:
        """The children ``child`` waits for before it starts, and who they are
        in words ("vacancy is", "a, b are")."""
        after = self.after.get(child.process, frozenset())
        deps = [c for c in self.children if c.process in after and not c.first_ready.is_set()]
        return deps, f"{', '.join(sorted(after))} {'is' if len(after) == 1 else 'are'}"

    async def _open_gate(self, child: _Child, proc: asyncio.subprocess.Process) -> None:
        """Write ``go`` to a gated child once every replica of every process it
        calls was ready once; close its stdin without it when stopping."""
        deps, who = self._callees(child)
        assert proc.stdin is not None
        go = await self._until_set([c.first_ready for c in deps])
        with contextlib.suppress(OSError):
            if go and proc.returncode is None:
                self.say(f"{child.label} goes on: {who} ready")
                child.held = False  # from now on a stop is a SIGINT, as for the others
                proc.stdin.write(b"go\n")
            # Without a go, end of input stops it: it may still be importing, where
            # a SIGINT would print a KeyboardInterrupt traceback.
            proc.stdin.close()

    async def _watch(self, child: _Child) -> None:
        while True:
            deps, who = self._callees(child)
            await self._spawn(child, gated=bool(deps))
            proc = child.proc
            assert proc is not None
            if self.stopping and not child.held:  # the stop came while it was being spawned
                proc.send_signal(signal.SIGINT)
            held = f", held until {who} ready" if deps else ""
            self.say(f"{child.label} started (pid {proc.pid}){held}")
            loop = asyncio.get_running_loop()
            tasks = [loop.create_task(self._await_ready(child, proc))]
            if deps:
                tasks.append(loop.create_task(self._open_gate(child, proc)))
            code = await proc.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*child.pumps)
            if self.stopping:
                return
            ran = time.monotonic() - child.started
            how = f"signal {-code}" if code < 0 else f"code {code}"
            if child.rolling:
                child.rolling = False
                self.say(f"{child.label} stopped ({how}) for the rolling restart; starting it")
                continue
            if not child.ready:
                if self._failed_start(child, code, how, ran):
                    return
            else:
                child.start_failures = 0
                child.last_failure = None
                if ran > STABLE_AFTER:
                    child.backoff = 0.5
                child.restarts += 1
                self.say(f"{child.label} exited ({how}) after {ran:.1f}s; restarting in "
                         f"{child.backoff:.1f}s (restart {child.restarts})")
            with contextlib.suppress(TimeoutError):  # the backoff, cut short by a stop
                await asyncio.wait_for(self._stop.wait(), child.backoff)
            child.backoff = min(child.backoff * 2, MAX_BACKOFF)
            if self.stopping:
                return

    def _failed_start(self, child: _Child, code: int, how: str, ran: float) -> bool:
        """A child died before it was ready: whether to give up (and stop all)."""
        cause = startup_cause([b.decode("utf-8", "replace") for b in child.tail])
        child.start_failures += 1
        last, child.last_failure = child.last_failure, (code, cause)
        said = f" ({cause.splitlines()[0]})" if cause else ""
        if code == EX_CONFIG:
            verdict = ""
        elif last is not None and last[0] == code and same_cause(last[1], cause):
            verdict = "twice"
        elif child.start_failures >= MAX_START_FAILURES:
            verdict = f"{child.start_failures} times in a row"
        else:
            child.restarts += 1
            self.say(f"{child.label} exited ({how}) after {ran:.1f}s, before it was ready"
                     f"{said}; restarting in {child.backoff:.1f}s (restart {child.restarts})")
            return False
        why = ("a configuration problem" if code == EX_CONFIG
               else f"failed at startup {verdict}")
        self.say(f"{child.label} exited ({how}) after {ran:.1f}s, before it was ready: {why}; "
                 f"not restarting it, stopping the others")
        if self.gave_up is None:
            self.gave_up = _GaveUp(child.label, code, cause, verdict)
        self._stop.set()
        return True

    async def _await_ready(self, child: _Child, proc: asyncio.subprocess.Process) -> None:
        """Poll the new child's ``/readyz`` until it answers 200 on every listener."""
        began = time.monotonic()
        pause = 0.05
        noticed = False
        while proc.returncode is None:
            ok, detail = await self._probe(child)
            if ok and proc.returncode is None:
                child.ready = True
                child.first_ready.set()
                self.say(f"{child.label} is ready ({time.monotonic() - began:.1f}s)")
                return
            if not noticed and time.monotonic() - began > NOT_READY_NOTICE:
                noticed = True
                self.say(f"{child.label} is not ready after {NOT_READY_NOTICE:.0f}s: {detail}")
            await asyncio.sleep(pause)
            # Quick while starting; then slower, since every probe is an access-log line.
            pause = min(pause * 1.5, 0.25) if not noticed else 2.0

    async def _probe(self, child: _Child) -> tuple[bool, str]:
        """Whether every listener of ``child`` answers ``/readyz`` with 200, and
        what the first one that does not says.  A listener on port 0 (a port
        the system picks) cannot be probed from here and is not waited for."""
        for lst in self.topo.processes[child.process].listeners:
            port = lst.port_for(child.replica)
            if not port:
                continue
            host = "127.0.0.1" if lst.host in ("", "0.0.0.0", "::") else lst.host
            try:
                status, body = await fetch(host, port, "/readyz")
            except FetchError as exc:
                return False, str(exc)
            if status != 200:
                return False, f"http://{host}:{port}/readyz answers {status} " \
                              f"{body[:300].decode('utf-8', 'replace')}"
        return True, ""

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
            while not self.stopping and (child.proc is old or not child.ready):
                if time.monotonic() > end:
                    self.say(f"rolling restart stopped: {child.label} is not ready after "
                             f"{ROLL_READY:.0f}s; the processes after it keep their old version")
                    return
                await asyncio.sleep(0.1)
            if self.stopping:
                return
            self.say(f"{child.label} is back and ready")
            await asyncio.sleep(self.topo.settings.drain_delay)
        self.say("rolling restart done")

    async def run(self) -> int:
        """Run until Ctrl-C / SIGTERM (0), or until a child cannot start
        (non-zero, the cause on stderr)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        waves = start_waves(self.after)
        order = " then ".join(", ".join(w) for w in waves) if len(waves) > 1 else ""
        self.say(f"topology {self.topo.name!r} from {self.path}: starting "
                 f"{', '.join(c.label for c in self.children)}"
                 + (f" (in dependency order: {order})" if order else ""))
        watchers = [loop.create_task(self._watch(c)) for c in self.children]
        await self._stop.wait()
        if self.roll is not None:
            self.roll.cancel()
        # SIGINT: the children drain without drain_delay (no replica is left
        # that a balancer could send to instead).
        self.say("stopping: SIGINT to every process, waiting for in-flight requests")
        for c in self.children:
            if c.proc is not None and c.proc.returncode is None and not c.held:
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
        if self.gave_up is not None:
            print(f"amoeba run: {self.gave_up}", file=sys.stderr, flush=True)
            return self.gave_up.exit_code()
        return 0
