"""The package works outside this repository.

``python -m build`` makes an sdist and a wheel (once per session); the wheel
goes into a fresh virtual environment in a temporary directory outside the
checkout, where a two-service app of its own is checked, run as a monolith and
called over HTTP.  Then the Dockerfile that installed ``amoeba deploy`` writes
for such a project is replayed step by step (``COPY`` into a directory
standing for the image, ``RUN pip install`` into another fresh environment):
the project and the framework it declares must install and import.

Dependencies come from the package index configured for pip, downloaded once
per session into a wheelhouse (pip's cache makes that quick); every build and
install after that reads only the wheelhouse (``PIP_NO_INDEX``), so the test
pays for index round trips once, and the Dockerfile's ``pip install`` line is
replayed as written.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import httpx
import pytest
from e2e import ROOT

from amoeba.testing import free_port, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

APP = '''\
import msgspec

from amoeba import App, NotFound, Service, get, post


class Greeting(msgspec.Struct):
    text: str


class Nobody(NotFound):
    """Nobody by that name."""


class Greeter(Service):
    async def greet(self, name: str) -> str:
        if not name:
            raise Nobody()
        return f"Hello, {name}!"


class FrontDesk(Service):
    greeter: Greeter

    @post("/api/greet")
    async def greet(self, name: str) -> Greeting:
        return Greeting(await self.greeter.greet(name))

    @get("/api/whoami")
    async def whoami(self) -> str:
        return __file__


app = App("outside", [Greeter, FrontDesk])
'''
MONOLITH = '''\
name: monolith
app: outside_app.app:app
pythonpath: ..
processes:
  main:
    services: "*"
    listeners:
      - port: ${PORT:-8000}
'''


# Set by the wheelhouse fixture: pip reads only it from then on.
OFFLINE: dict[str, str] = {}


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: nothing pointing into this checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("AMOEBA_")}
    return {**env, **OFFLINE, **extra}


def sh(argv: list[str | Path], cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=clean_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def fresh_venv(where: Path) -> Path:
    assert not where.resolve().is_relative_to(ROOT), "the environment must be outside the checkout"
    sh([sys.executable, "-m", "venv", where], cwd=where.parent)
    return where / "bin"


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The framework's dependencies and build requirements, from the index once."""
    where = tmp_path_factory.mktemp("wheelhouse")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needs = [*meta["build-system"]["requires"], *meta["project"]["dependencies"]]
    sh([sys.executable, "-m", "pip", "download", "--quiet", "--dest", where, *needs], cwd=where)
    OFFLINE.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(where))
    return where


