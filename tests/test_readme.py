"""The README's first app and docs/tutorial.md work as written: their files,
taken from the code blocks, check and run in both topologies, and each
``curl`` line of a console block answers exactly what the page shows.

A block belongs to the test when the line before its fence is
``<!-- readme-test: WHAT -->``.  WHAT is a file name (the block is that file),
``console`` (``$ `` lines, each followed by what it prints; a ``request_id``
is shown as ``"..."``), ``console eventually`` (the same, retried until it
matches: what events deliver after a commit), or ``excerpt PATH`` (lines that
appear, in this order and together, in the generated file PATH).  The
tutorial's project is the README's with the tutorial's files laid over it.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import servers
from e2e import ROOT, Run

from amoeba.testing import free_port

pytestmark = pytest.mark.e2e

README = ROOT / "README.md"
TUTORIAL = ROOT / "docs" / "tutorial.md"
BLOCK = re.compile(r"^<!-- readme-test: ([^>]+?) -->\n```[\w-]*\n(.*?)^```$", re.M | re.S)
REQUEST_ID = re.compile(r'"request_id":"[^"]*"')


def blocks(page: Path) -> list[tuple[str, str]]:
    return BLOCK.findall(page.read_text())


def files(page: Path) -> dict[str, str]:
    found = [(n, t) for n, t in blocks(page) if not n.startswith(("console", "excerpt "))]
    names = [n for n, _ in found]
    assert len(names) == len(set(names)), f"{page.name}: a file is shown twice: {names}"
    return dict(found)


def console(text: str) -> list[tuple[str, str]]:
    """(command, expected output) pairs of a console block."""
    pairs: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], ""))
        else:
            assert pairs, f"console block: output before any command: {line!r}"
            cmd, out = pairs[-1]
            pairs[-1] = (cmd, out + line + "\n")
    return pairs


def write_project(where: Path, *pages: Path) -> Path:
    where.mkdir(parents=True)
    for page in pages:
        for name, text in files(page).items():
            (where / name).write_text(text)
    return where


def curl(command: str, port: int) -> str:
    argv = shlex.split(command.replace("localhost:8000", f"127.0.0.1:{port}"))
    assert argv[0] == "curl", f"console block: only curl commands run here: {command}"
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    return REQUEST_ID.sub('"request_id":"..."', out).strip()


def replay_consoles(page: Path, port: int) -> int:
    """Run every console block of ``page`` against ``port``; the number of commands run."""
    ran = 0
    for kind, text in blocks(page):
        if not kind.startswith("console"):
            continue
        for command, expected in console(text):
            deadline = time.monotonic() + (15 if kind == "console eventually" else 0)
            while (out := curl(command, port)) != expected.strip() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert out == expected.strip(), f"{page.name}: {command}\n got:      {out}\n expected: {expected}"
            ran += 1
    return ran


def run_topology(project: Path, topology: str, **env: str) -> tuple[Run, int, int]:
    check = subprocess.run([sys.executable, "-m", "amoeba", "check", f"{topology}.yaml"],
                           cwd=project, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    port, greeter_port = free_port(), free_port()
    env = {"PORT": str(port), "GREETER_PORT": str(greeter_port), **env}
    ready = [port] if topology == "monolith" else [port, greeter_port]
    return Run(project / f"{topology}.yaml", env, ready, project), port, greeter_port


def test_the_pages_name_the_files_they_show() -> None:
    found = files(README)
    assert {"greetings.py", "monolith.yaml", "microservices.yaml"} <= set(found)
    text = README.read_text()
    for name in found:
        assert f"`hello/{name}`" in text, f"the README must say where {name} goes"
    assert "App(" in found["greetings.py"]
    assert any(kind == "console" and len(console(t)) >= 4 for kind, t in blocks(README))
    tutorial = TUTORIAL.read_text()
    for name in files(TUTORIAL):
        assert f"`hello/{name}`" in tutorial, f"the tutorial must say where {name} goes"
    assert "amoeba deploy compose microservices.yaml -o deploy/compose\n" in tutorial


@pytest.mark.parametrize("topology", ["monolith", "microservices"])
def test_first_app_runs_as_the_readme_says(tmp_path: Path, topology: str) -> None:
    project = write_project(tmp_path / "hello", README)
    run, port, greeter_port = run_topology(project, topology)
    try:
        assert replay_consoles(README, port) >= 4
        if topology == "microservices":  # the greetings really crossed processes
            metrics = httpx.get(f"http://127.0.0.1:{greeter_port}/metrics", timeout=10).text
            served = re.search(r'^amoeba_rpc_served_duration_seconds_count\{[^}]*method="greet"'
                               r'[^}]*service="greeter"[^}]*\} (\S+)$', metrics, re.M)
            assert served and float(served.group(1)) >= 3, metrics
    finally:
        assert run.stop() == 0, run.output()


def test_tutorial_monolith(tmp_path: Path) -> None:
    project = write_project(tmp_path / "hello", README, TUTORIAL)
    run, port, _ = run_topology(project, "monolith")
    try:
        assert replay_consoles(TUTORIAL, port) == 3
    finally:
        assert run.stop() == 0, run.output()


def test_tutorial_microservices_with_events_through_redis(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    base = servers.redis_url()
    prefix = f"i11-tutorial-{uuid.uuid4().hex[:8]}:"
    request.addfinalizer(lambda: servers._run(servers._redis_clean, base, prefix))
    project = write_project(tmp_path / "hello", README, TUTORIAL)
    run, port, _ = run_topology(project, "microservices", EVENTS_URL=f"{base}/0?prefix={prefix}")
    try:
        assert replay_consoles(TUTORIAL, port) == 3
    finally:
        assert run.stop() == 0, run.output()


def test_tutorial_tests_pass_in_every_mode(tmp_path: Path) -> None:
    project = write_project(tmp_path / "hello", README, TUTORIAL)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "6 passed" in done.stdout, done.stdout + done.stderr


def test_tutorial_dockerfile_is_what_the_tutorial_shows(tmp_path: Path) -> None:
    project = write_project(tmp_path / "hello", README, TUTORIAL)
    subprocess.run([sys.executable, "-m", "amoeba", "deploy", "compose", "microservices.yaml",
                    "-o", "deploy/compose"], cwd=project, check=True, capture_output=True, timeout=120)
    excerpts = [(k.split()[1], t) for k, t in blocks(TUTORIAL) if k.startswith("excerpt ")]
    assert excerpts
    for path, text in excerpts:
        generated = (project / path).read_text()
        assert text in generated, f"{path}:\n{generated}\n--- the tutorial shows:\n{text}"


@pytest.mark.parametrize("page", ["README.md", "docs/tutorial.md", "docs/deploy.md"])
def test_every_python_and_yaml_block_parses(page: str) -> None:
    import yaml

    text = (ROOT / page).read_text()
    for m in re.finditer(r"^```(python|yaml)\n(.*?)^```$", text, re.M | re.S):
        where = f"{page}:{text[:m.start()].count(chr(10)) + 2}"
        if m.group(1) == "python":
            compile(m.group(2), where, "exec")
        else:
            assert yaml.safe_load(m.group(2)) is not None, where


def test_commands_work_on_linux_as_pasted() -> None:
    """No macOS-only commands in a shell block (``open URL``)."""
    for page in (README, TUTORIAL, ROOT / "docs" / "deploy.md"):
        text = page.read_text()
        for m in re.finditer(r"^```(?:bash|sh|console)\n(.*?)^```$", text, re.M | re.S):
            for line in m.group(1).splitlines():
                assert not re.match(r"^\s*(\$ )?(open|pbcopy|brew) ", line), f"{page.name}: {line}"
