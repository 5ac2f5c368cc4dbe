"""Spans through the OpenTelemetry SDK, when it is installed and configured.

Trace *ids* always flow without it: the edge starts (or continues, from an
incoming ``traceparent`` header) a W3C trace, remote calls carry it on the
wire and events in their payload (:mod:`amoeba.context`).  This module only
adds the export: with ``opentelemetry-sdk`` and
``opentelemetry-exporter-otlp-proto-http`` installed (``pip install
'amoeba[otel]'``) and an endpoint in ``settings.observe.otlp_endpoint`` or
the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables, each process exports

* a SERVER span per public HTTP request (``POST /api/v1/purchase``),
* a CLIENT span per remote call and a SERVER span where it is served,
* a CONSUMER span per event delivery, child of the publisher's trace,

and the ids those spans get are the ids that travel on, so a trace in the
collector is one tree across the processes.  Local calls are plain awaits
and make no span.  Configured without the SDK, the process says so once and
goes on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable
from typing import Any, TypeVar

from amoeba.errors import ServiceError

__all__ = ["Tracer", "open_tracer"]

log = logging.getLogger("amoeba.tracing")

SERVER, CLIENT, CONSUMER = "server", "client", "consumer"
T = TypeVar("T")


class Tracer:
    """One process's OpenTelemetry tracer provider and exporter."""

    def __init__(self, service_name: str, endpoint: str | None, attributes: dict[str, Any]):
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = TracerProvider(resource=Resource.create(
            {"service.name": service_name, **attributes}))
        exporter = (OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces") if endpoint
                    else OTLPSpanExporter())
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        self.tracer = self.provider.get_tracer("amoeba")
        self.propagator = TraceContextTextMapPropagator()
        self.kinds = {SERVER: trace.SpanKind.SERVER, CLIENT: trace.SpanKind.CLIENT,
                      CONSUMER: trace.SpanKind.CONSUMER}
        self.error = trace.StatusCode.ERROR
        self.endpoint = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or \
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")

    def __repr__(self) -> str:
        return f"<Tracer otlp {self.endpoint}>"

    def start(self, name: str, parent: str, kind: str,
              attributes: dict[str, Any] | None = None) -> tuple[Any, str]:
        """A span, child of the ``parent`` traceparent (a new trace when empty),
        and the traceparent that names it."""
        ctx = self.propagator.extract({"traceparent": parent}) if parent else None
        span = self.tracer.start_span(name, context=ctx, kind=self.kinds[kind],
                                      attributes=attributes)
        sc = span.get_span_context()
        return span, f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"

    def end(self, span: Any, error: str | None = None,
            attributes: dict[str, Any] | None = None) -> None:
        """End ``span``; ``error`` marks it failed with that description."""
        if attributes:
            span.set_attributes(attributes)
        if error:
            span.set_status(self.error, error)
        span.end()

    async def within(self, span: Any, call: Awaitable[T], http_status: int | None = None) -> T:
        """Await ``call`` and end ``span`` with its outcome: a ``ServiceError`` of
        5xx or any other exception marks it failed.  ``http_status``: the status a
        success answers (an HTTP server span records status codes)."""
        http = http_status is not None
        try:
            result = await call
        except ServiceError as exc:
            self.end(span, exc.message if exc.status >= 500 else None,
                     {"http.response.status_code": exc.status} if http
                     else {"amoeba.error": type(exc).__name__})
            raise
        except BaseException as exc:
            self.end(span, type(exc).__name__, {"http.response.status_code": 500} if http else None)
            raise
        self.end(span, None, {"http.response.status_code": http_status} if http else None)
        return result

    def shutdown(self) -> None:
        self.provider.shutdown()  # flushes what the batch processor holds


def open_tracer(endpoint: str | None, service_name: str, attributes: dict[str, Any]) -> Tracer | None:
    """The tracer when an endpoint is configured and the SDK is installed."""
    configured = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or \
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not configured or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    try:
        return Tracer(service_name, endpoint, attributes)
    except ImportError as exc:
        log.warning("tracing: an OTLP endpoint is configured but the OpenTelemetry SDK is not "
                    "installed (%s); trace ids still flow, spans are not exported. fix: pip install "
                    "'amoeba[otel]'", exc)
        return None
