"""Topology loading and validation: every problem names file, line, key and fix."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tickets.app import app

from amoeba import App, Mount, Service
from amoeba.topology import TopologyError, bind, load_topology

ROOT = Path(__file__).resolve().parent.parent
HEAD = "app: tickets.app:app\npythonpath: ../examples\n"


def write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "topo.yaml"
    p.write_text(HEAD + textwrap.dedent(body))
    return p


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(TopologyError) as info:
        bind(load_topology(path, env or {}), app)
    return [str(p) for p in info.value.problems]


def test_env_expansion_types_values(tmp_path):
    p = write(tmp_path, """
        processes:
          main:
            services: "*"
            listeners: [{port: 1}]
            replicas: ${N:-2}
          """)
    topo = bind(load_topology(p, {"N": "3"}), app)
    assert topo.processes["main"].replicas == 3
    assert set(topo.processes["main"].services) == {"vacancy", "ticket"}
    assert bind(load_topology(p, {}), app).processes["main"].replicas == 2


def test_unset_variable_without_default(tmp_path):
    p = write(tmp_path, """
        processes:
          main:
            services: "*"
            listeners:
              - port: ${NOPE}
        """)
    with pytest.raises(TopologyError) as info:
        load_topology(p, {})
    msg = str(info.value)
    assert "${NOPE} is not set" in msg and "topo.yaml:8" in msg and "export NOPE" in msg


def test_service_placed_twice_never_and_unknown(tmp_path):
    p = write(tmp_path, """
        processes:
          a:
            services: [ticket, vacancy]
            listeners: [{port: 8001}]
          b:
            services: [vacancy, tiket]
            listeners: [{port: 8002}]
        """)
    found = problems(p)
    assert any("'vacancy' is placed twice" in m and "topo.yaml:9" in m for m in found)
    assert any("unknown service 'tiket'; did you mean 'ticket'?" in m and "ticket, vacancy" in m
               for m in found)
    assert len(found) == 2, found


def test_service_never_placed(tmp_path):
    p = write(tmp_path, """
        processes:
          a:
            services: [ticket]
            listeners: [{port: 8001}]
        """)
    (msg,) = problems(p)
    assert "'vacancy' is not placed" in msg and "fix:" in msg


def test_port_used_twice_including_replicas(tmp_path):
    p = write(tmp_path, """
        processes:
          a:
            services: [ticket]
            replicas: 2
            listeners: [{port: 8001}]
          b:
            services: [vacancy]
            listeners: [{port: 8002}]
        """)
    (msg,) = problems(p)
    assert "port 8002 is used twice" in msg and "replica 1" in msg and "port + N" in msg


def test_private_process_with_public_listener(tmp_path):
    p = write(tmp_path, """
        processes:
          edge:
            services: [ticket]
            listeners: [{port: 8000, public: true}]
          internal:
            services: [vacancy]
            private: true
            listeners: [{port: 8001, public: true}]
        """)
    (msg,) = problems(p)
    assert "process 'internal' is private but this listener is public" in msg
    assert "processes.internal.listeners[0].public" in msg and "topo.yaml:" in msg


def test_gateway_publishes_private_routes(tmp_path):
    """Naming a private service in a public listener's routes is the gateway's
    deliberate publication of it, not a leak: accepted."""
    p = write(tmp_path, """
        processes:
          edge:
            services: [ticket]
            listeners: [{port: 8000, public: true, routes: [ticket, vacancy]}]
          internal:
            services: [vacancy]
            private: true
            listeners: [{port: 8001}]
        """)
    topo = bind(load_topology(p, {}), app)
    assert topo.processes["edge"].listeners[0].routes == ("ticket", "vacancy")
    assert topo.processes["internal"].private


def test_unknown_keys_and_bad_values(tmp_path):
    p = write(tmp_path, """
        procesess: {}
        processes:
          a:
            services: "*"
            replicas: 0
            listeners: [{port: 70000, hots: x}]
        """)
    with pytest.raises(TopologyError) as info:
        load_topology(p, {})
    text = str(info.value)
    assert "procesess: unknown key" in text
    assert "replicas: 0 is not a positive whole number" in text
    assert "70000 is not a port number" in text
    assert "hots: unknown key" in text


class A(Service):
    b: B


class B(Service):
    a: A


def test_dependency_cycle(tmp_path):
    cyclic = App("cyclic", [A, B])
    p = tmp_path / "t.yaml"
    p.write_text("processes:\n  m:\n    services: '*'\n    listeners: [{port: 1}]\n")
    with pytest.raises(TopologyError, match=r"dependency cycle (a -> b -> a|b -> a -> b)"):
        bind(load_topology(p, {}), cyclic)


def test_yaml_syntax_error_has_a_line(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("processes:\n  main: [unclosed\n")
    with pytest.raises(TopologyError, match=r"t.yaml:\d+: \(syntax\)"):
        load_topology(p, {})


def test_check_command(tmp_path):
    root = Path(__file__).resolve().parent.parent
    ok = subprocess.run([sys.executable, "-m", "amoeba", "check",
                         str(root / "examples/tickets/topologies/hybrid.yaml")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "internal: vacancy" in ok.stdout
    bad = write(tmp_path, """
        processes:
          a: {services: [ticket], listeners: [{port: 1}]}
        """)
    bad.write_text(bad.read_text().replace("../examples", str(root / "examples")))
    r = subprocess.run([sys.executable, "-m", "amoeba", "check", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "not placed" in r.stderr and "fix:" in r.stderr


def test_check_command_reads_the_gateway_and_database_settings(tmp_path, capsys, monkeypatch):
    """`amoeba check` refuses what a process would refuse at start."""
    from amoeba.cli import main

    monkeypatch.setenv("AMOEBA_DATA_DIR", str(tmp_path / "data"))
    shop = ROOT / "examples" / "shop" / "topologies" / "monolith.yaml"
    assert main(["check", str(shop)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(shop.read_text().replace("pythonpath: ../..", f"pythonpath: {ROOT / 'examples'}")
                   .replace("      burst: ${SHOP_RATE_USER_BURST:-20}", "      burst: -1"))
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "settings.rate_limit.user.burst" in err and "fix:" in err and "bad.yaml:" in err


class MountsApi(Service):
    mounts = (Mount("x.app:app", "/api"),)


class AlsoMountsApi(Service):
    mounts = (Mount("y.app:app", "/api", "/other"),)


def test_a_prefix_mounted_twice_on_one_listener(tmp_path):
    both = App("mounts", [MountsApi, AlsoMountsApi])
    p = tmp_path / "t.yaml"
    p.write_text("processes:\n  m:\n    services: '*'\n    listeners: [{port: 1}]\n")
    with pytest.raises(TopologyError, match=r"path prefix /api is mounted by both services "
                                            r"'mounts_api' and 'also_mounts_api' on this listener"):
        bind(load_topology(p, {}), both)
    p.write_text("processes:\n  m:\n    services: '*'\n    listeners:\n"
                 "      - {port: 1, routes: [mounts_api]}\n      - {port: 2, routes: [also_mounts_api]}\n")
    bind(load_topology(p, {}), both)  # apart, they are fine
