"""The access log: one line per request on public listeners, to the logger
``mitosis.access`` at INFO::

    method=POST path=/api/v1/purchase status=200 duration_ms=0.42 request_id=9f3a-1c user=- ip=10.0.0.7

The same fields are attached to the record (``extra=``) for JSON formatters.
Turned off by ``settings.access_log: false``; when the logger is disabled
for INFO nothing is formatted, so the cost is one level check.
"""

from __future__ import annotations

import logging

__all__ = ["AccessLog"]

log = logging.getLogger("mitosis.access")


class AccessLog:
    def __init__(self, enabled: bool = True, logger: logging.Logger = log):
        self.enabled = enabled
        self.logger = logger

    def __repr__(self) -> str:
        return f"<AccessLog {'on' if self.enabled else 'off'}>"

    def active(self) -> bool:
        """Checked per request: the level can change while the process runs."""
        return self.enabled and self.logger.isEnabledFor(logging.INFO)

    def write(self, method: str, path: str, status: int, duration_ms: float, request_id: str,
              user: str | None, ip: str) -> None:
        self.logger.info(
            "method=%s path=%s status=%d duration_ms=%.2f request_id=%s user=%s ip=%s",
            method, path, status, duration_ms, request_id, user or "-", ip,
            extra={"method": method, "path": path, "status": status, "duration_ms": duration_ms,
                   "request_id": request_id, "user": user, "ip": ip})
