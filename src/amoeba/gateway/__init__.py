"""The HTTP edge.

- ``http``:    HTTP/1.1 protocol on httptools (hands RPC connections over)
- ``router``:  method + path -> route
- ``edge``:    request -> method arguments -> response; built-in endpoints
- ``openapi``: the OpenAPI document of a listener's routes
- ``docs.html``: the self-contained interactive docs page served at /docs
"""
