"""Load-generation helpers: start/stop pinned servers and drive them with wrk."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LoadResult",
    "free_port",
    "lua_string",
    "parse_wrk",
    "run_wrk",
    "run_wrk_script",
    "server_log",
    "start_server",
    "stop_server",
    "tree_cpu_seconds",
    "wait_http",
    "wrk_script",
]


@dataclass(frozen=True)
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    non2xx: int
    cpu_us: float = 0.0  # server CPU (user + system) per request, when measured


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its descendants.
    Less noisy than throughput on a shared machine: time another tenant steals
    is not charged to our processes."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, *, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `url` with GET until it answers with a status below 500.

    Pass the server's `proc` to fail fast (with its log) if it dies while starting.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"server exited with code {proc.returncode} before answering {url}\n{server_log(proc)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2.0):
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            last_error = exc
        except (urllib.error.URLError, OSError) as exc:
            last_error = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s (last error: {last_error})")


# --- servers -----------------------------------------------------------------

_LOGS: dict[int, Path] = {}


def _pinned(argv: list[str], cpu: int | None) -> list[str]:
    if cpu is None:
        return list(argv)
    if shutil.which("taskset") is None:
        raise RuntimeError("taskset not found; install it with `apt-get install util-linux`")
    return ["taskset", "-c", str(cpu), *argv]


def start_server(
    argv: list[str],
    *,
    cpu: int | None,
    env: dict[str, str] | None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server pinned to `cpu` in its own session; output goes to a log file.

    `env` entries are layered over the current environment.
    """
    log_path = Path(tempfile.mkdtemp(prefix="bench-server-")) / "server.log"
    full_env = {**os.environ, **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            _pinned(argv, cpu),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
    _LOGS[proc.pid] = log_path
    return proc


def server_log(proc: subprocess.Popen[bytes]) -> str:
    """The captured stdout/stderr of a process started by `start_server`."""
    path = _LOGS.get(proc.pid)
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM the server's process group, escalating to SIGKILL after `timeout`."""
    if proc.poll() is not None:
        return
    # start_new_session made the server a session (and group) leader: pgid == pid.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


# --- wrk ---------------------------------------------------------------------


def lua_string(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    out = []
    for byte in raw:
        char = chr(byte)
        if char in '"\\' or not 0x20 <= byte < 0x7F:
            out.append(f"\\{byte}")  # Lua decimal escape, valid for any byte
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def wrk_script(method: str, body: bytes | None, headers: dict[str, str]) -> str:
    lines = [f"wrk.method = {lua_string(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {lua_string(body)}")
    for name, value in headers.items():
        lines.append(f"wrk.headers[{lua_string(name)}] = {lua_string(value)}")
    return "\n".join(lines) + "\n"


_DURATION_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"unrecognised wrk duration {text!r}")
    return round(float(match[1]) * _DURATION_MS[match[2]], 6)


def _count(text: str) -> int:
    # Normally plain integers, but wrk may scale large counts (e.g. "1.20M").
    match = re.fullmatch(r"([\d.]+)([kMGT]?)", text)
    if match is None:
        raise ValueError(f"unrecognised wrk count {text!r}")
    scale = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[match[2]]
    return round(float(match[1]) * scale)


def parse_wrk(output: str) -> LoadResult:
    """Parse the text report of `wrk --latency`."""

    def find(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, output, re.MULTILINE)

    rps = find(r"^Requests/sec:\s+([\d.]+)")
    total = find(r"^\s*(\d+) requests in ")
    p50 = find(r"^\s+50%\s+(\S+)")
    p99 = find(r"^\s+99%\s+(\S+)")
    if rps is None or total is None or p50 is None or p99 is None:
        raise RuntimeError(f"could not parse wrk output:\n{output}")
    sockets = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    non2xx = find(r"Non-2xx or 3xx responses: (\d+)")
    return LoadResult(
        rps=float(rps[1]),
        p50_ms=_duration_ms(p50[1]),
        p99_ms=_duration_ms(p99[1]),
        requests=int(total[1]),
        errors=sum(_count(n) for n in sockets.groups()) if sockets else 0,
        non2xx=int(non2xx[1]) if non2xx else 0,
    )


def run_wrk(
    url: str,
    *,
    method: str = "POST",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    connections: int = 50,
    duration: int = 10,
    threads: int = 1,
    cpu: int | None = 1,
) -> LoadResult:
    """Drive `url` with wrk (pinned to `cpu` when given) and return its summary."""
    return parse_wrk(run_wrk_script(url, wrk_script(method, body, headers or {}),
                                    connections=connections, duration=duration,
                                    threads=threads, cpu=cpu))


def run_wrk_script(
    url: str,
    script: str,
    *,
    connections: int = 50,
    duration: int = 10,
    threads: int = 1,
    cpu: int | None = 1,
    timeout: int | None = None,
) -> str:
    """Run wrk with the Lua `script` (pinned to `cpu` when given); its whole
    stdout, for `parse_wrk` and whatever the script's ``done()`` printed.
    `timeout`: seconds after which wrk counts an answer as a timeout error
    (and leaves it out of the latencies); wrk's default is 2."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk not found on PATH; install it with `apt-get install wrk`")
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        path = Path(tmp) / "request.lua"
        path.write_text(script)
        argv = _pinned(
            [
                wrk,
                f"--threads={threads}",
                f"--connections={connections}",
                f"--duration={duration}s",
                "--latency",
                *([f"--timeout={timeout}s"] if timeout else []),
                f"--script={path}",
                url,
            ],
            cpu,
        )
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + (timeout or 2) + 60,
                              check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"wrk failed (exit {done.returncode}): {' '.join(argv)}\n{done.stdout}{done.stderr}"
        )
    return done.stdout
