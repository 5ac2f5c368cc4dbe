"""Database resources.

    settings.py   ``DatabaseSettings``: ``settings.database``, read without SQLAlchemy
    database.py   ``Database``: SQLAlchemy 2 (async) on SQLite, PostgreSQL or
                  MySQL/MariaDB; one schema/database/file per service
    migrate.py    Alembic migrations of a ``Database``, run without an env.py
    sqlite.py     ``SQLite``: raw SQLite with group commit (the lightest path)
"""

from typing import TYPE_CHECKING, Any

from amoeba.data.sqlite import SQLite, Transaction

if TYPE_CHECKING:
    from amoeba.data.database import Database

__all__ = ["Database", "SQLite", "Transaction"]


def __getattr__(name: str) -> Any:
    # SQLAlchemy is imported by the first service that uses a Database, not by
    # every process: its ~35,000 objects would make each full garbage
    # collection of a process without one slower (seen in tail latency).
    if name == "Database":
        from amoeba.data.database import Database

        return Database
    raise AttributeError(f"module 'amoeba.data' has no attribute {name!r}")
