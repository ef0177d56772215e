"""OpenTelemetry spans and metrics for repositories (``pip install 'cacheorm[otel]'``).

::

    from cacheorm.otel import OpenTelemetryHook

    users = co.Repository(User, backend=backend, hooks=[OpenTelemetryHook()])

Every operation becomes a ``CLIENT`` span named ``"<operation> <namespace>"``
(``"get_many user"``) and a ``db.client.operation.duration`` measurement,
following OpenTelemetry's database semantic conventions:

=============================  ===============================================
``db.system.name``             ``redis``, ``memcached``, ``memory``,
                               ``filesystem`` (a third-party backend: its
                               class name)
``db.operation.name``          the repository method: ``get``, ``create``, ...
``db.collection.name``         the repository's namespace
``db.operation.batch.size``    the number of keys, on batch operations of 2+
``error.type``                 the exception class, when the call failed
``cacheorm.model``             the model's qualified name
=============================  ===============================================

Reads also count ``cacheorm.client.hits`` and ``cacheorm.client.misses``
(keys found / not found), and read-through calls count
``cacheorm.client.loads`` (records asked of the loader). A ``NotFound`` or
``AlreadyExists`` is an answer, not a failure: the span keeps an unset status
and has no ``error.type``. A failed call's span has status ERROR and
``error.type``, but no exception event: cacheorm's messages name keys and may
quote values, which do not belong in telemetry. Only the ``opentelemetry-api`` package is needed at
run time; without an SDK configured, everything is a no-op.
"""

from __future__ import annotations

from typing import Any

from cacheorm._errors import MissingDependency
from cacheorm._observe import OperationEvent

__all__ = ["OpenTelemetryHook"]

#: Histogram buckets for operation durations, in seconds (the semantic conventions' advice).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


class OpenTelemetryHook:
    """A repository hook that reports each operation as an OpenTelemetry span and metrics.

    Args:
        tracer_provider: the provider to take the tracer from; the global one
            if omitted.
        meter_provider: the provider to take the meter from; the global one
            if omitted.

    Raises:
        MissingDependency: ``opentelemetry-api`` is not installed.
    """

    def __init__(self, *, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        try:
            from opentelemetry import metrics, trace
            from opentelemetry.trace import SpanKind, Status, StatusCode
        except ImportError as exc:
            raise MissingDependency("OpenTelemetryHook", "otel") from exc
        from cacheorm import __version__

        self._tracer = trace.get_tracer("cacheorm", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("cacheorm", __version__, meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of cacheorm repository operations.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self._hits = meter.create_counter(
            "cacheorm.client.hits", unit="{key}", description="Keys found by reads."
        )
        self._misses = meter.create_counter(
            "cacheorm.client.misses", unit="{key}", description="Keys not found by reads."
        )
        self._loads = meter.create_counter(
            "cacheorm.client.loads",
            unit="{record}",
            description="Records asked of get_or_load loaders.",
        )
        self._client = SpanKind.CLIENT
        self._error_status = Status
        self._error_code = StatusCode.ERROR

    def __call__(self, event: OperationEvent) -> None:
        """Record ``event`` as a span and as metrics."""
        attributes: dict[str, str | int] = {
            "db.system.name": event.system,
            "db.operation.name": event.operation,
            "db.collection.name": event.namespace,
        }
        failed = event.outcome == "error"
        if failed:
            attributes["error.type"] = event.error_type or "Exception"
        self._duration.record(event.duration, attributes)
        if event.hits is not None:
            self._hits.add(event.hits, attributes)
        if event.misses is not None:
            self._misses.add(event.misses, attributes)
        if event.loads is not None:
            self._loads.add(event.loads, attributes)

        span_attributes = dict(attributes)
        span_attributes["cacheorm.model"] = event.model.__qualname__
        if event.operation.endswith("_many") and event.key_count >= 2:
            span_attributes["db.operation.batch.size"] = event.key_count
        span = self._tracer.start_span(
            f"{event.operation} {event.namespace}",
            kind=self._client,
            attributes=span_attributes,
            start_time=event.start_time_ns,
        )
        if failed:
            # The class only: exception messages name keys and may quote values.
            span.set_status(self._error_status(self._error_code, event.error_type))
        span.end(end_time=event.start_time_ns + int(event.duration * 1e9))
