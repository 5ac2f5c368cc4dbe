"""Database resources.  ``sqlite`` is the embedded default."""

from mitosis.data.sqlite import Database, Transaction

__all__ = ["Database", "Transaction"]
