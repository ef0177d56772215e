"""Operation hooks, the OpenTelemetry integration and the loggers."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from typing import Annotated, Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import cacheorm as co
from cacheorm._observe import system_of
from cacheorm.otel import OpenTelemetryHook


@dataclasses.dataclass
class Item:
    id: Annotated[int, co.Field(primary_key=True)]
    name: str


class Recorder:
    """A hook that keeps every event."""

    def __init__(self) -> None:
        self.events: list[co.OperationEvent] = []

    def __call__(self, event: co.OperationEvent) -> None:
        self.events.append(event)

    def only(self) -> co.OperationEvent:
        assert len(self.events) == 1, self.events
        return self.events.pop()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def test_a_repository_without_hooks_keeps_its_plain_methods() -> None:
    """No hooks: the instance has no wrappers, so an operation costs exactly what it did."""
    repo = co.Repository(Item)
    assert "get" not in vars(repo)
    assert repo.get.__func__ is co.Repository.get  # type: ignore[attr-defined]


def test_reads_report_hits_and_misses(backend: co.Backend, recorder: Recorder) -> None:
    """get / get_or_none / get_many / exists report keys, hits and misses on every backend."""
    repo = co.Repository(Item, backend=backend, namespace="obs", hooks=[recorder])
    repo.save(Item(1, "a"))
    event = recorder.only()
    assert (event.operation, event.key_count, event.hits, event.misses) == ("save", 1, None, None)
    assert event.system == system_of(backend)
    assert event.model is Item
    assert event.namespace == "obs"
    assert event.outcome == "ok"
    assert event.error is None
    assert event.error_type is None
    assert event.duration >= 0

    assert repo.get(1) == Item(1, "a")
    assert (recorder.only().hits, 1) == (1, 1)
    with pytest.raises(co.NotFound):
        repo.get(2)
    event = recorder.only()
    assert (event.hits, event.misses, event.outcome, event.error_type) == (
        0,
        1,
        "miss",
        "NotFound",
    )
    assert repo.get_or_none(2) is None
    assert (recorder.only().misses, 1) == (1, 1)
    assert repo.get_many(iter([1, 2, 3, 1])) == [Item(1, "a"), None, None, Item(1, "a")]
    event = recorder.only()
    assert (event.key_count, event.hits, event.misses) == (4, 2, 2)
    assert repo.exists(1) is True
    assert (recorder.only().hits, 1) == (1, 1)


def test_batch_arguments_given_by_keyword_or_as_generators_are_counted(
    recorder: Recorder,
) -> None:
    """Batch sizes are counted without consuming the caller's iterator."""
    repo = co.Repository(Item, hooks=[recorder])
    created = repo.create_many(objs=(Item(i, "x") for i in range(3)))
    assert len(created) == 3
    assert recorder.only().key_count == 3
    assert repo.get_many(pks=[0, 1]) == [Item(0, "x"), Item(1, "x")]
    assert recorder.only().key_count == 2
    assert repo.delete_many(range(5)) == 3
    assert recorder.only().key_count == 5


def test_nested_operations_report_once(recorder: Recorder) -> None:
    """patch (update_with inside) and get_or_create (create inside) are one event each."""
    repo = co.Repository(Item, hooks=[recorder])
    assert repo.get_or_create(Item(1, "a")) == (Item(1, "a"), True)
    assert recorder.only().operation == "get_or_create"
    assert repo.patch(1, name="b") == Item(1, "b")
    assert recorder.only().operation == "patch"
    repo.update_with(1, lambda item: dataclasses.replace(item, name="c"))
    assert recorder.only().operation == "update_with"


def test_read_through_reports_loader_calls(recorder: Recorder) -> None:
    """get_or_load(_many) report how many records this call asked its loader for."""
    repo = co.Repository(Item, hooks=[recorder])
    assert repo.get_or_load(1, lambda: Item(1, "a")) == Item(1, "a")
    assert recorder.only().loads == 1
    assert repo.get_or_load(1, loader=lambda: Item(1, "z")) == Item(1, "a")
    assert recorder.only().loads == 0

    def load(pks: list[Any]) -> list[Item]:
        return [Item(pk, "m") for pk in pks]

    assert repo.get_or_load_many([1, 2, 3], load) == [Item(1, "a"), Item(2, "m"), Item(3, "m")]
    event = recorder.only()
    assert (event.key_count, event.loads) == (3, 2)
    assert repo.get_or_load_many([2, 3], loader=load) == [Item(2, "m"), Item(3, "m")]
    assert recorder.only().loads == 0


