"""The suite's own guard: a skip CI did not allow fails the run; golden refresh is refused in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _pytest(tmp_path: Path, body: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe.py").write_text(body)
    clean = {k: v for k, v in os.environ.items()
             if k not in ("AMOEBA_REQUIRE_SERVICES", "AMOEBA_UPDATE_GOLDEN", "CI")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "skipcheck", "-p", "no:cacheprovider",
         "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py")],
        capture_output=True, text=True, timeout=120,
        env={**clean, "PYTHONPATH": os.pathsep.join([str(TESTS), clean.get("PYTHONPATH", "")]), **env})


SKIPPING = "import pytest\n\ndef test_needs_a_tool():\n    pytest.skip('frobnicator not installed')\n"


def test_a_skip_passes_on_a_laptop(tmp_path: Path) -> None:
    r = _pytest(tmp_path, SKIPPING)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 skipped" in r.stdout


def test_a_skip_off_the_allow_list_fails_a_ci_run_and_is_named(tmp_path: Path) -> None:
    r = _pytest(tmp_path, SKIPPING, AMOEBA_REQUIRE_SERVICES="1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "test_probe.py::test_needs_a_tool: Skipped: frobnicator not installed" in r.stderr


def test_missing_fails_under_the_switch(tmp_path: Path) -> None:
    body = ("from require import missing\n\ndef test_needs_a_tool():\n"
            "    missing('frobnicator not installed: apt-get install frobnicator')\n")
    laptop = _pytest(tmp_path, body)
    assert laptop.returncode == 0 and "1 skipped" in laptop.stdout, laptop.stdout
    ci = _pytest(tmp_path, body, AMOEBA_REQUIRE_SERVICES="1")
    assert ci.returncode == 1 and "1 failed" in ci.stdout, ci.stdout
    assert "apt-get install frobnicator" in ci.stdout


def test_golden_refresh_is_refused_in_ci(tmp_path: Path) -> None:
    body = "def test_nothing():\n    pass\n"
    assert _pytest(tmp_path, body, AMOEBA_UPDATE_GOLDEN="1").returncode == 0
    r = _pytest(tmp_path, body, AMOEBA_UPDATE_GOLDEN="1", CI="true")
    assert r.returncode != 0
    assert "AMOEBA_UPDATE_GOLDEN=1 is refused when CI is set" in r.stdout + r.stderr
