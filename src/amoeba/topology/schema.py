"""The keys ``settings:`` and ``resources:`` may hold, at every level, so a typo
is reported (with "did you mean") instead of silently ignored.

Each part of amoeba validates the values of its own section when a process
builds it (``gateway/policy.py``, ``auth/tokens.py``, ``data/database.py``,
...); this table only names the keys, so the topology check can read it
without importing those parts.  ``tests/test_check.py`` pins it to them.

Two places are open by design: ``settings.app`` holds the application's own
settings (services read them as ``self.runtime.settings["app"]``), and a
resource class of the app's own (``kind = "blob"``) may be configured by
``resources.blob`` and ``settings.blob``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["APP_SETTINGS", "RESOURCES", "SETTINGS", "Schema", "did_you_mean", "unknown_keys"]

# A mapping of its allowed keys to the schema of each value; None: any value.
Schema = dict[str, Any] | None

_BUCKET: Schema = {"burst": None, "rate": None}

# The sections of settings: that parts of amoeba read from ``Settings.extra``; the
# typed settings of model.Settings (deadline, max_body, ...) are the loader's own
# (loader._SETTING_KEYS) and join them in check.py.  A key added to a part's
# section is added here too: tests/test_check.py fails until it is.
SETTINGS: dict[str, Schema] = {
    # gateway/policy.py
    "access_log": None, "trusted_proxies": None,
    "rate_limit": {"user": _BUCKET, "ip": _BUCKET},  # gateway/limits.py
    "cors": dict.fromkeys(("origins", "methods", "headers", "max_age", "credentials")),
    "auth": dict.fromkeys(("issuer", "audience", "algorithms", "access_ttl", "leeway", "keys",
                           "revocation", "session_recheck")),
    "database": dict.fromkeys(("pool_size", "max_overflow", "pool_timeout", "migrate", "echo")),
    "events": dict.fromkeys(("max_attempts", "backoff", "max_backoff", "relay_poll", "batch")),
    "observe": dict.fromkeys(("metrics", "tracing", "otlp_endpoint", "expose")),
}
APP_SETTINGS = "app"  # free-form: the application's own

# The resource kinds amoeba itself reads a URL for (drivers.py names their libraries).
RESOURCES = ("database", "cache", "events", "sqlite")


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_keys(value: Any, schema: Schema, key: str) -> Iterator[tuple[str, str, str]]:
    """``(key, message, fix)`` for each key of ``value`` that ``schema`` does not
    name, at every level.  A value of the wrong shape is its owner's to report."""
    if schema is None or not isinstance(value, dict):
        return
    for k, v in value.items():
        sub = f"{key}.{k}"
        if k in schema:
            yield from unknown_keys(v, schema[k], sub)
            continue
        close = did_you_mean(str(k), schema)
        keys = ", ".join(sorted(schema))
        if close is not None:
            yield sub, f"unknown key; did you mean `{close}`?", f"rename it `{close}` (the keys " \
                f"of {key} are: {keys})"
        else:
            yield sub, "unknown key", f"use one of: {keys}"
