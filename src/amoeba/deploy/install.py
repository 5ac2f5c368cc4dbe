"""How the generated image installs the project and the framework: what it
copies before ``pip install``, and what it installs.  Pure: ``deploy/cli.py``
reads the project's files and hands over a :class:`Project`.

Where the framework comes from, first match wins:

1. the framework's own checkout (a pyproject named ``amoeba``): installed
   from that source, with the extras the topology's resource URLs need;
2. a project with a ``pyproject.toml`` ``[project]`` table: the whole project
   directory is copied first (``.dockerignore`` keeps out ``.env*``, data and
   virtual environments), then ``pip install`` installs it and, through the
   requirement the project declares, the framework;
3. a ``requirements.txt``: ``pip install -r`` it; the project's code comes in
   afterwards through the topology's ``pythonpath``;
4. nothing declares the framework: ``amoeba[extras]==<the version that wrote
   the files>``.

In 2 and 3, when the declared requirement lacks an extra the topology needs
(``postgresql://`` -> ``postgres``, ...), it is repeated with the extras added
and its own version, URL and marker kept, so pip resolves one framework.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from amoeba.drivers import extra_for_url  # the one scheme -> driver table

__all__ = ["FRAMEWORK", "Install", "Project", "extra_for_url", "install_for"]

FRAMEWORK = "amoeba"
# "amoeba", its extras, then the rest: version specifiers, "@ URL", "; marker".
_REQUIREMENT = re.compile(rf"^\s*{FRAMEWORK}(?=\s*(?:\[|[<>=!~@;]|$))\s*(?:\[([^\]]*)\])?\s*(.*)$",
                          re.IGNORECASE)


@dataclass(frozen=True)
class Project:
    """What declares the app's dependencies, found beside the topology or above it."""

    dir: str  # relative to the build context, "." for the context itself
    name: str | None  # [project].name of its pyproject.toml; None: a requirements.txt
    requirements: tuple[str, ...]  # [project].dependencies, or the requirement lines of requirements.txt
    files: tuple[str, ...] = ()  # the framework's own checkout: what `pip install .` reads

    def __repr__(self) -> str:
        return f"<Project {self.name or 'requirements.txt'} in {self.dir!r}>"


@dataclass(frozen=True)
class Install:
    copy: tuple[str, ...]  # context paths copied to /app before pip install ("dir/" for a directory)
    pip: str  # the arguments of `pip install`, shell-quoted

    def covers(self, path: str) -> bool:
        """Whether ``path`` (relative to the context) is already in the image."""
        for c in self.copy:
            if c in ("./", "."):
                return True
            if c.endswith("/") and (path + "/").startswith(c):
                return True
        return False


def _with_extras(requirement: str, extras: tuple[str, ...]) -> str | None:
    """``requirement`` with ``extras`` added; None when it has them all already."""
    m = _REQUIREMENT.match(requirement)
    assert m is not None
    declared = {e.strip().lower() for e in (m.group(1) or "").split(",") if e.strip()}
    if set(extras) <= declared:
        return None
    rest = m.group(2).strip()
    if rest.startswith(("@", ";")):
        rest = " " + rest
    return f"{FRAMEWORK}[{','.join(sorted(declared | set(extras)))}]{rest}"


def _framework(requirements: tuple[str, ...], extras: tuple[str, ...], version: str | None) -> str | None:
    """What to add to ``pip install`` for the framework: None when ``requirements``
    declare it with every extra needed."""
    for line in requirements:
        if _REQUIREMENT.match(line):
            return _with_extras(line, extras)
    pin = f"=={version}" if version else ""
    return f"{FRAMEWORK}[{','.join(extras)}]{pin}" if extras else f"{FRAMEWORK}{pin}"


def install_for(project: Project | None, extras: tuple[str, ...], version: str | None) -> Install:
    """``version``: the framework's version writing the files (the fallback pin)."""
    if project is not None and project.name is not None and project.name.lower() == FRAMEWORK:
        where = "." if project.dir == "." else f"./{project.dir}"
        target = f'"{where}[{",".join(extras)}]"' if extras else where
        return Install(tuple(f"{project.dir}/{f}".removeprefix("./") for f in project.files), target)
    if project is None:
        return Install((), shlex.quote(_framework((), extras, version) or FRAMEWORK))
    framework = _framework(project.requirements, extras, version)
    more = f" {shlex.quote(framework)}" if framework else ""
    if project.name is not None:
        where = "." if project.dir == "." else f"./{project.dir}"
        return Install((f"{project.dir}/".removeprefix("./") or "./",), where + more)
    reqs = "requirements.txt" if project.dir == "." else f"{project.dir}/requirements.txt"
    return Install((reqs,), f"-r {reqs}{more}")