def test_failures_are_reported_and_still_raised(recorder: Recorder) -> None:
    """A failing call reports its error class and the caller still gets the exception."""
    repo = co.Repository(Item, hooks=[recorder])
    with pytest.raises(co.ValidationError):
        repo.save(Item("x", "a"))  # type: ignore[arg-type]
    event = recorder.only()
    assert (event.outcome, event.error_type) == ("error", "ValidationError")
    repo.create(Item(1, "a"))
    recorder.events.clear()
    with pytest.raises(co.AlreadyExists):
        repo.create(Item(1, "a"))
    assert recorder.only().outcome == "miss"


def test_a_failing_hook_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture, recorder: Recorder
) -> None:
    """A hook that raises does not break the operation; the next hook still runs."""

    def broken(event: co.OperationEvent) -> None:
        raise RuntimeError("hook bug")

    repo = co.Repository(Item, hooks=[broken, recorder])
    with caplog.at_level(logging.ERROR, logger="cacheorm"):
        repo.save(Item(1, "a"))
    assert recorder.only().operation == "save"
    assert any("hook" in r.getMessage() and r.name == "cacheorm.hooks" for r in caplog.records)


@pytest.mark.parametrize("hooks", ["fn", [1]])
def test_bad_hooks_are_refused(hooks: Any) -> None:
    """hooks must be callables; a string or a non-callable is a ConfigurationError."""
    with pytest.raises(co.ConfigurationError, match="hooks must be a sequence of callables"):
        co.Repository(Item, hooks=hooks)


def test_third_party_backends_report_their_class_name() -> None:
    """system is our name for our backends, the class name for others."""

    class Custom:
        pass

    assert system_of(Custom()) == "Custom"
    assert system_of(co.MemoryBackend()) == "memory"


# -- OpenTelemetry ---------------------------------------------------------------------------


@pytest.fixture
def otel() -> tuple[OpenTelemetryHook, InMemorySpanExporter, InMemoryMetricReader]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    hook = OpenTelemetryHook(tracer_provider=tracer_provider, meter_provider=meter_provider)
    return hook, exporter, reader


