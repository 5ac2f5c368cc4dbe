"""What a test needs from the machine, and one switch for its absence.

A test that needs a server, a binary or an optional package calls
:func:`missing` when it is not there: that skips the test on a laptop, saying
what to install or start, and fails it when ``AMOEBA_REQUIRE_SERVICES=1``
(CI sets it), so CI cannot go green while the evidence did not run.
``conftest.py`` then checks every skip of such a run against ``ALLOWED_SKIPS``.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest

__all__ = ["ALLOWED_SKIPS", "import_or_missing", "missing", "required"]

# Skips that are part of a test's design, not a missing tool: (node id prefix,
# reason substring).  Anything else skipped under the switch fails the run.
ALLOWED_SKIPS: tuple[tuple[str, str], ...] = (
    # The strict codec mode checks a call the in-process mode deliberately does not.
    ("tests/test_codec_calls.py::", "a plain await does no validation"),
    # pydantic models validate nothing on a plain local await, as in Python.
    ("tests/test_pydantic.py::test_invalid_model_data_through_the_codec[inprocess]",
     "a plain local call is an ordinary await"),
    # In the split mode /openapi.json is served by another process; the gateway mode checks the merge.
    ("tests/test_asgi_mount.py::", "requests for /openapi.json reach store's process there"),
    # Register's equal-timing test runs in-process and over RPC; other modes repeat nothing new.
    ("tests/test_shop.py::test_register", "timed once in-process and once over RPC"),
    # Topologies with no public listener have no nginx/HAProxy upstream to render.
    ("tests/test_deploy.py::test_output_is_deterministic_headed_and_secret_free", "no public listener"),
)


def required() -> bool:
    return os.environ.get("AMOEBA_REQUIRE_SERVICES") == "1"


def missing(message: str) -> NoReturn:
    """Skip, or fail under ``AMOEBA_REQUIRE_SERVICES=1``, with what to do."""
    if required():
        pytest.fail(f"{message} (AMOEBA_REQUIRE_SERVICES=1: this test must run)")
    pytest.skip(f"{message}, or set nothing and accept the skip")


def import_or_missing(module: str, install: str) -> ModuleType:
    """``pytest.importorskip`` that honours the switch; ``install`` says how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"{module} is not importable; {install}")
