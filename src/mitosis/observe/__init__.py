"""Seeing the system: metrics, traces, logs, status, dashboard, advice.

* ``snapshot``  the JSON a process reports about itself (the contract between
  the runtime and every reader: ``/metrics``, ``mitosis status``, the
  dashboard, ``mitosis advise``);
* ``fetch``     a small HTTP/1.1 GET client for reading those snapshots.
"""
