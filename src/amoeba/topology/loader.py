"""Read a topology YAML file into :class:`~amoeba.topology.model.Topology`.

Only reads the file and the environment.  ``${VAR}`` and ``${VAR:-default}``
are expanded in every scalar before it is typed, so ``port: ${PORT:-8000}``
is an int.  Every problem names the file, the line and the key.

Schema (keys not listed are rejected, to catch typos)::

    name: monolith                    # reported as "mode" by GET /
    app: tickets.app:app              # module:attribute of the amoeba.App
    pythonpath: ../..                 # str or list, relative to this file
    settings: {deadline: 10s, max_body: 1MiB, grace: 10s, header_timeout: 10s, ...}
    resources: {database: "sqlite:///..."}       # keys of both: topology/schema.py
    deploy: {image: ..., edge: {port: 80}, ...}   # only amoeba deploy reads it: topology/deploy.py
    processes:
      NAME:
        services: [a, b] | "*"
        replicas: 1
        private: false                # listeners default to private, services are private
        address: host                 # how other processes reach it (default: listener host)
        env: {KEY: value}
        listeners:
          - {port: 8000, host: 0.0.0.0, public: true, routes: [a]}
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from amoeba.topology.deploy import read_deploy
from amoeba.topology.model import Listener, Problem, Process, Settings, Topology, TopologyError
from amoeba.topology.schema import did_you_mean

__all__ = ["load_topology", "parse_duration", "parse_size"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_TOP_KEYS = {"name", "app", "pythonpath", "settings", "resources", "processes", "deploy"}
_PROC_KEYS = {"services", "replicas", "private", "address", "env", "listeners"}
_LISTENER_KEYS = {"port", "host", "public", "routes"}
_SETTING_KEYS = {"deadline", "max_body", "grace", "drain_delay", "connections",
                 "connect_timeout", "eject_for", "max_header_line", "max_header_size",
                 "max_headers", "header_timeout", "body_timeout", "keepalive_timeout",
                 "max_connections"}


class _Reader:
    """Turns composed YAML nodes into plain values, remembering each key's line."""

    def __init__(self, file: str, env: dict[str, str]):
        self.file = file
        self.env = env
        self.lines: dict[str, int] = {}
        self.problems: list[Problem] = []

    def problem(self, key: str, message: str, fix: str) -> None:
        self.problems.append(Problem(self.file, self.lines.get(key), key, message, fix))

    def expand(self, text: str, key: str) -> str:
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in self.env:
                return self.env[name]
            if default is not None:
                return default
            self.problem(key, f"${{{name}}} is not set in the environment",
                         f"export {name}=..., or give a default: ${{{name}:-value}}")
            return ""
        return _VAR.sub(sub, text)

    def value(self, node: yaml.Node, key: str) -> Any:
        self.lines[key] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for k_node, v_node in node.value:
                k = str(k_node.value)
                sub = f"{key}.{k}" if key else k
                if k in out:
                    self.lines[sub] = k_node.start_mark.line + 1
                    self.problem(sub, "key given twice", "keep one of them")
                out[k] = self.value(v_node, sub)
                # A key is where its name is, not where its block's first child is.
                self.lines[sub] = k_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.value(n, f"{key}[{i}]") for i, n in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        raw = str(node.value)
        text = self.expand(raw, key) if "${" in raw else raw
        if node.style in ("'", '"'):
            return text
        if text == "":
            return None if raw == "" else ""
        typed = yaml.safe_load(text)  # plain scalar: let YAML type it (int, bool, null, ...)
        # A value from the environment stays one scalar: "redis://h/0?prefix=a:" is a
        # string, not the mapping YAML would read from it.
        return text if isinstance(typed, dict | list) else typed


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZES = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2,
          "gb": 1000**3, "gib": 1024**3}


