"""Line coverage of the risky layers, child processes included.

    python bench/coverage_edges.py [--root DIR] [--out DIR] [TEST_FILE ...]

Runs the given test files (default: the ones that drive the HTTP listener,
RPC, the supervisor and CORS, listed in ``TESTS``; those missing from DIR are
left out and named) with ``DIR/.venv/bin/python -m coverage run`` from the
checkout DIR (default: this one), then reports line coverage of ``FILES`` with
the missing lines.  The servers the tests start (``amoeba run``, its children)
are measured too: coverage.py's ``[run] patch = subprocess`` (7.10 or later)
starts coverage in every Python process they spawn, through the .pth file that
installing coverage puts in DIR's venv, provided the process exits normally
(SIGTERM/SIGINT; a SIGKILLed child's lines are lost).  coverage is not among
the extras (``pip install 'coverage>=7.10'`` into the venv), and the
configuration is written to OUT only, so the normal suite runs without it.
Compare two commits by pointing --root at a worktree of each::

    git worktree add --detach /tmp/cov-before COMMIT   # then a venv in it:
    python -m venv /tmp/cov-before/.venv
    /tmp/cov-before/.venv/bin/pip install -e '/tmp/cov-before[dev,bench]' 'coverage>=7.10'
    python bench/coverage_edges.py --root /tmp/cov-before --out /tmp/cov/before
    python bench/coverage_edges.py --out /tmp/cov/after
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FILES = ["gateway/http.py", "transport/server.py", "transport/client.py",
         "runtime/supervisor.py", "gateway/cors.py"]
TESTS = [
    # HTTP parsing and the edge
    "tests/test_http_edge.py", "tests/test_http_input.py", "tests/test_tickets.py",
    "tests/test_tickets_e2e.py", "tests/test_access_log.py", "tests/test_request_ids.py",
    # RPC framing, hello, calls, go-away
    "tests/test_rpc_wire.py", "tests/test_rpc_hello.py", "tests/test_remote.py",
    # the supervisor (amoeba run) and draining
    "tests/test_supervisor.py", "tests/test_drain.py",
    # CORS (the policy, and the check that refuses "*" with credentials)
    "tests/test_limits.py", "tests/test_check.py",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure (with .venv)")
    ap.add_argument("--out", type=Path, default=None, help="where data and config go (a temp dir)")
    ap.add_argument("tests", nargs="*", default=TESTS)
    args = ap.parse_args()
    root = args.root.resolve()
    python = root / ".venv" / "bin" / "python"
    if not python.exists():
        sys.exit(f"{python}: no venv in {root}; make one with its [dev,bench] extras and coverage")
    out = (args.out or Path(tempfile.mkdtemp(prefix="coverage-edges-"))).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tests = [t for t in args.tests if (root / t).exists()]
    missing = [t for t in args.tests if t not in tests]
    rc = out / "coveragerc"
    rc.write_text(f"[run]\nparallel = true\npatch = subprocess\ndata_file = {out}/.coverage\n"
                  f"source = {root}/src/amoeba\n\n[report]\nshow_missing = true\nprecision = 1\n")
    env = {**os.environ, "COVERAGE_RCFILE": str(rc)}
    # patch = subprocess works through the a1_coverage.pth that installing
    # coverage puts in the venv (inert unless coverage's variables are set):
    # without it the servers' lines would silently count as missed.
    if not list(root.glob(".venv/lib/python*/site-packages/a1_coverage.pth")):
        sys.exit(f"{root}/.venv has no a1_coverage.pth: pip install --force-reinstall 'coverage>=7.10'")
    env.setdefault("AMOEBA_REQUIRE_SERVICES", "1")
    print(f"measuring {root} with {len(tests)} test files"
          + (f" (not in this checkout: {', '.join(missing)})" if missing else ""), flush=True)
    test_run = subprocess.run([str(python), "-m", "coverage", "run", "-m", "pytest", "-q", "-p",
                               "no:cacheprovider", *tests], cwd=root, env=env)
    subprocess.run([str(python), "-m", "coverage", "combine", "-q"], cwd=root, env=env, check=True)
    include = ",".join(f"{root}/src/amoeba/{f}" for f in FILES)
    subprocess.run([str(python), "-m", "coverage", "report", f"--include={include}"],
                   cwd=root, env=env, check=True)
    subprocess.run([str(python), "-m", "coverage", "json", "-q", "-o", str(out / "coverage.json"),
                    f"--include={include}"], cwd=root, env=env, check=True)
    print(f"pytest exit status {test_run.returncode}; data and coverage.json in {out}")


if __name__ == "__main__":
    main()
