"""A trivial ASGI 3 app (a constant JSON answer), and a service that mounts it.

    uvicorn asgi_trivial:app              # the app alone
    amoeba run bench/topologies/asgi-trivial.yaml   # mounted under /t
"""

from __future__ import annotations

from typing import Any

from amoeba import App, Mount, Service

BODY = b'{"ok":true}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"11")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


class Trivial(Service):
    mounts = (Mount("asgi_trivial:app", "/t"),)


service_app = App("trivial", services=[Trivial])
