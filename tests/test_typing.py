"""A user's `await self.vacancy.reserve(1)` type-checks as the real return type."""

from pathlib import Path

from require import import_or_missing

api = import_or_missing("mypy.api", "mypy is a dev dependency: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parent.parent


def test_dependency_call_has_the_real_return_type(tmp_path, monkeypatch):
    monkeypatch.setenv("MYPYPATH", str(ROOT / "examples"))
    snippet = tmp_path / "check_me.py"
    snippet.write_text(
        "from tickets.ticket import Ticket\n"
        "async def f(t: Ticket) -> None:\n"
        "    r = await t.vacancy.reserve(1)\n"
        "    reveal_type(r)\n"
        "    await t.vacancy.reserve('one')\n"
    )
    out, _, _ = api.run([str(snippet), "--strict", "--no-incremental", "--cache-dir=/dev/null",
                         "--python-version", "3.11"])
    assert 'Revealed type is "tickets.vacancy.Reservation"' in out, out
    assert 'incompatible type "str"' in out, out
