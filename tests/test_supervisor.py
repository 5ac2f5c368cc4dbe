"""`amoeba run` as a supervisor: dependency order at startup, giving up on a
process that cannot start (with its one-line cause), restarting one that
crashed after it was ready, and a gateway whose `/readyz` follows its callees."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import yaml
from e2e import ROOT, Run, get, post

from amoeba import App, Service
from amoeba.runtime.cause import same_cause, startup_cause
from amoeba.runtime.order import callees, start_after, start_waves
from amoeba.runtime.supervisor import EX_CONFIG, MAX_START_FAILURES, Supervisor
from amoeba.testing import free_port
from amoeba.topology import bind, load_topology

TICKETS = ROOT / "examples" / "tickets" / "topologies"
GIVE_UP_WITHIN = 15.0  # seconds from `amoeba run` to its exit when a process cannot start


def two_ports() -> tuple[int, int]:
    a, b = free_port(), free_port()
    while b == a or abs(b - a) == 1:
        b = free_port()
    return a, b


def run_to_exit(topology: Path, env: dict[str, str], cwd: Path,
                timeout: float = 60.0) -> tuple[int, str, str, float]:
    """`amoeba run` that is expected to exit by itself: (code, stdout, stderr, seconds)."""
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "amoeba", "run", str(topology)],
                            env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, cwd=cwd, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"amoeba run did not exit within {timeout}s:\n{out}\n{err}") from None
    return proc.returncode, out, err, time.monotonic() - began


def pids(output: str, label: str) -> list[int]:
    return [int(p) for p in re.findall(rf"\| {re.escape(label)} started \(pid (\d+)\)", output)]


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


# -- a small app whose second process cannot start -----------------------------

APP = '''
import os

from amoeba import App, Service, get


class Good(Service):
    @get("/good")
    async def hello(self) -> str:
        return "hello"


class Bad(Service):
    good: Good

    async def start(self) -> None:
        raise RuntimeError("the frobnicator is unplugged; fix: plug it in (FROB_URL)")

    @get("/bad")
    async def hello(self) -> str:
        return await self.good.hello()


app = App("crashy", [Good, Bad])
'''


def crashy(tmp_path: Path, good_port: int, bad_port: int) -> Path:
    (tmp_path / "crashy_app.py").write_text(textwrap.dedent(APP))
    path = tmp_path / "crashy.yaml"
    path.write_text(yaml.safe_dump({
        "name": "crashy", "app": "crashy_app:app", "pythonpath": ".",
        "settings": {"drain_delay": "0s", "grace": "2s"},
        "processes": {
            "good": {"services": ["good"], "listeners": [{"port": good_port, "host": "127.0.0.1"}]},
            "bad": {"services": ["bad"], "listeners": [{"port": bad_port, "host": "127.0.0.1"}]},
        }}))
    return path


@pytest.mark.e2e
def test_a_process_failing_at_startup_twice_stops_everything_with_its_cause(tmp_path):
    gp, bp = two_ports()
    code, out, err, took = run_to_exit(crashy(tmp_path, gp, bp),
                                       {"AMOEBA_DATA_DIR": str(tmp_path / "data")}, tmp_path)
    print(f"\ngave up after {took:.1f}s with code {code}; stderr: {err!r}")
    assert code == 1, out + err
    assert took < GIVE_UP_WITHIN, out
    # bad calls good: good was ready before bad went on (and failed).
    assert out.index("| good is ready") < out.index("| bad goes on")
    assert len(pids(out, "bad")) == 2  # started twice, not a third time
    assert err.strip() == ("amoeba run: process bad failed to start twice: RuntimeError: the "
                           "frobnicator is unplugged; fix: plug it in (FROB_URL)")
    [good] = pids(out, "good")
    assert gone(good)  # the other process was stopped
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{gp}/healthz", timeout=2)


@pytest.mark.e2e
def test_a_port_in_use_is_one_line_and_not_retried(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        topo = tmp_path / "busy.yaml"
        topo.write_text(yaml.safe_dump({
            "name": "busy", "app": "demo.app:app", "pythonpath": str(ROOT / "tests"),
            "processes": {"main": {"services": "*",
                                   "listeners": [{"port": port, "host": "127.0.0.1"}]}}}))
        code, out, err, took = run_to_exit(topo, {"AMOEBA_DATA_DIR": str(tmp_path)}, tmp_path)
    print(f"\ngave up after {took:.1f}s with code {code}; stderr: {err!r}")
    assert code == 1, out + err
    assert took < GIVE_UP_WITHIN, out
    assert len(pids(out, "main")) == 2  # the port may be let go: tried once more, then given up
    assert re.fullmatch(
        re.escape(f"amoeba run: process main failed to start twice: {topo}:") + r"\d+" + re.escape(
            f": listener processes.main.listeners[0]: 127.0.0.1:{port} is already in use "
            f"(another process?); free it (ss -ltnp 'sport = {port}' shows who holds it) or "
            f"change processes.main.listeners[0].port"), err.strip()), err


@pytest.mark.e2e
def test_an_app_failing_at_import_is_one_line(tmp_path):
    (tmp_path / "broken_app.py").write_text("raise ImportError('cannot import name frob')\n")
    topo = tmp_path / "broken.yaml"
    topo.write_text(yaml.safe_dump({
        "name": "broken", "app": "broken_app:app", "pythonpath": ".",
        "processes": {"main": {"services": "*", "listeners": [{"port": free_port()}]}}}))
    code, out, err, took = run_to_exit(topo, {"AMOEBA_DATA_DIR": str(tmp_path)}, tmp_path)
    assert code == 78 and took < GIVE_UP_WITHIN  # the app's code: a restart cannot fix it
    assert (f"{tmp_path / 'broken_app.py'}:1: app: importing 'broken_app' raised ImportError: "
            f"cannot import name frob") in err
    assert "fix: fix the app's code there" in err
    assert "Traceback" not in out + err


@pytest.fixture
def tickets_env(tmp_path):
    return {"AMOEBA_DATA_DIR": str(tmp_path / "data"), "INITIAL_STOCK": "50",
            "AMOEBA_SECRET": "i11-supervisor-test-secret"}


@pytest.mark.e2e
def test_callers_start_after_their_callees_are_ready(tickets_env, tmp_path):
    vp, tp = two_ports()
    run = Run(TICKETS / "microservices.yaml",
              {**tickets_env, "VACANCY_PORT": str(vp), "TICKET_PORT": str(tp)}, [tp], tmp_path)
    try:
        first = post(tp, "/api/v1/purchase", {"qty": 1})  # the first request after startup
        assert first.status_code == 200 and first.json()["remaining"] == 49
    finally:
        assert run.stop(signal.SIGINT) == 0
    out = run.output()
    lines = out.splitlines()

    def first(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    # ticket is spawned at once (its imports overlap vacancy's) but held: it opens
    # its database, runs start() and listens only once vacancy answers /readyz.
    assert "ticket started (pid" in out and "held until vacancy is ready" in out
    assert first("amoeba | vacancy is ready") < first("amoeba | ticket goes on: vacancy is ready")
    assert first("amoeba | ticket goes on") < first("Host microservices/ticket[0]")
    assert "ejecting" not in out  # no caller found its callee missing
    assert " 503 " not in out and "status=503" not in out


@pytest.mark.e2e
def test_a_process_crashing_after_ready_is_restarted_and_sigterm_exits_0(tmp_path):
    port = free_port()
    run = Run(ROOT / "tests" / "topologies" / "demo.yaml",
              {"PORT": str(port), "AMOEBA_DATA_DIR": str(tmp_path)}, [port], tmp_path)
    try:
        pid = get(port, "/").json()["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(port, "/readyz").status_code == 200 and get(port, "/").json()["pid"] != pid:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, run.output()
            assert run.proc.poll() is None, run.output()
            time.sleep(0.1)
    finally:
        assert run.stop(signal.SIGTERM) == 0
    out = run.output()
    assert "main exited (signal 9)" in out and "restarting in" in out
    assert "failed to start" not in out


@pytest.mark.e2e
def test_gateway_readyz_is_503_while_its_callee_is_down(tickets_env, tmp_path):
    vp, tp = two_ports()
    env = {**tickets_env, "VACANCY_PORT": str(vp), "TICKET_PORT": str(tp)}
    topo = TICKETS / "hybrid.yaml"  # the public gateway process calls a private vacancy
    env["PORT"] = str(tp)
    vacancy = Run(topo, env, [vp], tmp_path, args=("--process", "internal"))
    gateway = Run(topo, env, [tp], tmp_path, args=("--process", "public"))

    def ready_becomes(status: int, within: float) -> dict[str, object]:
        end = time.monotonic() + within
        while True:
            r = get(tp, "/readyz")
            if r.status_code == status:
                return dict(r.json())
            assert time.monotonic() < end, f"/readyz still {r.status_code}: {r.text}"
            time.sleep(0.1)

    try:
        assert get(tp, "/readyz").json()["checks"] == {"internal": "reachable"}
        assert vacancy.stop(signal.SIGINT) == 0
        down = ready_becomes(503, 10)
        assert down["checks"] == {"internal": "unreachable"}, down
        assert post(tp, "/api/v1/purchase", {"qty": 1}).status_code == 503
        vacancy = Run(topo, env, [vp], tmp_path, args=("--process", "internal"))
        assert ready_becomes(200, 10)["checks"] == {"internal": "reachable"}
        assert post(tp, "/api/v1/purchase", {"qty": 1}).status_code == 200
    finally:
        assert gateway.stop() == 0
        assert vacancy.stop() == 0


# -- the pieces, without processes ---------------------------------------------

class A(Service):
    pass


class B(Service):
    a: A


class C(Service):
    b: B


class D(Service):
    c: C


class E(Service):
    pass


def _topology(tmp_path: Path, placement: dict[str, list[str]], app: App) -> object:
    path = tmp_path / "t.yaml"
    procs = {name: {"services": services, "listeners": [{"port": free_port()}]}
             for name, services in placement.items()}
    path.write_text(yaml.safe_dump({"name": "t", "processes": procs}))
    return bind(load_topology(path), app)


def test_start_order_follows_dependencies_and_cycles_start_together(tmp_path):
    app = App("order", [A, B, C, D, E])
    chain = _topology(tmp_path, {"pa": ["a"], "pb": ["b"], "pcd": ["c", "d", "e"]}, app)
    graph = callees(app, chain)  # type: ignore[arg-type]
    assert graph == {"pa": frozenset(), "pb": {"pa"}, "pcd": {"pb"}}
    after = start_after(graph)
    assert after == graph
    assert start_waves(after) == [["pa"], ["pb"], ["pcd"]]
    # a and c together, b apart: the processes call each other (a cycle of processes).
    cyc = _topology(tmp_path, {"x": ["a", "c"], "y": ["b"], "z": ["d", "e"]}, app)
    graph = callees(app, cyc)  # type: ignore[arg-type]
    assert graph == {"x": {"y"}, "y": {"x"}, "z": {"x"}}
    after = start_after(graph)
    assert after == {"x": frozenset(), "y": frozenset(), "z": {"x"}}
    assert start_waves(after) == [["x", "y"], ["z"]]


def test_a_listeners_routes_count_as_calls(tmp_path):
    app = App("order", [A, B, C, D, E])
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump({"name": "routes", "processes": {
        "edge": {"services": ["a"], "listeners": [{"port": free_port(), "routes": ["a", "e"]}]},
        "pe": {"services": ["e"], "listeners": [{"port": free_port()}]},
        "rest": {"services": ["b", "c", "d"], "listeners": [{"port": free_port()}]}}}))
    graph = callees(app, bind(load_topology(path), app))
    assert graph == {"edge": {"pe"}, "pe": frozenset(), "rest": {"edge"}}
    assert start_waves(start_after(graph)) == [["pe"], ["edge"], ["rest"]]


def test_cause_is_the_exception_after_a_traceback():
    lines = [
        '{"time":"t","level":"INFO","logger":"amoeba.host","message":"starting"}',
        "Traceback (most recent call last):",
        '  File "/x/app.py", line 3, in start',
        "    raise RuntimeError('boom')",
        "    ^^^^^^^^^^^^^^^^^^^^^^^^^^",
        "RuntimeError: boom",
        "",
    ]
    assert startup_cause(lines) == "RuntimeError: boom"
    chained = ["Traceback (most recent call last):", '  File "a.py", line 1, in <module>',
               "    x", "KeyError: 'a'", "", "During handling of the above exception, another "
               "exception occurred:", "", "Traceback (most recent call last):",
               '  File "b.py", line 2, in <module>', "    y",
               "ModuleNotFoundError: No module named 'asyncpg'",
               "    fix: pip install 'amoeba[postgres]'"]
    assert startup_cause(chained) == ("ModuleNotFoundError: No module named 'asyncpg'\n"
                                      "    fix: pip install 'amoeba[postgres]'")


def test_cause_is_what_the_process_printed_after_its_logs():
    lines = ["2026-01-01T00:00:00.000Z INFO amoeba.host: starting",
             "t.yaml: 1 problem(s)", "t.yaml:4: settings.rate: unknown key",
             "    fix: did you mean settings.rate_limit?"]
    assert startup_cause(lines) == ("t.yaml: 1 problem(s)\nt.yaml:4: settings.rate: unknown key\n"
                                    "    fix: did you mean settings.rate_limit?")
    logged = ['{"time":"t","level":"ERROR","logger":"x","message":"database down",'
              '"exc":"Traceback (most recent call last):\\n  File \\"d.py\\", line 1, in f\\n'
              '    g()\\nOSError: [Errno 111] Connection refused"}',
              '{"time":"t","level":"INFO","logger":"x","message":"stopped"}']
    assert startup_cause(logged) == "database down: OSError: [Errno 111] Connection refused"
    assert startup_cause([]) == ""
    assert startup_cause(["x"] * 20).count("\n") == 7  # at most 8 lines


def test_same_cause_ignores_numbers_only():
    assert same_cause("port 8001 at 0x7f00aa: refused (pid 12)", "port 8002 at 0x7f00bb: refused "
                      "(pid 13)")
    assert not same_cause("RuntimeError: boom", "RuntimeError: bang")


def _supervisor() -> Supervisor:
    topo = load_topology(ROOT / "tests" / "topologies" / "demo.yaml")
    return Supervisor(str(topo.file), topo)


def _fail(sup: Supervisor, code: int, *lines: str) -> bool:
    child = sup.children[0]
    child.tail.clear()
    child.tail.extend(line.encode() for line in lines)
    return sup._failed_start(child, code, f"code {code}", 0.5)


def test_give_up_policy(capsys):
    sup = _supervisor()
    assert _fail(sup, EX_CONFIG, "amoeba run: no driver for postgresql://")
    assert sup.gave_up is not None and sup.gave_up.exit_code() == EX_CONFIG
    assert str(sup.gave_up) == "process main failed to start: no driver for postgresql://"

    sup = _supervisor()
    assert not _fail(sup, 1, "RuntimeError: boom 1")
    assert not _fail(sup, 2, "RuntimeError: boom 1")  # another exit code: another way
    assert _fail(sup, 2, "RuntimeError: boom 2")  # same code, same cause (numbers aside)
    assert str(sup.gave_up) == "process main failed to start twice: RuntimeError: boom 2"

    sup = _supervisor()
    causes = [f"RuntimeError: {w}" for w in ("one", "two", "three", "four", "five", "six")]
    given = [_fail(sup, 1, c) for c in causes[:MAX_START_FAILURES]]
    assert given == [False] * (MAX_START_FAILURES - 1) + [True]
    assert sup.gave_up is not None
    assert str(sup.gave_up).startswith(f"process main failed to start {MAX_START_FAILURES} times")

    sup = _supervisor()
    problems = ("t.yaml: 1 problem(s)", "t.yaml:4: settings.rat: unknown key",
                "    fix: did you mean settings.rate?")
    assert _fail(sup, EX_CONFIG, '{"time":"t","level":"INFO","logger":"x","message":"hi"}',
                 *problems)
    assert str(sup.gave_up) == ("process main failed to start: t.yaml: 1 problem(s)\n"
                                "    t.yaml:4: settings.rat: unknown key\n"
                                "    fix: did you mean settings.rate?")

    sup = _supervisor()
    assert _fail(sup, -9) is False and _fail(sup, -9) is True  # killed twice, no word
    assert sup.gave_up is not None and sup.gave_up.exit_code() == 1
    assert "printed no cause" in str(sup.gave_up)


@pytest.mark.e2e
def test_a_caller_held_for_a_callee_that_cannot_start_never_starts(tickets_env, tmp_path):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))  # vacancy listens on every address
        busy.listen()
        vp = busy.getsockname()[1]
        tp = free_port()
        code, out, err, took = run_to_exit(
            TICKETS / "microservices.yaml",
            {**tickets_env, "VACANCY_PORT": str(vp), "TICKET_PORT": str(tp)}, tmp_path)
    assert code == 1 and took < GIVE_UP_WITHIN, out + err  # a port in use: tried twice, given up
    assert err.startswith("amoeba run: process vacancy failed to start twice: ") and "already in use" in err
    assert "held until vacancy is ready" in out and "goes on" not in out
    assert "services=['ticket']>: stopped before it started" in out  # its stdin ended: no signal
    assert "Traceback" not in out + err
    [ticket] = pids(out, "ticket")
    assert gone(ticket)


@pytest.mark.e2e
def test_a_missing_driver_ends_amoeba_run_within_seconds(tmp_path):
    # asyncpg made absent for every process (find_spec answers None, import fails).
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['asyncpg'] = None\n")
    env = {"PYTHONPATH": str(hide), "AMOEBA_DATA_DIR": str(tmp_path / "data"),
           "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/i11_supervisor_never_created",
           "REDIS_URL": "redis://127.0.0.1:6379/0?prefix=i11-supervisor-never:",
           "EVENTS_URL": "nats://127.0.0.1:4222?namespace=i11never"}
    raw = yaml.safe_load((ROOT / "examples" / "shop" / "topologies" / "microservices.yaml")
                         .read_text())
    raw["pythonpath"] = str(ROOT / "examples")
    for proc in raw["processes"].values():
        for lst in proc["listeners"]:
            lst["port"] = free_port()
    topo = tmp_path / "shop.yaml"
    topo.write_text(yaml.safe_dump(raw))
    code, out, err, took = run_to_exit(topo, env, tmp_path)
    print(f"\nmissing driver: exit {code} after {took:.1f}s; stderr: {err!r}")
    assert code != 0 and took < GIVE_UP_WITHIN, out + err
    assert code == 78, err  # the installation: a restart cannot fix it
    assert "needs asyncpg, which is not installed" in err and "pip install 'amoeba[postgres]'" in err
    assert len(err.strip().splitlines()) <= 3 and "Traceback" not in out + err, err  # one cause
    for label in ("gateway", "accounts", "catalog", "orders", "notifications"):
        assert all(gone(pid) for pid in pids(out, label))


# -- the edges of stopping -------------------------------------------------------

@pytest.mark.e2e
def test_children_stop_when_amoeba_run_itself_is_killed(tmp_path):
    """SIGKILL leaves the supervisor no chance to stop its children: they stop on
    their own (PR_SET_PDEATHSIG), and no orphan keeps the port."""
    port = free_port()
    run = Run(ROOT / "tests" / "topologies" / "demo.yaml",
              {"PORT": str(port), "AMOEBA_DATA_DIR": str(tmp_path)}, [port], tmp_path)
    child = get(port, "/").json()["pid"]
    try:
        assert child != run.proc.pid
        run.proc.kill()
        run.proc.wait(30)
        deadline = time.monotonic() + 30
        while not gone(child):
            assert time.monotonic() < deadline, f"process {child} outlived amoeba run by 30 s"
            time.sleep(0.1)
        with socket.socket() as s:  # nothing listens on the port any more
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
            s.bind(("127.0.0.1", port))
            s.listen()
    finally:
        if not gone(child):
            os.kill(child, signal.SIGKILL)


STUCK_APP = '''
import time

from amoeba import App, Service, get


class Stuck(Service):
    @get("/stuck")
    async def stuck(self) -> str:
        time.sleep(300)  # blocks its process's event loop: no signal is acted on
        return "late"


app = App("stuck", [Stuck])
'''


@pytest.mark.e2e
def test_a_child_that_does_not_stop_is_killed_after_grace_delay_and_5_s(tmp_path):
    (tmp_path / "stuck_app.py").write_text(textwrap.dedent(STUCK_APP))
    port = free_port()
    path = tmp_path / "stuck.yaml"
    path.write_text(yaml.safe_dump({
        "name": "stuck", "app": "stuck_app:app", "pythonpath": ".",
        "settings": {"drain_delay": "0s", "grace": "1s"},  # the supervisor waits 1 + 0 + 5 s
        "processes": {"main": {"services": ["stuck"],
                               "listeners": [{"port": port, "host": "127.0.0.1"}]}}}))
    run = Run(path, {"AMOEBA_DATA_DIR": str(tmp_path / "data")}, [port], tmp_path)
    child = get(port, "/").json()["pid"]
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /stuck HTTP/1.1\r\nhost: t\r\n\r\n")

            def blocked() -> bool:  # the child's loop no longer answers
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0)
                except httpx.TimeoutException:
                    return True
                return False

            deadline = time.monotonic() + 30
            while not blocked():
                assert time.monotonic() < deadline, "GET /stuck did not block the child"
            sent = time.monotonic()
            code = run.stop(signal.SIGINT, timeout=60)
            took = time.monotonic() - sent
    finally:
        if not gone(child):
            os.kill(child, signal.SIGKILL)
    out = run.output()
    assert "main did not stop within 6s: SIGKILL" in out, out
    assert 6 - 0.5 <= took < 6 + 20, took  # at the deadline, never before it
    assert code == 0 and gone(child)
