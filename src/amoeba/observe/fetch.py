"""A small HTTP/1.1 GET client for reading other processes' endpoints
(``/_amoeba/api/stats``, ``/readyz``): no dependency, one connection per
request, a hard timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

__all__ = ["FetchError", "fetch", "fetch_json"]


class FetchError(Exception):
    """The endpoint could not be read; the message says where and why."""


async def fetch(host: str, port: int, path: str, *, timeout: float = 2.0,  # noqa: ASYNC109
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """``GET http://host:port/path``: (status, body)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                head = f"GET {path} HTTP/1.1\r\nhost: {host}:{port}\r\nconnection: close\r\n"
                for k, v in (headers or {}).items():
                    head += f"{k}: {v}\r\n"
                writer.write((head + "\r\n").encode("latin-1"))
                raw = await reader.read()
            finally:
                writer.close()
    except TimeoutError:
        raise FetchError(f"http://{host}:{port}{path}: no answer within {timeout:g}s") from None
    except OSError as exc:
        raise FetchError(f"http://{host}:{port}{path}: {exc.strerror or exc}") from None
    header, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise FetchError(f"http://{host}:{port}{path}: malformed answer")
    lines = header.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise FetchError(f"http://{host}:{port}{path}: malformed status line {lines[0]!r}") from None
    if any(line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower()
           for line in lines[1:]):
        body = _unchunk(body)
    return status, body


def _unchunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return bytes(out)


async def fetch_json(host: str, port: int, path: str, *, timeout: float = 2.0,  # noqa: ASYNC109
                     headers: dict[str, str] | None = None) -> Any:
    status, body = await fetch(host, port, path, timeout=timeout, headers=headers)
    if status != 200:
        raise FetchError(f"http://{host}:{port}{path}: HTTP {status}: {body[:200]!r}")
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise FetchError(f"http://{host}:{port}{path}: not JSON: {exc}") from None
