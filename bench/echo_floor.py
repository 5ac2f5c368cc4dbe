"""The floor for a remote round trip: a bare asyncio Protocol echo server for
4-byte-length-framed messages, on uvloop as amoeba's processes are."""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop


def take_frames(buf: bytearray) -> list[bytes]:
    """Cut every complete length-prefixed frame (prefix included) off ``buf``."""
    out = []
    while len(buf) >= 4:
        n = int.from_bytes(buf[:4], "big")
        if len(buf) < 4 + n:
            break
        out.append(bytes(buf[: 4 + n]))
        del buf[: 4 + n]
    return out


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for frame in take_frames(self.buf):
            self.t.write(frame)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