def _metrics(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = list(metric.data.data_points)
    return found


def test_otel_spans_follow_the_database_conventions(
    redis_backend: co.RedisBackend,
    otel: tuple[OpenTelemetryHook, InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    """Each operation on Redis is a CLIENT span with the db.* attributes."""
    hook, exporter, _ = otel
    repo = co.Repository(Item, backend=redis_backend, namespace="otel", hooks=[hook])
    repo.save_many([Item(1, "a"), Item(2, "b")])
    repo.get(1)
    with pytest.raises(co.NotFound):
        repo.get(9)
    with pytest.raises(co.ValidationError):
        repo.save(Item(1, 5))  # type: ignore[arg-type]
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["save_many otel", "get otel", "get otel", "save otel"]
    batch, hit, miss, bad = spans
    assert batch.kind is SpanKind.CLIENT
    assert dict(batch.attributes or {}) == {
        "db.system.name": "redis",
        "db.operation.name": "save_many",
        "db.collection.name": "otel",
        "db.operation.batch.size": 2,
        "cacheorm.model": "Item",
    }
    assert "db.operation.batch.size" not in (hit.attributes or {})
    assert miss.status.status_code is StatusCode.UNSET
    assert "error.type" not in (miss.attributes or {})
    assert bad.status.status_code is StatusCode.ERROR
    assert (bad.attributes or {})["error.type"] == "ValidationError"
    assert not bad.events  # no exception event: messages may quote values
    assert all(s.end_time is not None and s.start_time is not None for s in spans)
    assert all(s.end_time >= s.start_time for s in spans)  # type: ignore[operator]


def test_otel_metrics_count_durations_hits_misses_and_loads(
    memcached_backend: co.MemcachedBackend,
    otel: tuple[OpenTelemetryHook, InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    """Durations go to db.client.operation.duration; reads count hits and misses."""
    hook, _, reader = otel
    repo = co.Repository(Item, backend=memcached_backend, namespace="otelm", hooks=[hook])
    repo.save(Item(1, "a"))
    repo.get_many([1, 2, 3])
    repo.get_or_load(4, lambda: Item(4, "d"))
    metrics = _metrics(reader)
    durations = {
        p.attributes["db.operation.name"]: p for p in metrics["db.client.operation.duration"]
    }
    assert set(durations) == {"save", "get_many", "get_or_load"}
    assert durations["save"].count == 1
    assert durations["save"].attributes["db.system.name"] == "memcached"
    assert [p.value for p in metrics["cacheorm.client.hits"]] == [1]
    assert [p.value for p in metrics["cacheorm.client.misses"]] == [2]
    assert [p.value for p in metrics["cacheorm.client.loads"]] == [1]


def test_the_otel_hook_needs_only_the_api() -> None:
    """cacheorm.otel imports opentelemetry-api only, lazily; import cacheorm pulls in none of it."""
    code = (
        "import sys, cacheorm, cacheorm.otel\n"
        "assert not any(m.startswith('opentelemetry') for m in sys.modules), 'eager'\n"
        "cacheorm.otel.OpenTelemetryHook()\n"
        "assert 'opentelemetry.trace' in sys.modules\n"
        "assert not any(m.startswith('opentelemetry.sdk') for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_otel_hook_without_the_api_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without opentelemetry-api, building the hook raises MissingDependency naming the extra."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(co.MissingDependency, match=r"cacheorm\[otel\]"):
        OpenTelemetryHook()


# -- logging --------------------------------------------------------------------------------


def test_the_library_logs_nothing_unless_configured() -> None:
    """The cacheorm logger has a NullHandler, so Python's last-resort handler never prints."""
    code = (
        "import logging, cacheorm\n"
        "logging.getLogger('cacheorm.repository').warning('should not print')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stderr == ""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_memcached_logs_an_unreachable_server_without_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that cannot be reached is a WARNING on cacheorm.memcached; no key in it."""
    port = _free_port()
    backend = co.MemcachedBackend.from_servers([f"127.0.0.1:{port}"], connect_timeout=0.5)
    with caplog.at_level(logging.DEBUG, logger="cacheorm"), pytest.raises(co.BackendUnavailable):
        backend.get("secret-key")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.name for r in warnings] == ["cacheorm.memcached"]
    assert f"127.0.0.1:{port}" in warnings[0].getMessage()
    assert all("secret-key" not in r.getMessage() for r in caplog.records)


def test_memcached_logs_a_discarded_connection_and_the_resend(
    memcached_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An interrupted request's connection is discarded with a WARNING; a resend is DEBUG."""
    from tests.test_memcached_hardening import FaultySocketModule, Interrupt

    faults = FaultySocketModule()
    backend = co.MemcachedBackend.from_servers(memcached_server.servers, socket_module=faults)
    backend.set("log-key", b"value")
    with caplog.at_level(logging.WARNING, logger="cacheorm"):
        faults.arm("after_send")
        with pytest.raises(Interrupt):
            backend.get("log-key")
    messages = [r.getMessage() for r in caplog.records if r.name == "cacheorm.memcached"]
    assert any("interrupted by Interrupt; connection discarded" in m for m in messages)
    assert backend.get("log-key") == b"value"  # a new connection, kept for the next request
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="cacheorm"):
        faults.arm("lose")
        assert backend.get("log-key") == b"value"  # resent on a new connection
    records = [r for r in caplog.records if r.name == "cacheorm.memcached"]
    assert any(
        r.levelno == logging.WARNING and "discarded after ConnectionResetError" in r.getMessage()
        for r in records
    )
    assert any(r.levelno == logging.DEBUG and "resending" in r.getMessage() for r in records)
    assert all("value" not in r.getMessage().replace("log-key", "") for r in records)
    backend.close()


def test_redis_logs_an_unreachable_server_without_keys(caplog: pytest.LogCaptureFixture) -> None:
    """An unreachable Redis is a WARNING on cacheorm.redis naming the server, not the key."""
    port = _free_port()
    backend = co.RedisBackend.from_url(
        f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.5, socket_timeout=0.5
    )
    with caplog.at_level(logging.DEBUG, logger="cacheorm"), pytest.raises(co.BackendUnavailable):
        backend.get("secret-key")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings
    assert all(r.name == "cacheorm.redis" for r in warnings)
    assert all(f"127.0.0.1:{port}" in r.getMessage() for r in warnings)
    assert all("secret-key" not in r.getMessage() for r in warnings)
    backend.close()


def test_update_with_logs_conflicts_at_debug_and_giving_up_at_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each lost compare-and-set is DEBUG (with the key); running out is a WARNING (without)."""
    repo = co.Repository(Item, namespace="logcas")
    repo.save(Item(1, "a"))
    rounds = iter(range(100))

    def bump(item: Item) -> Item:
        repo.save(Item(1, f"other {next(rounds)}"))  # a concurrent writer wins every round
        return dataclasses.replace(item, name="mine")

    with caplog.at_level(logging.DEBUG, logger="cacheorm"), pytest.raises(co.ConflictError):
        repo.update_with(1, bump, attempts=3)
    records = [r for r in caplog.records if r.name == "cacheorm.repository"]
    debug = [r for r in records if r.levelno == logging.DEBUG]
    warning = [r for r in records if r.levelno == logging.WARNING]
    assert len(debug) == 3
    assert all("logcas:1" in r.getMessage() for r in debug)
    assert len(warning) == 1
    assert "3 compare-and-set attempts" in warning[0].getMessage()
    assert "logcas" not in warning[0].getMessage()


def test_a_lease_that_expires_under_its_loader_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A loader slower than lock_timeout loses its lease; the holder says so at WARNING."""
    import time

    repo = co.Repository(Item, namespace="loglease")

    def slow() -> Item:
        time.sleep(0.25)
        return Item(1, "loaded")

    with caplog.at_level(logging.WARNING, logger="cacheorm"):
        assert repo.get_or_load(1, slow, lock_timeout=0.1) == Item(1, "loaded")
    messages = [r.getMessage() for r in caplog.records if r.name == "cacheorm.repository"]
    assert any("lease expired while its loader ran" in m for m in messages), messages
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cacheorm"):
        assert repo.get_or_load(2, lambda: Item(2, "fast")) == Item(2, "fast")
    assert not caplog.records


def test_waiting_past_lock_timeout_for_another_load_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A lease held by a stuck loader elsewhere: the waiter loads itself and warns."""
    backend = co.MemoryBackend()
    repo = co.Repository(Item, backend=backend, namespace="logwait")
    backend.add(repo.key_for(1) + "\0lease", b"someone else", None)  # never expires
    with caplog.at_level(logging.DEBUG, logger="cacheorm"):
        assert repo.get_or_load(1, lambda: Item(1, "x"), lock_timeout=0.2) == Item(1, "x")
    records = [r for r in caplog.records if r.name == "cacheorm.repository"]
    assert any(
        r.levelno == logging.DEBUG and "waits for another" in r.getMessage() for r in records
    )
    assert any(
        r.levelno == logging.WARNING and "waited lock_timeout=0.2s" in r.getMessage()
        for r in records
    )


def test_ttl_namespace_and_reference_operations_report_too(recorder: Recorder) -> None:
    """touch, touch_many, ttl_of, clear, count and load_related are operations as well."""
    repo = co.Repository(Item, namespace="obsops", hooks=[recorder])
    repo.save_many([Item(1, "a"), Item(2, "b")], ttl=60)
    recorder.events.clear()
    assert repo.touch(1, ttl=120) is True
    assert repo.touch_many([1, 2, 3], ttl=120) == [True, True, False]
    assert repo.ttl_of(1) is not None
    assert repo.count() == 2
    assert repo.clear() == 2
    assert [(e.operation, e.key_count) for e in recorder.events] == [
        ("touch", 1),
        ("touch_many", 3),
        ("ttl_of", 1),
        ("count", 1),
        ("clear", 1),
    ]


@dataclasses.dataclass
class Note:
    id: Annotated[int, co.Field(primary_key=True)]
    item_id: Annotated[int, co.Ref(Item)]


def test_another_repositorys_operation_inside_one_reports_as_its_own(recorder: Recorder) -> None:
    """load_related reports itself and the target repository's get_many (its round trip)."""
    backend = co.MemoryBackend()
    items = co.Repository(Item, backend=backend, hooks=[recorder])
    notes = co.Repository(Note, backend=backend, hooks=[recorder])
    items.save(Item(1, "a"))
    notes.save_many([Note(1, 1), Note(2, 1)])
    recorder.events.clear()
    assert notes.load_related(notes.get_many([1, 2]), "item_id", items) == {1: Item(1, "a")}
    assert [(e.operation, e.model, e.key_count) for e in recorder.events] == [
        ("get_many", Note, 2),
        ("get_many", Item, 1),
        ("load_related", Note, 2),
    ]
