"""Plain-text tables for the terminal, and the units they show (no
dependency: aligned columns, numbers right-aligned)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["cores", "duration", "human_bytes", "rate", "seconds", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = (),
          indent: str = "") -> str:
    """Columns two spaces apart; ``right`` lists the columns aligned right."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if i in right else c.ljust(w)
               for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return (indent + "  ".join(out)).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def duration(secs: float) -> str:
    """``45s``, ``3m12s``, ``2h05m``, ``3d04h``."""
    s = int(max(secs, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def seconds(secs: float) -> str:
    """A short latency: ``85µs``, ``1.2ms``, ``340ms``, ``2.1s``."""
    if secs < 0.001:
        return f"{secs * 1e6:.0f}µs"
    if secs < 0.01:
        return f"{secs * 1e3:.1f}ms"
    if secs < 1:
        return f"{secs * 1e3:.0f}ms"
    return f"{secs:.1f}s"


def human_bytes(n: float) -> str:
    """``512 B``, ``1.5 kB``, ``12 MB`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" or abs(n) >= 100 else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def rate(per_s: float) -> str:
    """Calls or requests per second: ``0``, ``0.20``, ``12.5``, ``1042``."""
    if per_s == 0:
        return "0"
    if per_s < 1:
        return f"{per_s:.2f}"
    if per_s < 100:
        return f"{per_s:.1f}"
    return f"{per_s:.0f}"


def cores(n: float) -> str:
    """CPU-seconds per second: ``0``, ``<0.001``, ``0.012``, ``1.50``."""
    if n == 0:
        return "0"
    if abs(n) < 0.001:
        return "<0.001"
    return f"{n:.3f}" if abs(n) < 1 else f"{n:.2f}"