def parse_duration(value: Any) -> float:
    """``10``, ``"10s"``, ``"500ms"``, ``"2m"`` -> seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)\s*", str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration (like 10s, 500ms, 2m)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_size(value: Any) -> int:
    """``1048576``, ``"1MiB"``, ``"512kb"`` -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = re.fullmatch(r"\s*([0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _SIZES:
        raise ValueError(f"{value!r} is not a size (like 1MiB, 512KiB, 1048576)")
    return int(m.group(1)) * _SIZES[m.group(2).lower()]


def load_topology(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Topology:
    """Read and type a topology file; raise ``TopologyError`` listing every problem."""
    p = Path(path)
    file = str(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise TopologyError([Problem(file, None, "(file)", f"cannot read: {exc.strerror}",
                                     "check the path given to amoeba")]) from None
    r = _Reader(file, dict(os.environ) if env is None else env)
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise TopologyError([Problem(file, mark.line + 1 if mark else None, "(syntax)",
                                     f"not valid YAML: {getattr(exc, 'problem', exc)}",
                                     "fix the YAML syntax at that line")]) from None
    data = r.value(node, "") if node is not None else None
    if not isinstance(data, dict):
        raise TopologyError([Problem(file, None, "(top)", "a topology is a mapping",
                                     "start from examples/tickets/topologies/monolith.yaml")])
    topo = _build(r, data, p)
    if r.problems:
        raise TopologyError(r.problems)
    assert topo is not None
    return topo


def _unknown(r: _Reader, data: dict[str, Any], allowed: set[str], key: str) -> None:
    for k in data:
        if k not in allowed:
            sub = f"{key}.{k}" if key else k
            close = did_you_mean(str(k), allowed)
            r.problem(sub, "unknown key" + (f"; did you mean `{close}`?" if close else ""),
                      f"use one of: {', '.join(sorted(allowed))}")


def _build(r: _Reader, data: dict[str, Any], path: Path) -> Topology | None:
    _unknown(r, data, _TOP_KEYS, "")
    name = data.get("name") or path.stem
    pp = data.get("pythonpath") or []
    pp_list = [pp] if isinstance(pp, str) else list(pp)
    base = path.resolve().parent
    pythonpath = tuple((base / str(x)).resolve() for x in pp_list)

    settings = _settings(r, data.get("settings") or {})
    resources_raw = data.get("resources") or {}
    if not isinstance(resources_raw, dict):
        r.problem("resources", "must be a mapping of kind to URL", "resources: {database: ...}")
        resources_raw = {}
    resources = {str(k): str(v) for k, v in resources_raw.items() if v is not None}

    procs_raw = data.get("processes")
    processes: dict[str, Process] = {}
    if not isinstance(procs_raw, dict) or not procs_raw:
        r.problem("processes", "no processes are declared",
                  "add processes: {main: {services: '*', listeners: [{port: 8000}]}}")
    else:
        for pname, pdata in procs_raw.items():
            proc = _process(r, str(pname), pdata)
            if proc is not None:
                processes[proc.name] = proc
    app = data.get("app")
    names = {str(k) for k in procs_raw} if isinstance(procs_raw, dict) else set()
    deploy = read_deploy(r, data.get("deploy"), names)
    return Topology(
        name=str(name),
        file=str(path),
        app=str(app) if app else None,
        pythonpath=pythonpath,
        processes=processes,
        resources=resources,
        settings=settings,
        deploy=deploy,
        lines=r.lines,
    )


def _settings(r: _Reader, raw: Any) -> Settings:
    if not isinstance(raw, dict):
        r.problem("settings", "must be a mapping", "settings: {deadline: 10s}")
        return Settings()
    known = {k: v for k, v in raw.items() if k in _SETTING_KEYS}
    extra = {k: v for k, v in raw.items() if k not in _SETTING_KEYS}
    kw: dict[str, Any] = {}
    conv: dict[str, Any] = {
        "deadline": parse_duration, "grace": parse_duration, "drain_delay": parse_duration,
        "connect_timeout": parse_duration, "eject_for": parse_duration,
        "max_body": parse_size, "connections": int,
        "header_timeout": parse_duration, "body_timeout": parse_duration,
        "keepalive_timeout": parse_duration, "max_header_line": parse_size,
        "max_header_size": parse_size, "max_headers": int,
        "max_connections": lambda v: 0 if v == "auto" else int(v),
    }
    for k, v in known.items():
        try:
            kw[k] = conv[k](v)
        except (ValueError, TypeError) as exc:
            r.problem(f"settings.{k}", str(exc), "see the settings table in README.md")
    if kw.get("connections", 1) < 1:
        r.problem("settings.connections", "must be at least 1", "connections: 2")
    for k, least, fix in (("max_header_line", 256, "max_header_line: 8KiB"),
                          ("max_header_size", 1024, "max_header_size: 64KiB"),
                          ("max_headers", 8, "max_headers: 100"),
                          ("max_connections", 0, "max_connections: auto"),
                          ("max_body", 0, "max_body: 1MiB")):
        if kw.get(k, least) < least:
            r.problem(f"settings.{k}", f"{kw[k]} is below the least sensible value, {least}", fix)
    for k in ("header_timeout", "body_timeout", "keepalive_timeout"):
        if kw.get(k, 1.0) <= 0:
            r.problem(f"settings.{k}", "must be a duration above zero", f"{k}: 10s")
    return Settings(**kw, extra=extra)


def _process(r: _Reader, name: str, pdata: Any) -> Process | None:
    key = f"processes.{name}"
    if not isinstance(pdata, dict):
        r.problem(key, "a process is a mapping", f"{name}: {{services: [...], listeners: [...]}}")
        return None
    _unknown(r, pdata, _PROC_KEYS, key)
    services_raw = pdata.get("services")
    if services_raw == "*":
        services: tuple[str, ...] = ("*",)
    elif isinstance(services_raw, list) and services_raw:
        services = tuple(str(s) for s in services_raw)
    else:
        r.problem(f"{key}.services", "missing or empty", "list its services, or '*' for all")
        services = ()
    replicas = pdata.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
        r.problem(f"{key}.replicas", f"{replicas!r} is not a positive whole number", "replicas: 1")
        replicas = 1
    private = bool(pdata.get("private", False))
    listeners: list[Listener] = []
    for i, ldata in enumerate(pdata.get("listeners") or []):
        lkey = f"{key}.listeners[{i}]"
        if not isinstance(ldata, dict):
            r.problem(lkey, "a listener is a mapping", "- {port: 8000}")
            continue
        _unknown(r, ldata, _LISTENER_KEYS, lkey)
        port = ldata.get("port")
        if isinstance(port, str) and port.strip().isdigit():
            port = int(port)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            r.problem(f"{lkey}.port", f"{port!r} is not a port number", "port: 8000")
            continue
        public = bool(ldata.get("public", not private))
        host = str(ldata.get("host") or ("0.0.0.0" if public else "127.0.0.1"))
        routes_raw = ldata.get("routes")
        routes = None if routes_raw is None else tuple(str(s) for s in routes_raw)
        listeners.append(Listener(port, host, public, routes, lkey, r.lines.get(lkey)))
    if not listeners:
        r.problem(f"{key}.listeners", "a process needs at least one listener",
                  "listeners: [{port: 8000}]")
    env = {str(k): str(v) for k, v in (pdata.get("env") or {}).items()}
    address = pdata.get("address")
    return Process(name, services, replicas, tuple(listeners), private,
                   str(address) if address else None, env, r.lines.get(key))
