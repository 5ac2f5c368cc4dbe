"""The README's first app works as written: its files, taken from the README's
code blocks, check and run in both topologies, and each ``curl`` line of its
console block answers exactly what the README shows.

A block belongs to the test when the line before its fence is
``<!-- readme-test: NAME -->``: NAME is the file to write, or ``console`` for
the commands and their output (``$ `` lines, each followed by what it prints;
a ``request_id`` is shown as ``"..."``).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from e2e import ROOT, Run

from amoeba.testing import free_port

pytestmark = pytest.mark.e2e

README = ROOT / "README.md"
BLOCK = re.compile(r"^<!-- readme-test: (\S+) -->\n```[\w-]*\n(.*?)^```$", re.M | re.S)
REQUEST_ID = re.compile(r'"request_id":"[^"]*"')


def blocks() -> dict[str, str]:
    found = BLOCK.findall(README.read_text())
    names = [n for n, _ in found]
    assert len(names) == len(set(names)), f"README: a readme-test name is used twice: {names}"
    return dict(found)


def console() -> list[tuple[str, str]]:
    """(command, expected output) pairs of the console block."""
    pairs: list[tuple[str, str]] = []
    for line in blocks()["console"].splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], ""))
        else:
            assert pairs, f"README console block: output before any command: {line!r}"
            cmd, out = pairs[-1]
            pairs[-1] = (cmd, out + line + "\n")
    return pairs


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's ``hello/`` directory, outside the checkout."""
    where = tmp_path_factory.mktemp("readme") / "hello"
    where.mkdir()
    for name, text in blocks().items():
        if name != "console":
            (where / name).write_text(text)
    return where


def test_the_readme_names_the_files_it_shows() -> None:
    found = blocks()
    assert {"greetings.py", "monolith.yaml", "microservices.yaml", "console"} <= set(found)
    text = README.read_text()
    for name in ("greetings.py", "monolith.yaml", "microservices.yaml"):
        assert f"`hello/{name}`" in text, f"the README must say where {name} goes"
    assert "App(" in found["greetings.py"]
    assert len(console()) >= 4


@pytest.mark.parametrize("topology", ["monolith", "microservices"])
def test_first_app_runs_as_the_readme_says(project: Path, topology: str) -> None:
    check = subprocess.run([sys.executable, "-m", "amoeba", "check", f"{topology}.yaml"],
                           cwd=project, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    port, greeter_port = free_port(), free_port()
    env = {"PORT": str(port), "GREETER_PORT": str(greeter_port)}
    ready = [port] if topology == "monolith" else [port, greeter_port]
    run = Run(project / f"{topology}.yaml", env, ready, project)
    try:
        for command, expected in console():
            argv = shlex.split(command.replace("localhost:8000", f"127.0.0.1:{port}"))
            assert argv[0] == "curl", f"README console block: only curl commands run here: {command}"
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
            assert REQUEST_ID.sub('"request_id":"..."', out).strip() == expected.strip(), command
        if topology == "microservices":  # the greetings really crossed processes
            metrics = httpx.get(f"http://127.0.0.1:{greeter_port}/metrics", timeout=10).text
            served = re.search(r'^amoeba_rpc_served_duration_seconds_count\{[^}]*method="greet"'
                               r'[^}]*service="greeter"[^}]*\} (\S+)$', metrics, re.M)
            assert served and float(served.group(1)) >= 3, metrics
    finally:
        assert run.stop() == 0, run.output()
