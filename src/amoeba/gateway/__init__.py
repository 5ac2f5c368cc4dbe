"""The HTTP edge.

- ``http``:    HTTP/1.1 protocol on httptools (hands RPC connections over)
- ``router``:  method + path -> route
- ``edge``:    request -> method arguments -> response; built-in endpoints
- ``openapi``: the OpenAPI document of a listener's routes (and its mounted apps')
- ``asgi``:    mounted ASGI apps: lifespan, the per-request bridge, streamed answers,
               the mount table (asked only after the router missed)
- ``forward``: a mounted app's requests forwarded over RPC to the process hosting it
- ``docs.html``: the self-contained interactive docs page served at /docs
"""
