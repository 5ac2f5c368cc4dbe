"""Database resources.  ``sqlite`` is the embedded default."""

from mitosis.data.sqlite import Database

__all__ = ["Database"]
