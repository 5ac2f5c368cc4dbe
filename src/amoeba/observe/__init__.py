"""Seeing the system: metrics, traces, logs, status, dashboard, advice.

* ``snapshot``  the JSON a process reports about itself (the contract between
  the runtime and every reader: ``/metrics``, ``amoeba status``, the
  dashboard, ``amoeba advise``);
* ``fetch``     a small HTTP/1.1 GET client for reading those snapshots.

Readers (pure, except ``reader``):

* ``reader``    the CLI's way in: every replica's stats, or one process's cluster view;
* ``status``    ``amoeba status``: replicas, health, uptime, rates, as a table;
* ``advise``    ``amoeba advise``: co-locate / split advice from two cluster snapshots
  (``Advisor``: the same over a sliding window, for a server);
* ``graph``     ``amoeba graph``: the static graph from the annotations, Mermaid / DOT;
* ``table``     plain-text tables and the units they show;
* ``cli``       the three subcommands' parsers and handlers;
* ``dashboard.html``  the page at ``/_amoeba/`` (polls ``api/cluster``).
"""
