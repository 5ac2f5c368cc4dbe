"""Database resources.

    database.py   ``Database``: SQLAlchemy 2 (async) on SQLite, PostgreSQL or
                  MySQL/MariaDB; one schema/database/file per service
    migrate.py    Alembic migrations of a ``Database``, run without an env.py
    sqlite.py     ``SQLite``: raw SQLite with group commit (the lightest path)
"""

from mitosis.data.database import Database
from mitosis.data.sqlite import SQLite, Transaction

__all__ = ["Database", "SQLite", "Transaction"]
