import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The example apps and the test's own demo app are importable as top-level packages.
for p in (ROOT / "examples", Path(__file__).resolve().parent):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from skipcheck import (  # noqa: E402, F401  (hooks: pytest reads them off this module)
    pytest_configure,
    pytest_runtest_logreport,
    pytest_sessionfinish,
)
