"""Why a child process died before it was ready, read from its last output
lines (pure text work, no I/O).

What a process prints on its way out comes after its last log line: a
Python traceback (whose last lines are the exception: ``RuntimeError:
boom``), or the problems it printed itself (``amoeba run: listener ...``,
a topology error with its ``fix:`` lines).  When it printed nothing after
its logs, the last error it logged is the best word left.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import msgspec

__all__ = ["same_cause", "startup_cause"]

MAX_LINES = 8
MAX_WIDTH = 400
_TEXT_LOG = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: (.*)$")
_TRACEBACK = "Traceback (most recent call last):"
_OWN_PREFIX = "amoeba run: "
_json_line = msgspec.json.Decoder(dict[str, object])


def _log_record(line: str) -> tuple[str, str, str] | None:
    """(level, message, exception) of a log line in either style, else None."""
    if line.startswith("{"):
        try:
            rec = _json_line.decode(line)
        except msgspec.DecodeError:
            return None
        if "level" not in rec or "message" not in rec:
            return None
        return str(rec["level"]), str(rec["message"]), str(rec.get("exc") or "")
    m = _TEXT_LOG.match(line)
    return (m.group(1), m.group(2), "") if m else None


def _exception_lines(lines: Sequence[str]) -> list[str]:
    """The exception at the end of the last traceback in ``lines``."""
    start = max(i for i, line in enumerate(lines) if line.startswith(_TRACEBACK))
    body = lines[start + 1:]
    frames = [i for i, line in enumerate(body) if line.startswith("  File ")]
    i = frames[-1] + 1 if frames else 0
    while i < len(body) and body[i].startswith((" ", "\t")):  # the frame's code and ^^^ marks
        i += 1
    return [line for line in body[i:] if line.strip()] or list(body[-1:])


def _shorten(lines: Sequence[str]) -> str:
    # "amoeba run: " starts what a process prints about itself; the caller says who it is.
    kept = [line.removeprefix(_OWN_PREFIX).rstrip()[:MAX_WIDTH] for line in lines if line.strip()]
    if len(kept) > MAX_LINES:
        kept = [*kept[:MAX_LINES - 1], f"... ({len(kept) - MAX_LINES + 1} more line(s))"]
    return "\n".join(kept)


def startup_cause(lines: Sequence[str]) -> str:
    """The cause a dead child gave, one line when it gave one (a few when it
    printed several problems), or "" when its output says nothing."""
    lines = [line.rstrip("\r") for line in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    tail: list[str] = []
    for line in reversed(lines):
        if _log_record(line) is not None:
            break
        tail.append(line)
    tail.reverse()
    if tail:
        if any(line.startswith(_TRACEBACK) for line in tail):
            return _shorten(_exception_lines(tail))
        return _shorten(tail)
    records = [r for line in lines if (r := _log_record(line)) is not None]
    worst = [r for r in records if r[0] in ("ERROR", "CRITICAL")] or records[-1:]
    if not worst:
        return ""
    _, message, exc = worst[-1]
    if exc:
        exc_lines = exc.splitlines()
        last = _exception_lines(exc_lines) if _TRACEBACK in exc else exc_lines[-1:]
        return _shorten([f"{message}: {' '.join(last)}"])
    return _shorten([message])


_VARYING = re.compile(r"0x[0-9a-fA-F]+|\d+")


def same_cause(a: str, b: str) -> bool:
    """Whether two causes are the same failure: equal once addresses, pids,
    times and other numbers are set aside."""
    return _VARYING.sub("#", a) == _VARYING.sub("#", b)
