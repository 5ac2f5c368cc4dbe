"""Running topologies.

- ``host``:       Host, one process (one replica): wiring, listeners, draining
- ``process``:    run one process in this interpreter (signals, uvloop)
- ``supervisor``: run every process of a topology as children
- ``info``:       RuntimeInfo handed to services
"""
