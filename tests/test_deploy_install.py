"""The generated Dockerfile for a project outside this repository: it copies
the project before installing it, and takes the framework from the project's
own declared requirement (with the extras its topology's URLs need), never a
bare name; ``.dockerignore`` keeps secrets and local data out.

(``tests/test_packaging.py`` replays such a Dockerfile's steps with the built
wheel and runs the result.)"""

from __future__ import annotations

import re
import shlex
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest

from amoeba.deploy import cli as deploy_cli
from amoeba.deploy.install import Project, extra_for_url, install_for

APP = '''\
from amoeba import App, Service, post


class Greeter(Service):
    async def greet(self, name: str) -> str:
        return f"Hello, {name}!"


class FrontDesk(Service):
    greeter: Greeter

    @post("/api/greet")
    async def greet(self, name: str) -> str:
        return await self.greeter.greet(name)


app = App("outside", [Greeter, FrontDesk])
'''
TOPOLOGY = '''\
name: microservices
app: outside_app.app:app
pythonpath: ..
resources:
  database: ${DATABASE_URL:-postgresql://postgres@db:5432/outside}
  cache: ${REDIS_URL:-redis://redis:6379/0}
  events: nats://nats:4222
processes:
  front:
    services: [front_desk]
    listeners:
      - port: 8000
  greeter:
    services: [greeter]
    listeners:
      - port: 8001
'''


def project(tmp_path: Path, pyproject: str | None = None, requirements: str | None = None,
            topology: str = TOPOLOGY) -> Path:
    """A project directory as a user would lay it out: code in a package,
    topologies in their own folder, the declaration at the top."""
    root = tmp_path / "outside"
    (root / "outside_app").mkdir(parents=True)
    (root / "outside_app" / "__init__.py").write_text("")
    (root / "outside_app" / "app.py").write_text(APP)
    (root / "topologies").mkdir()
    (root / "topologies" / "microservices.yaml").write_text(topology)
    if pyproject is not None:
        (root / "pyproject.toml").write_text(textwrap.dedent(pyproject))
    if requirements is not None:
        (root / "requirements.txt").write_text(textwrap.dedent(requirements))
    return root


def dockerfile(root: Path, monkeypatch: pytest.MonkeyPatch, target: str = "compose") -> dict[str, str]:
    for name in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(root)
    plan = deploy_cli.plan_for("topologies/microservices.yaml", f"deploy/{target}", cwd=root)
    return deploy_cli.render(target, plan)


def steps(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("COPY ", "RUN pip"))]


PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "outside-app"
version = "1.0"
dependencies = [{deps}]