@pytest.fixture(scope="session")
def dist(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build``: the sdist, then the wheel built from that sdist."""
    out = tmp_path_factory.mktemp("dist")
    sh([sys.executable, "-m", "build", "--outdir", out, ROOT], cwd=out, timeout=600)
    return out


@pytest.fixture(scope="session")
def wheel(dist: Path) -> Path:
    (found,) = dist.glob("amoeba-*-py3-none-any.whl")
    return found


@pytest.fixture(scope="session")
def user_bin(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's fresh environment with the wheel installed: its ``bin``."""
    home = tmp_path_factory.mktemp("user")
    bin_ = fresh_venv(home / "venv")
    sh([bin_ / "pip", "install", "--quiet", "--no-compile", wheel], cwd=home)
    return bin_


def outside_project(where: Path) -> Path:
    """A project of a user's: a package with the app, topologies beside it."""
    (where / "outside_app").mkdir(parents=True)
    (where / "outside_app" / "__init__.py").write_text("")
    (where / "outside_app" / "app.py").write_text(APP)
    (where / "topologies").mkdir()
    (where / "topologies" / "monolith.yaml").write_text(MONOLITH)
    return where


def test_sdist_and_wheel_carry_what_the_runtime_reads(dist: Path, wheel: Path) -> None:
    needed = {"amoeba/py.typed", "amoeba/gateway/docs.html", "amoeba/observe/dashboard.html",
              "amoeba/cli.py", "amoeba/deploy/install.py"}
    names = set(zipfile.ZipFile(wheel).namelist())
    assert needed <= names, needed - names
    meta = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py3')[0]}.dist-info/METADATA").decode()
    for extra in ("postgres", "mysql", "redis", "nats", "kafka", "distributed"):
        assert f"Provides-Extra: {extra}" in meta
    assert re.search(r"^Requires-Dist: amoeba\[\S*postgres\S*\]; extra == \"distributed\"", meta, re.M), meta
    entry = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py3')[0]}.dist-info/entry_points.txt")
    assert b"amoeba = amoeba.cli:main" in entry
    (sdist,) = dist.glob("amoeba-*.tar.gz")
    top = sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as tar:
        members = {m.removeprefix(f"{top}/") for m in tar.getnames()}
    assert {"pyproject.toml", "README.md", *(f"src/{n}" for n in needed)} <= members


def test_wheel_outside_the_checkout_checks_runs_and_answers(
        wheel: Path, user_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("home")
    bin_ = user_bin
    version = wheel.name.split("-")[1]
    assert sh([bin_ / "amoeba", "--version"], cwd=home).strip() == f"amoeba {version}"

    project = outside_project(home / "project")
    out = sh([bin_ / "amoeba", "check", "topologies/monolith.yaml"], cwd=project)
    assert "ok — topology 'monolith' of app 'outside'" in out
    port = free_port()
    log = home / "run.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([str(bin_ / "amoeba"), "run", "topologies/monolith.yaml"], cwd=project,
                                env=clean_env(PORT=str(port)), stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_ready([port], 60.0, proc, log)
        base = f"http://127.0.0.1:{port}"
        r = httpx.post(f"{base}/api/greet", json={"name": "Ada"}, timeout=10)
        assert (r.status_code, r.json()) == (200, {"text": "Hello, Ada!"}), r.text
        r = httpx.post(f"{base}/api/greet", json={"name": ""}, timeout=10)
        assert (r.status_code, r.json()["error"]["type"]) == (404, "Nobody"), r.text
        # Package data: the docs page and the dashboard are read from the installed package.
        assert "<html" in httpx.get(f"{base}/docs", timeout=10).text.lower()
        assert "<html" in httpx.get(f"{base}/_amoeba/", timeout=10).text.lower()
        # The framework really is the installed wheel, not this checkout.
        code = "import amoeba, sys; print(amoeba.__file__); print(sys.prefix)"
        where, prefix = sh([bin_ / "python", "-c", code], cwd=home).split()
        assert Path(where).is_relative_to(prefix) and not Path(where).is_relative_to(ROOT), where
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            code_ = proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"amoeba run did not stop:\n{log.read_text()}") from None
    assert code_ == 0, log.read_text()


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's ``.dockerignore`` rules as the generated file uses them: a
    pattern matches a path from the context root, ``**/`` at any depth."""
    parts = rel.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase(p, pattern[3:]) for p in parts):
                return True
        elif fnmatch.fnmatchcase(rel, pattern) or fnmatch.fnmatchcase(parts[0], pattern):
            return True
    return False


def replay_copy(context: Path, src: str, dest: Path, patterns: list[str]) -> None:
    source = (context / src).resolve()
    if source.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest)
        return
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(context).as_posix()
        if path.is_file() and not ignored(rel, patterns):
            target = dest / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def test_generated_dockerfile_installs_the_project_and_its_declared_framework(
        wheel: Path, user_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("docker")
    tools = user_bin  # where the user runs `amoeba deploy`
    project = outside_project(home / "project")
    # A flat layout (no src/): only copying the project before `pip install .` builds it.
    (project / "pyproject.toml").write_text(f'''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "outside-app"
version = "1.0"
dependencies = ["amoeba @ {wheel.as_uri()}"]

[tool.setuptools]
packages = ["outside_app"]
''')
    (project / ".env").write_text("AMOEBA_SECRET=do-not-bake-me\n")
    (project / ".amoeba" / "data").mkdir(parents=True)
    (project / ".amoeba" / "data" / ".auth-keys.json").write_text("{}")
    sh([tools / "amoeba", "deploy", "compose", "topologies/monolith.yaml", "-o", "deploy/compose"],
       cwd=project)
    dockerfile = (project / "deploy/compose/Dockerfile").read_text()
    patterns = [line for line in (project / "deploy/compose/Dockerfile.dockerignore").read_text()
                .splitlines() if line and not line.startswith("#")]

    image = home / "image"  # stands for the image's file system
    workdir = image
    runs = []
    for line in dockerfile.splitlines():
        if line.startswith("WORKDIR "):
            workdir = image / line.split()[1].lstrip("/")
        elif line.startswith("COPY "):
            src, dest = line.split()[1:]
            replay_copy(project, src, image / dest.lstrip("/"), patterns)
        elif line.startswith("RUN pip install "):
            runs.append(line)
    assert runs == ["RUN pip install --no-cache-dir ."], dockerfile
    assert (workdir / "outside_app" / "app.py").is_file()
    assert not (workdir / ".env").exists() and not (workdir / ".amoeba").exists()

    python = fresh_venv(home / "image-python")  # the image's interpreter
    for line in runs:  # pip's cache is allowed here, unlike in the image
        args = [a for a in shlex.split(line)[3:] if a != "--no-cache-dir"]
        sh([python / "pip", "install", "--quiet", "--no-compile", *args], cwd=workdir)
    # From anywhere: both the project and the framework it declares are installed.
    elsewhere = home / "elsewhere"
    elsewhere.mkdir()
    out = sh([python / "python", "-c", "import amoeba, outside_app.app as a; print(a.app.specs)"],
             cwd=elsewhere)
    assert "greeter" in out and "front_desk" in out
    assert sh([python / "amoeba", "--version"], cwd=elsewhere).strip() == f"amoeba {wheel.name.split('-')[1]}"
    topology = image / "etc/amoeba/topology.yaml"
    topology.write_text(topology.read_text().replace("/app", str(workdir)))
    assert "ok — topology 'monolith'" in sh([python / "amoeba", "check", topology], cwd=elsewhere)
