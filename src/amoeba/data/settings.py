"""``settings.database`` of a topology, validated without importing SQLAlchemy
(``amoeba check`` and every process read it before deciding to)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DatabaseSettings"]


class DatabaseSettings:
    """``settings.database`` of the topology, validated."""

    _TYPES: dict[str, tuple[type, ...]] = {
        "pool_size": (int,), "max_overflow": (int,), "pool_timeout": (int, float),
        "migrate": (bool,), "echo": (bool,),
    }

    def __init__(self, pool_size: int = 5, max_overflow: int = 0, pool_timeout: float = 10,
                 migrate: bool = True, echo: bool = False):
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.pool_timeout = float(pool_timeout)
        self.migrate = migrate
        self.echo = echo

    def __repr__(self) -> str:
        return (f"<DatabaseSettings pool_size={self.pool_size} max_overflow={self.max_overflow} "
                f"pool_timeout={self.pool_timeout} migrate={self.migrate} echo={self.echo}>")

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> DatabaseSettings:
        raw = settings.get("database")
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ValueError(f"settings.database: must be a mapping such as {{pool_size: 5}}, "
                             f"got {raw!r}")
        for key, value in raw.items():
            types = cls._TYPES.get(key)
            if types is None:
                raise ValueError(f"settings.database.{key}: unknown key; the keys are "
                                 f"{', '.join(cls._TYPES)}")
            # bool is an int to Python, never to a topology author
            if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
                kind = " or ".join(t.__name__ for t in types)
                raise ValueError(f"settings.database.{key}: expected {kind}, got {value!r}")
        made = cls(**raw)
        if made.pool_size < 1 or made.max_overflow < 0 or made.pool_timeout <= 0:
            raise ValueError(f"settings.database: pool_size must be >= 1, max_overflow >= 0 and "
                             f"pool_timeout > 0; got {made!r}")
        return made
