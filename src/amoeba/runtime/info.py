"""What a service may know about where it runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RuntimeInfo"]


@dataclass(frozen=True)
class RuntimeInfo:
    topology: str  # the topology's name ("monolith", ...)
    process: str
    replica: int
    data_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)  # the topology's extra settings
