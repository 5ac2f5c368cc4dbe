"""Running topologies.

- ``host``:       Host, one process (one replica): wiring, listeners, draining
- ``process``:    run one process in this interpreter (signals, uvloop)
- ``preflight``:  what ``check`` reports and each process checks before it starts;
                  the exit codes of ``amoeba run`` (78: EX_CONFIG)
- ``supervisor``: run every process of a topology as children
- ``info``:       RuntimeInfo handed to services
"""
