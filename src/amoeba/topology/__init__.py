"""Topology: YAML model, loader and validation.  No I/O beyond reading the file.

- ``model``:  frozen records (Topology, Process, Listener, Settings, Problem)
- ``loader``: YAML -> records, ``${VAR:-default}`` expansion, line numbers
- ``check``:  validation against an App (placement, ports, cycles, privacy, unknown keys)
- ``schema``: the keys ``settings:`` and ``resources:`` may hold, for "did you mean"
- ``deploy``: the optional ``deploy:`` section (image, edge port, k8s sizes), read by ``amoeba deploy``
"""

from amoeba.topology.check import bind, find_cycle
from amoeba.topology.loader import load_topology, parse_duration, parse_size
from amoeba.topology.model import Listener, Problem, Process, Settings, Topology, TopologyError

__all__ = [
    "Listener",
    "Problem",
    "Process",
    "Settings",
    "Topology",
    "TopologyError",
    "bind",
    "find_cycle",
    "load_topology",
    "parse_duration",
    "parse_size",
]
