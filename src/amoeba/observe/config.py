"""``settings.observe`` of a topology::

    settings:
      observe:
        metrics: true            # per-call / per-route numbers, /metrics, /_amoeba/
        tracing: true            # W3C traceparent made at the edge and passed on
        otlp_endpoint: http://otel-collector:4318   # export spans (needs the SDK)
        expose: loopback         # /metrics and /_amoeba/ on public listeners:
                                 # loopback (default) | never | always

Private listeners always answer ``/metrics`` and ``/_amoeba/``: they are the
cluster-internal side that Prometheus scrapes.  ``AMOEBA_OBSERVE=off`` in the
environment turns metrics and tracing off whatever the topology says (what
``bench/tickets.py`` compares against).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["ObserveSettings"]

_EXPOSE = ("loopback", "never", "always")


@dataclass(frozen=True)
class ObserveSettings:
    metrics: bool = True
    tracing: bool = True
    otlp_endpoint: str | None = None
    expose: str = "loopback"

    @classmethod
    def from_settings(cls, extra: dict[str, Any]) -> ObserveSettings:
        raw = extra.get("observe")
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ValueError(f"settings.observe: expected a mapping, got {raw!r}; "
                             f"fix: observe: {{metrics: true, tracing: true}}")
        unknown = sorted(set(raw) - {"metrics", "tracing", "otlp_endpoint", "expose"})
        if unknown:
            raise ValueError(f"settings.observe.{unknown[0]}: unknown key; fix: use metrics, "
                             f"tracing, otlp_endpoint or expose")
        for key in ("metrics", "tracing"):
            if key in raw and not isinstance(raw[key], bool):
                raise ValueError(f"settings.observe.{key}: {raw[key]!r} is not true/false; "
                                 f"fix: {key}: true")
        endpoint = raw.get("otlp_endpoint")
        if endpoint is not None and (not isinstance(endpoint, str) or
                                     not endpoint.startswith(("http://", "https://"))):
            raise ValueError(f"settings.observe.otlp_endpoint: {endpoint!r} is not an http(s) URL; "
                             f"fix: otlp_endpoint: http://collector:4318")
        expose = raw.get("expose", "loopback")
        if expose not in _EXPOSE:
            raise ValueError(f"settings.observe.expose: {expose!r}; fix: one of "
                             f"{', '.join(_EXPOSE)}")
        on = os.environ.get("AMOEBA_OBSERVE", "on").lower() not in ("off", "0", "false", "no")
        return cls(metrics=on and raw.get("metrics", True), tracing=on and raw.get("tracing", True),
                   otlp_endpoint=endpoint or None, expose=expose)
