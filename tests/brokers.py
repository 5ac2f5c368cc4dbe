"""Private brokers for tests that stop, kill or restart them: a nats-server
with JetStream or a redis-server of the test's own, on a free port, never the
shared ones in servers.py.  Each skips the test when its binary is missing,
and ``close()`` stops it and deletes what it stored."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from require import missing

from amoeba.testing import free_port

__all__ = ["PrivateNats", "PrivateRedis"]


def _binary(name: str, *fallbacks: str) -> str:
    found = shutil.which(name) or next((f for f in fallbacks if Path(f).is_file()), None)
    if found is None:
        missing(f"{name} not installed (needed for a private broker): apt-get install {name}")
    return found


class _Server:
    """One broker process on ``port``, its files under ``dir``."""

    label = "server"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"amoeba-{self.label}-"))
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.proc is not None else "stopped"
        return f"<{type(self).__name__} 127.0.0.1:{self.port} {state}>"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 15.0) -> None:
        """Start it (again: same port, same store) and wait until it serves."""
        assert self.proc is None, f"{self!r}: already running"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        end = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop(signal.SIGKILL)
                raise RuntimeError(f"{self!r} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False


class PrivateNats(_Server):
    """``nats-server -js`` with its JetStream store in a temp dir."""

    label = "nats"

    def __init__(self) -> None:
        super().__init__()
        self.starts = 0  # each start logs "Server is ready" once more

    def argv(self) -> list[str]:
        return [_binary("nats-server", "/usr/sbin/nats-server"), "-js", "-a", "127.0.0.1",
                "-p", str(self.port), "-sd", str(self.dir / "store")]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        # JetStream answers only after the log says so; the port opens earlier.
        return self._listening() and self.log.read_text().count("Server is ready") >= self.starts

    def start(self, timeout: float = 15.0) -> None:
        self.starts += 1
        super().start(timeout)


class PrivateRedis(_Server):
    """``redis-server`` without persistence."""

    label = "redis"

    def argv(self) -> list[str]:
        return [_binary("redis-server", "/usr/bin/redis-server"), "--port", str(self.port),
                "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir)]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ready(self) -> bool:
        if not self._listening():
            return False
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")


