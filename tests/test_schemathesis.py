"""Schemathesis (every check) against both example apps' /openapi.json, each
served by ``amoeba run`` of its monolith on a free port: the OpenAPI document
is as strict as validation (nothing it allows is refused, nothing it forbids
accepted), and no input makes a 500.  Bounded: a few examples per operation
and a wall-clock limit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amoeba.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e

try:
    import schemathesis  # noqa: F401
except ImportError:  # pragma: no cover - the [test] extra installs it
    pytestmark = [pytestmark, pytest.mark.skip(reason="pip install -e '.[test]' (schemathesis)")]

APPS = {
    "tickets": ("examples/tickets/topologies/monolith.yaml", "main"),
    "shop": ("examples/shop/topologies/monolith.yaml", "shop"),
}
ENV = {"SHOP_ADMIN_EMAIL": "admin@shop.test", "SHOP_ADMIN_PASSWORD": "admin-password-1",
       # Fuzzing sends thousands of requests from one address.
       "SHOP_RATE_IP_BURST": "1000000", "SHOP_RATE_IP_RATE": "1000000",
       "SHOP_RATE_USER_BURST": "1000000", "SHOP_RATE_USER_RATE": "1000000"}


@pytest.mark.parametrize("app", sorted(APPS))
def test_schemathesis_finds_nothing(app: str, tmp_path: Path) -> None:
    topology, process = APPS[app]
    port = free_port()
    env = {**os.environ, **ENV, "PORT": str(port), "AMOEBA_DATA_DIR": str(tmp_path / "data"),
           "AMOEBA_LOG_LEVEL": "WARNING"}
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "amoeba", "run", str(ROOT / topology),
                                   "--process", process], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 60
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < end, log.read_text()[-3000:]
                time.sleep(0.2)
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run",
             f"http://127.0.0.1:{port}/openapi.json", "--checks", "all", "--max-examples", "25",
             "--no-color", "--request-timeout", "10"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
        report = run.stdout[-6000:] + run.stderr[-2000:]
        # Warnings (operations that only answered 401 without a token) are not findings.
        assert run.returncode == 0 and "FAILURES" not in run.stdout, report
        assert " passed" in run.stdout, report
        assert "Internal Server Error" not in log.read_text()
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
