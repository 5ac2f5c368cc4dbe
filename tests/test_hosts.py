"""One topology across hosts: each process of the hybrid ticket sale in a
Linux network namespace of its own, joined by veth pairs, as separate
machines on two networks would be::

    outside (a user)        public host                 private host
    10.77.1.1 ───────────── 10.77.1.2 | 10.77.2.1 ───── 10.77.2.2
                            ticket :8000 (public)       vacancy :8001 (private)

The public host does not forward packets between its two networks, so the
outside can reach ticket and nothing else; ticket calls vacancy over RPC.

Needs root and ``ip netns`` (iproute2): skipped otherwise, or failed when
``AMOEBA_REQUIRE_SERVICES=1``.  The test creates its own namespaces (named
after its pid) and deletes them, whatever happens.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e import ROOT
from require import missing

pytestmark = pytest.mark.e2e

TOPOLOGY = ROOT / "tests" / "topologies" / "tickets-hosts.yaml"
OUT, PUB, PRIV = "10.77.1.1", "10.77.1.2", "10.77.2.2"
PUB_INNER = "10.77.2.1"

# What a client on one host does, run inside that host's namespace: one HTTP
# request over a plain socket, answered as JSON: the status, or the errno.
CLIENT = r"""
import errno, json, socket, sys, time
host, port, method, path, body, wait = sys.argv[1:7]
port, end = int(port), time.monotonic() + float(wait)
while True:
    try:
        s = socket.create_connection((host, port), timeout=1.5)
        req = f"{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n"
        if body:
            req += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        s.sendall((req + "\r\n" + body).encode())
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
        head, _, payload = raw.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        if status == 200 or time.monotonic() > end:
            print(json.dumps({"status": status, "body": payload.decode()}))
            break
    except OSError as exc:
        if time.monotonic() > end:
            name = errno.errorcode.get(exc.errno or 0, str(exc))
            name = "timeout" if isinstance(exc, TimeoutError) else name
            print(json.dumps({"error": name}))
            break
    time.sleep(0.1)
"""


def _require_netns() -> None:
    why = None
    if os.geteuid() != 0:
        why = "network namespaces need root"
    elif shutil.which("ip") is None:
        why = "ip (iproute2) is not installed: apt-get install iproute2"
    else:
        probe = f"amoeba-probe-{os.getpid()}"
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if made.returncode != 0:
            why = f"ip netns add failed: {made.stderr.strip()}"
        else:
            subprocess.run(["ip", "netns", "del", probe], check=False)
    if why is None:
        return
    missing(f"{why}; run as root with iproute2")


def _ip(*args: str, ns: str | None = None) -> None:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


@pytest.fixture
def hosts() -> Iterator[dict[str, str]]:
    """Three namespaces, outside - public - private, as described above."""
    _require_netns()
    base = f"amoeba-{os.getpid()}"
    ns = {"out": f"{base}-out", "pub": f"{base}-pub", "priv": f"{base}-priv"}
    try:
        for name in ns.values():
            _ip("netns", "add", name)
            _ip("link", "set", "lo", "up", ns=name)
        # Created straight inside the namespaces: no name in the root namespace to collide with.
        _ip("link", "add", "to-pub", "netns", ns["out"], "type", "veth",
            "peer", "name", "to-out", "netns", ns["pub"])
        _ip("link", "add", "to-priv", "netns", ns["pub"], "type", "veth",
            "peer", "name", "to-pub", "netns", ns["priv"])
        for name, dev, addr in ((ns["out"], "to-pub", OUT), (ns["pub"], "to-out", PUB),
                                (ns["pub"], "to-priv", PUB_INNER), (ns["priv"], "to-pub", PRIV)):
            _ip("addr", "add", f"{addr}/24", "dev", dev, ns=name)
            _ip("link", "set", dev, "up", ns=name)
        subprocess.run(["ip", "netns", "exec", ns["pub"], "sysctl", "-qw", "net.ipv4.ip_forward=0"],
                       check=True)
        yield ns
    finally:
        for name in ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _client(ns: str, host: str, port: int, path: str, *, method: str = "GET", body: str = "",
            wait: float = 0.0) -> dict[str, object]:
    """One request from inside ``ns``; ``wait``: retry until 200 that long."""
    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT,
                           host, str(port), method, path, body, str(wait)],
                          capture_output=True, text=True, timeout=wait + 20)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _start(ns: str, process: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "amoeba", "run", str(TOPOLOGY),
             "--process", process],
            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)


def test_rpc_across_hosts_and_the_private_host_is_out_of_reach(hosts, tmp_path):
    env = {"AMOEBA_SECRET": secrets.token_hex(16), "INITIAL_STOCK": "50",
           "PUBLIC_HOST": "0.0.0.0", "PUBLIC_PORT": "8000",
           "VACANCY_HOST": PRIV, "VACANCY_ADDRESS": PRIV, "VACANCY_PORT": "8001"}
    procs = [
        _start(hosts["priv"], "internal", {**env, "AMOEBA_DATA_DIR": str(tmp_path / "priv")},
               tmp_path / "internal.log"),
        _start(hosts["pub"], "public", {**env, "AMOEBA_DATA_DIR": str(tmp_path / "pub")},
               tmp_path / "public.log"),
    ]
    try:
        # /readyz of the public process is 200 once it reaches vacancy over RPC.
        ready = _client(hosts["out"], PUB, 8000, "/readyz", wait=30)
        assert ready.get("status") == 200, (ready, _logs(tmp_path))
        index = json.loads(str(_client(hosts["out"], PUB, 8000, "/")["body"]))
        assert index["mode"] == "hybrid-hosts" and index["process"] == "public"

        # A purchase from outside: ticket (public host) reserves at vacancy (private host).
        bought = _client(hosts["out"], PUB, 8000, "/api/v1/purchase", method="POST",
                         body='{"qty": 2}')
        assert bought.get("status") == 200, (bought, _logs(tmp_path))
        assert json.loads(str(bought["body"]))["remaining"] == 48

        # From outside, the private host is not even routable: no route to 10.77.2.0/24.
        direct = _client(hosts["out"], PRIV, 8001, "/healthz")
        # Even with a route through the public host: it does not forward, packets die there.
        _ip("route", "add", "10.77.2.0/24", "via", PUB, ns=hosts["out"])
        routed = _client(hosts["out"], PRIV, 8001, "/healthz")
        # The public host's other address is not a way in either: vacancy listens on 10.77.2.2 only.
        inner = _client(hosts["out"], PUB_INNER, 8001, "/healthz")
        # The public host reaches it, and without the internal credential only the probes answer.
        probe = _client(hosts["pub"], PRIV, 8001, "/healthz")
        anonymous = _client(hosts["pub"], PRIV, 8001, "/api/v1/reserve", method="POST",
                            body='{"qty": 1}')
        print(f"\nhosts: outside -> public {PUB}:8000 purchase {bought['status']}; "
              f"outside -> private {PRIV}:8001 {direct}; with a route via the public host "
              f"{routed}; outside -> {PUB_INNER}:8001 {inner}; public -> private /healthz "
              f"{probe['status']}, reserve without credential {anonymous['status']}")
        assert direct == {"error": "ENETUNREACH"}
        assert routed == {"error": "timeout"}
        assert inner == {"error": "ECONNREFUSED"}
        assert probe["status"] == 200
        assert anonymous["status"] == 401
        again = _client(hosts["out"], PUB, 8000, "/api/v1/purchase", method="POST", body='{"qty": 1}')
        assert json.loads(str(again["body"]))["remaining"] == 47
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _logs(tmp: Path) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text()}" for f in sorted(tmp.glob("*.log")))