[tool.setuptools]
packages = ["outside_app"]
"""


def test_pyproject_project_is_copied_then_installed_with_its_declared_framework(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = project(tmp_path, PYPROJECT.format(deps='"httpx>=0.27", "amoeba[redis]>=0.1,<1"'))
    files = dockerfile(root, monkeypatch)
    # The whole project before pip install (a flat layout has no src/ to guess);
    # the framework as declared, plus the extras its URLs need, same version range.
    assert steps(files["Dockerfile"]) == [
        "COPY ./ /app/",
        "RUN pip install --no-cache-dir . 'amoeba[nats,postgres,redis]>=0.1,<1'",
        "COPY deploy/compose/topology.yaml /etc/amoeba/topology.yaml",
    ]
    assert "pythonpath: [/app]\n" in files["topology.yaml"]
    for pattern in ("**/.env*", "**/.amoeba", "**/.venv", ".git"):
        assert pattern in files["Dockerfile.dockerignore"].splitlines()


def test_declared_framework_with_every_extra_is_not_repeated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = project(tmp_path, PYPROJECT.format(deps='"Amoeba[distributed,nats,postgres,redis]==0.1.0"'))
    assert "RUN pip install --no-cache-dir .\n" in dockerfile(root, monkeypatch, "k8s")["Dockerfile"]


def test_project_in_a_subdirectory_of_the_build_context(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = project(tmp_path, PYPROJECT.format(deps='"amoeba @ https://example.org/amoeba-0.1.0.whl"'))
    monkeypatch.chdir(tmp_path)  # build context: the directory above the project
    plan = deploy_cli.plan_for(str(root / "topologies/microservices.yaml"), "deploy", cwd=tmp_path)
    text = deploy_cli.render("compose", plan)["Dockerfile"]
    assert steps(text)[:2] == [
        "COPY outside/ /app/outside/",
        "RUN pip install --no-cache-dir ./outside "
        "'amoeba[nats,postgres,redis] @ https://example.org/amoeba-0.1.0.whl'",
    ]


def test_requirements_txt_is_installed_before_the_code_is_copied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = project(tmp_path, requirements="""\
        # pinned by the team
        httpx>=0.27
        amoeba==0.1.0  # the framework
        """)
    assert steps(dockerfile(root, monkeypatch)["Dockerfile"]) == [
        "COPY requirements.txt /app/requirements.txt",
        "RUN pip install --no-cache-dir -r requirements.txt 'amoeba[nats,postgres,redis]==0.1.0'",
        "COPY ./ /app/",
        "COPY deploy/compose/topology.yaml /etc/amoeba/topology.yaml",
    ]


def test_nothing_declared_pins_the_running_framework_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = project(tmp_path, topology=TOPOLOGY.replace("postgresql://postgres@db:5432", "mysql://root@db")
                   .replace("redis://redis:6379/0", "memory://").replace("nats://nats:4222", "kafka://k:9092"))
    assert steps(dockerfile(root, monkeypatch)["Dockerfile"])[0] == (
        f"RUN pip install --no-cache-dir 'amoeba[kafka,mysql]=={version('amoeba')}'")


def test_a_pyproject_without_a_project_table_is_not_taken_for_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = project(tmp_path, pyproject="[tool.ruff]\nline-length = 100\n",
                   requirements="amoeba[postgres,redis,nats]>=0.1\n")
    assert steps(dockerfile(root, monkeypatch)["Dockerfile"])[:2] == [
        "COPY requirements.txt /app/requirements.txt",
        "RUN pip install --no-cache-dir -r requirements.txt",
    ]


@pytest.mark.parametrize(("requirement", "extras", "added"), [
    ("amoeba", ("postgres",), "amoeba[postgres]"),
    ("amoeba >= 0.1", ("redis",), "amoeba[redis]>= 0.1"),
    ('amoeba[nats]>=0.1; python_version >= "3.11"', ("postgres",),
     'amoeba[nats,postgres]>=0.1; python_version >= "3.11"'),
    ("amoeba[postgres]", ("postgres",), None),
    ("amoeba @ git+https://example.org/amoeba@v0.1.0", ("nats",),
     "amoeba[nats] @ git+https://example.org/amoeba@v0.1.0"),
])
def test_declared_requirement_gets_the_missing_extras(requirement: str, extras: tuple[str, ...],
                                                      added: str | None) -> None:
    pip = install_for(Project(".", "x", ("amoeba-helpers>=1", requirement)), extras, "9.9").pip
    assert pip == ("." if added is None else f". {shlex.quote(added)}")
    if added is not None:  # the shell hands pip the requirement unchanged
        assert shlex.split(pip)[1] == added


def test_a_name_that_only_starts_like_the_framework_is_not_it() -> None:
    pip = install_for(Project(".", None, ("amoeba-helpers>=1",)), ("redis",), "0.1.0").pip
    assert shlex.split(pip) == ["-r", "requirements.txt", "amoeba[redis]==0.1.0"]


@pytest.mark.parametrize(("url", "extra"), [
    ("postgresql+asyncpg://u@h/db", "postgres"), ("postgres://h/db", "postgres"),
    ("mariadb://h/db", "mysql"), ("rediss://h:6380/0", "redis"), ("nats://h:4222", "nats"),
    ("kafka://h:9092", "kafka"), ("sqlite:///x.db", None), ("memory://", None), ("", None),
])
def test_extra_for_url(url: str, extra: str | None) -> None:
    assert extra_for_url(url) == extra


def test_the_checkout_itself_still_installs_from_source() -> None:
    text = (Path(__file__).parent / "golden/deploy/shop-microservices/compose/Dockerfile").read_text()
    assert re.findall(r"^(COPY \S+|RUN pip .*)", text, re.M)[:4] == [
        "COPY pyproject.toml", "COPY README.md", "COPY src/",
        'RUN pip install --no-cache-dir ".[nats,postgres,redis]"']
