"""Start the app in each of its deployments, on free ports, for the contract tests."""

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def amoeba(topology: str, **env: str) -> tuple[list[str], dict[str, str]]:
    return ([sys.executable, "-m", "amoeba", "run", f"topologies/{topology}.yaml"],
            {"AMOEBA_DATA_DIR": tempfile.mkdtemp(prefix="fastapi-tickets-"), **env})


def deployments(v: int, t: int) -> dict[str, tuple[list[tuple[list[str], dict[str, str]]], int, int]]:
    """name -> (commands to start, vacancy's port, ticket's port)."""
    ports = {"VACANCY_PORT": str(v), "TICKET_PORT": str(t)}
    return {
        "monolith": ([amoeba("monolith", PORT=str(v))], v, v),
        "monolith-multi": ([amoeba("monolith-multi", **ports)], v, t),
        "microservices": ([amoeba("microservices", **ports)], v, t),
        "hybrid": ([amoeba("hybrid", PORT=str(t), VACANCY_PORT=str(v))], t, t),  # one gateway
    }


DEPLOYMENTS = list(deployments(0, 0))


class Urls:
    def __init__(self, name: str, vacancy: int, ticket: int) -> None:
        self.name = name
        self.vacancy = f"http://127.0.0.1:{vacancy}"
        self.ticket = f"http://127.0.0.1:{ticket}"


def wait_ready(url: str, procs: list[subprocess.Popen[bytes]], deadline: float) -> None:
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a process of the deployment exited with {[p.poll() for p in procs]}")
        try:
            if httpx.get(url + "/api/v1/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not become healthy")


@pytest.fixture(scope="module", params=DEPLOYMENTS)
def urls(request: pytest.FixtureRequest) -> Iterator[Urls]:
    v, t = free_port(), free_port()
    commands, vport, tport = deployments(v, t)[request.param]
    procs = [subprocess.Popen(cmd, cwd=HERE, env={**os.environ, "INITIAL_STOCK": "100", **env},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for cmd, env in commands]
    try:
        result = Urls(request.param, vport, tport)
        for url in {result.vacancy, result.ticket}:
            wait_ready(url, procs, time.monotonic() + 30)
        yield result
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
