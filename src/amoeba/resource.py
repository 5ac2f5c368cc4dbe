"""Resources: things a service is handed by annotation (a database, later a
cache or an event bus), configured by the topology.

A resource class is a tiny ABC: ``open`` builds one from its context,
``aclose`` releases it, ``ready`` answers the readiness probe.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Resource", "ResourceContext"]


@dataclass(frozen=True)
class ResourceContext:
    service: str
    # The topology's URL for this resource kind, after ${VAR} expansion and
    # with "{service}" replaced; None when the topology gives none.
    url: str | None
    data_dir: Path
    settings: dict[str, Any]
    # The service class the resource is opened for (a resource may read
    # class attributes, e.g. ``Database`` reads ``migrations``).
    owner: type | None = None
    # Every resource URL of the topology by kind (``${VAR}`` expanded), for a
    # resource that works with another kind's server (``Tokens`` keeps revoked
    # sessions where the edge reads them: in the cache).
    resources: dict[str, str] = field(default_factory=dict)


class Resource(ABC):
    #: The key under the topology's ``resources:`` that configures this kind.
    kind: str = ""

    @classmethod
    @abstractmethod
    async def open(cls, ctx: ResourceContext) -> Resource:
        """Open the resource for one service."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections and files."""

    async def ready(self) -> bool:
        return True
