"""Local and remote call paths.

- ``wire``:       RPC framing (length-prefixed msgpack frames, MTS1 magic)
- ``credential``: HMAC-signed internal tokens for private endpoints
- ``client``:     pooled connections to one process's replicas (caller side)
- ``server``:     the RPC protocol of a listener (callee side)
- ``stub``:       remote and strict stubs built from a service's spec
"""
