"""Session checks of this suite, loaded by ``conftest.py`` (and by a test of its own):
the golden-update switch is refused in CI, and under ``AMOEBA_REQUIRE_SERVICES=1``
a skip not on ``require.ALLOWED_SKIPS`` fails the run."""

from __future__ import annotations

import os
import sys

import pytest
from require import ALLOWED_SKIPS, required

_skipped: list[tuple[str, str]] = []


def pytest_configure(config: pytest.Config) -> None:
    # Refreshing golden files makes their tests pass by construction: never in CI.
    if os.environ.get("AMOEBA_UPDATE_GOLDEN") == "1" and os.environ.get("CI"):
        raise pytest.UsageError("AMOEBA_UPDATE_GOLDEN=1 is refused when CI is set: it would make "
                                "the golden tests pass trivially; unset AMOEBA_UPDATE_GOLDEN")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append((report.nodeid, reason))


def _allowed(nodeid: str, reason: str) -> bool:
    return any(nodeid.startswith(prefix) and text in reason for prefix, text in ALLOWED_SKIPS)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under ``AMOEBA_REQUIRE_SERVICES=1`` a skip not on ``require.ALLOWED_SKIPS`` fails the run."""
    if not required():
        return
    stray = [(n, r) for n, r in _skipped if not _allowed(n, r)]
    if stray:
        lines = "\n".join(f"  {n}: {r}" for n, r in stray)
        sys.stderr.write(f"\n{len(stray)} test(s) skipped that AMOEBA_REQUIRE_SERVICES=1 requires "
                         f"to run (allow a deliberate skip in tests/require.py):\n{lines}\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
