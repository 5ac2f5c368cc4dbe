"""Start `amoeba run` as a real command and talk to it over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from amoeba.testing import wait_ready

ROOT = Path(__file__).resolve().parent.parent


class Run:
    def __init__(self, topology: Path, env: dict[str, str], ready_ports: list[int], tmp: Path,
                 args: tuple[str, ...] = ()):
        self.log = tmp / f"{topology.stem}-{time.monotonic_ns()}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "amoeba", "run", str(topology), *args],
                env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=tmp)
        wait_ready(ready_ports, 30.0, self.proc, self.log)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"did not stop within {timeout}s:\n{self.output()}") from None


def post(port: int, path: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}{path}", json=body, timeout=10)


def get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
