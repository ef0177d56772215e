"""AsyncMemcachedBackend against real memcached: the sync backend's checks, pools, failures."""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

pytest.importorskip("pymemcache")

from pymemcache.client.base import Client  # type: ignore[import-untyped]

from cacheorm import KEEP_TTL, MemcachedBackend
from cacheorm._aio_memcached import AsyncMemcachedBackend
from cacheorm._backend import AsyncBackend, AsyncCounterBackend, AsyncScanBackend, AsyncTTLBackend
from cacheorm._errors import (
    BackendError,
    BackendUnavailable,
    BatchWriteError,
    ConfigurationError,
    MissingDependency,
    OutcomeUnknown,
)
from cacheorm._mcproto import Failure, read_value
from tests import test_memcached_backend as sync_checks
from tests import test_memcached_hardening as hardening_checks
from tests.servers import MemcachedServer, ServerProcess, closed_port, start_memcached_processes
from tests.test_memcached_backend import (  # noqa: F401 - fixtures the checks use
    full_server,
    small_server,
)
from tests.test_memcached_hardening import (
    no_cas_server,  # noqa: F401 - a fixture used below
    own_memcached,
)

DAY = 24 * 3600


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a new event loop."""
    return asyncio.run(coro)


def spec(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def flush(servers: list[str]) -> None:
    for address in servers:
        client = Client(spec(address), default_noreply=False, timeout=5.0)
        try:
            client.flush_all(noreply=False)
        finally:
            client.close()


class Blocking:
    """An AsyncMemcachedBackend seen through blocking calls, for the sync backend's checks.

    Every coroutine method runs to completion on one event loop of its own
    (the backend's connections live on it); other attributes are the
    backend's. ``client`` is a plain pymemcache client on the (first) server,
    for the checks that look behind the backend.
    """

    def __init__(self, backend: AsyncMemcachedBackend) -> None:
        self.backend = backend
        self.loop = asyncio.new_event_loop()
        self.client = Client(spec(backend.servers[0]), default_noreply=False, timeout=5.0)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.backend, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self.loop.run_until_complete(attr(*args, **kwargs))

        return blocking

    def _call(self, *step: Any) -> Any:
        """One request, as the sync backend's ``_call`` (for the checks that send their own)."""
        return self.loop.run_until_complete(self.backend._acall(*step))

    def close(self) -> None:
        self.loop.run_until_complete(self.backend.aclose())
        self.loop.close()
        self.client.close()


@pytest.fixture
def blocking_factory() -> Iterator[Callable[..., Blocking]]:
    made: list[Blocking] = []

    def make(servers: str | list[str], **options: Any) -> Blocking:
        view = Blocking(AsyncMemcachedBackend.from_servers(servers, **options))
        made.append(view)
        return view

    yield make
    for view in made:
        view.close()


# -- the sync backend's checks, run on the async backend -----------------------------------

#: Checks of the sync suites that hold for any memcached backend, by module.
CHECKS = {
    sync_checks: [
        "test_set_get_and_misses",
        "test_bytes_like_values_are_copied",
        "test_bad_arguments_raise_before_any_io",
        "test_empty_batches_do_no_io",
        "test_get_many_order_misses_and_duplicates",
        "test_set_many_last_pair_wins_and_sets_ttl",
        "test_add_and_replace",
        "test_add_many_sees_earlier_pairs",
        "test_replace_many_applies_in_order",
        "test_add_then_replace_in_one_batch_each",
        "test_delete_and_delete_many",
        "test_exists_does_not_change_the_ttl",
        "test_ordinary_keys_are_sent_as_utf8",
        "test_tricky_keys_round_trip_and_stay_distinct",
        "test_mapped_key_format",
        "test_keys_spelling_a_mapped_key_stay_distinct",
        "test_keys_with_the_marker_character_stay_distinct",
        "test_batches_with_mapped_keys_answer_for_the_callers_keys",
        "test_value_of_exactly_the_limit_is_stored",
        "test_the_limit_is_close_to_the_servers",
        "test_a_refused_batch_names_the_large_value",
        "test_default_one_mib_limit",
        "test_short_ttl_expires",
        "test_ttl_is_never_cut_short",
        "test_every_write_sends_its_ttl",
        "test_writes_without_ttl_clear_the_old_ttl",
        "test_forty_day_ttl_is_an_absolute_time",
        "test_incr_creates_and_counts",
        "test_incr_negative_and_across_zero",
        "test_incr_beyond_64_bits",
        "test_incr_of_a_non_integer_names_the_key",
        "test_incr_keeps_the_ttl",
        "test_incr_of_a_huge_integer_is_refused",
        "test_gets_and_cas",
        "test_cas_with_a_foreign_token_is_false",
        "test_unreachable_server_is_backend_unavailable",
        "test_writes_a_full_server_refuses_are_errors",
    ],
    hardening_checks: [
        "test_get_many_with_repeated_keys_reads_every_reply",
        "test_keep_ttl_keeps_the_seconds_left",
        "test_keep_ttl_keeps_no_expiry_and_long_ttls",
        "test_keep_ttl_never_creates_a_missing_key",
        "test_keep_ttl_cas_refuses_a_stale_token",
        "test_keep_ttl_with_repeated_keys_applies_them_in_order",
    ],
}


def _cases() -> Iterator[Any]:
    """One case per check and parameter set: (check, its parametrized arguments)."""
    for module, names in CHECKS.items():
        for name in names:
            check = getattr(module, name)
            marks = [m for m in getattr(check, "pytestmark", []) if m.name == "parametrize"]
            if not marks:
                yield pytest.param(check, {}, id=name)
                continue
            argnames, values = marks[0].args[:2]
            if isinstance(argnames, str):
                argnames = [a.strip() for a in argnames.split(",")]
            for n, value in enumerate(values):
                value = getattr(value, "values", value)
                given = value if len(argnames) > 1 else (value,)
                yield pytest.param(check, dict(zip(argnames, given, strict=True)), id=f"{name}-{n}")


@pytest.mark.parametrize(("check", "given"), list(_cases()))
def test_the_sync_backends_checks_hold(
    check: Callable[..., None],
    given: dict[str, Any],
    request: pytest.FixtureRequest,
    memcached_server: MemcachedServer,
    blocking_factory: Callable[..., Blocking],
) -> None:
    """Each check of the sync suites, given this backend (through Blocking) for its backend."""
    arguments = dict(given)
    for name in inspect.signature(check).parameters:
        if name in arguments:
            continue
        if name in ("mc", "store", "keeper"):
            flush(memcached_server.servers)
            arguments[name] = blocking_factory(memcached_server.servers)
        elif name == "raw":
            host, port = spec(memcached_server.servers[0])
            raw = Client((host, port), default_noreply=False, timeout=5.0)
            request.addfinalizer(raw.close)
            arguments[name] = raw
        elif name in ("small", "full"):
            server: ServerProcess = request.getfixturevalue(f"{name}_server")
            flush([server.address])
            arguments[name] = blocking_factory(server.address)
        elif name == "down":
            arguments[name] = blocking_factory(f"127.0.0.1:{closed_port()}", connect_timeout=1.0)
        else:
            arguments[name] = request.getfixturevalue(name)
    check(**arguments)


@pytest.mark.parametrize(
    "name",
    [
        "test_keep_ttl_keeps_the_seconds_left",
        "test_keep_ttl_never_creates_a_missing_key",
        "test_keep_ttl_with_repeated_keys_applies_them_in_order",
    ],
)
def test_the_keep_ttl_checks_hold_on_a_pool(
    name: str, memcached_pool: MemcachedServer, blocking_factory: Callable[..., Blocking]
) -> None:
    """KEEP_TTL on a pool: meta gets and cas rounds to every server."""
    flush(memcached_pool.servers)
    view = blocking_factory(memcached_pool.servers)
    view._nodes[0].address  # a pool: the checks' server_ttl asks each key's server
    getattr(hardening_checks, name)(view)


# -- construction -------------------------------------------------------------------------


def test_is_an_async_backend_with_ttl_and_counters(memcached_server: MemcachedServer) -> None:
    """The protocols it implements, and not scan (memcached has none)."""
    store = AsyncMemcachedBackend.from_servers(memcached_server.servers)
    assert isinstance(store, AsyncBackend)
    assert isinstance(store, AsyncTTLBackend)
    assert isinstance(store, AsyncCounterBackend)
    assert not isinstance(store, AsyncScanBackend)
    assert repr(store) == f"AsyncMemcachedBackend(server={memcached_server.servers[0]!r})"
    assert store.servers == memcached_server.servers
    assert (store.max_value_size, store.down_server_reads_miss) == (None, False)


@pytest.mark.parametrize(
    ("servers", "options", "match"),
    [
        ([], {}, "at least one address"),
        (["127.0.0.1:1", "127.0.0.1:1"], {}, "repeat"),
        (["127.0.0.1:port"], {}, "cannot parse"),
        ("127.0.0.1:1", {"timeout": 0}, "timeout"),
        ("127.0.0.1:1", {"connect_timeout": math.inf}, "connect_timeout"),
        (["127.0.0.1:1", "127.0.0.1:2"], {"retry_timeout": -1}, "retry_timeout"),
        ("127.0.0.1:1", {"max_value_size": 0}, "max_value_size"),
        ("127.0.0.1:1", {"key_prefix": b"a b"}, "key_prefix"),
        ("127.0.0.1:1", {"key_prefix": 5}, "key_prefix"),
    ],
)
def test_bad_configuration_is_refused(servers: Any, options: dict[str, Any], match: str) -> None:
    """Every bad address or option raises ConfigurationError naming it, before any I/O."""
    with pytest.raises(ConfigurationError, match=match):
        AsyncMemcachedBackend.from_servers(servers, **options)


def test_a_str_key_prefix_and_max_value_size(memcached_server: MemcachedServer) -> None:
    """key_prefix is put before every key; max_value_size replaces the server's limit."""

    async def main() -> None:
        async with AsyncMemcachedBackend.from_servers(
            memcached_server.servers, key_prefix="app:", max_value_size=10
        ) as store:
            await store.set("k", b"v" * 10)
            raw = Client(spec(memcached_server.servers[0]), default_noreply=False)
            assert raw.get(b"app:k") == b"v" * 10
            raw.close()
            with pytest.raises(BackendError, match="over the 10-byte limit"):
                await store.set("k", b"v" * 11)

    run(main())


# -- pipelining -------------------------------------------------------------------------


def test_a_thousand_concurrent_gets_go_out_in_a_few_writes(
    memcached_server: MemcachedServer,
) -> None:
    """Requests of one loop iteration share one write; each task gets its own key's value."""

    async def main() -> None:
        store = AsyncMemcachedBackend.from_servers(memcached_server.servers)
        keys = [f"pipe:{n}" for n in range(1000)]
        await store.set_many([(key, key.encode()) for key in keys])
        conn = store._single.conn
        before = conn.writes
        values = await asyncio.gather(*[store.get(key) for key in keys])
        assert values == [key.encode() for key in keys]
        assert conn.writes - before <= 3
        assert store._single.conn is conn  # one connection for all
        await store.aclose()

    run(main())


def test_a_full_transport_buffer_makes_requests_wait(memcached_server: MemcachedServer) -> None:
    """Backpressure: requests made while the transport's buffer is full wait; all complete."""

    async def main() -> None:
        store = AsyncMemcachedBackend.from_servers(memcached_server.servers, timeout=30)
        await store.get("warm")
        conn = store._single.conn
        conn.transport.set_write_buffer_limits(high=64 * 1024)
        big = b"b" * 500_000
        paused: list[bool] = []

        async def writes(n: int) -> None:
            for _ in range(3):
                paused.append(conn.paused)
                await store.set(f"big:{n}", big)

        await asyncio.gather(*[writes(n) for n in range(40)])
        await store.set("after", b"1")
        assert True in paused  # some requests came while the buffer was full, and waited
        assert conn.paused is False
        assert store._single.conn is conn
        assert await store.get_many([f"big:{n}" for n in range(40)]) == [big] * 40
        await store.aclose()

    run(main())


# -- pools: the same placement as the sync backend -------------------------------------

SHARED_KEYS = (
    [f"user:{n}" for n in range(300)]
    + ["x" * 300, "with space", "tab\there", "ünïcode ✓", "\x00nul", "", "k" * 250, "\udcff"]
    + [f"long:{n}:" + "y" * 260 for n in range(20)]
)


def tagged(tag: bytes, key: str) -> bytes:
    return tag + key.encode("utf-8", "surrogatepass")


def test_sync_and_async_pools_share_their_data(memcached_pool: MemcachedServer) -> None:
    """Written by MemcachedBackend, read by the async pool, and back, for every kind of key."""
    flush(memcached_pool.servers)
    sync = MemcachedBackend.from_servers(memcached_pool.servers)

    async def main() -> None:
        async with AsyncMemcachedBackend.from_servers(memcached_pool.servers) as store:
            assert [store.server_for(k) for k in SHARED_KEYS] == [
                sync.server_for(k) for k in SHARED_KEYS
            ]
            assert len({store.server_for(k) for k in SHARED_KEYS}) == 3
            assert await store.get_many(SHARED_KEYS) == [tagged(b"sync ", k) for k in SHARED_KEYS]
            for key in SHARED_KEYS[::7]:
                assert await store.get(key) == tagged(b"sync ", key)
            await store.set_many([(k, tagged(b"async ", k)) for k in SHARED_KEYS])
            await store.set("single", b"one")

    try:
        sync.set_many([(k, tagged(b"sync ", k)) for k in SHARED_KEYS])
        run(main())
        assert sync.get_many(SHARED_KEYS) == [tagged(b"async ", k) for k in SHARED_KEYS]
        assert sync.get("single") == b"one"
    finally:
        sync.close()


def test_a_pool_batch_goes_to_every_server_at_once(memcached_pool: MemcachedServer) -> None:
    """One request per server, each server's connection written once."""
    flush(memcached_pool.servers)

    async def main() -> None:
        async with AsyncMemcachedBackend.from_servers(memcached_pool.servers) as store:
            keys = [f"b:{n}" for n in range(200)]
            await store.set_many([(k, k.encode()) for k in keys])
            counts = {node.address: node.conn.writes for node in store._nodes}
            assert await store.get_many(keys) == [k.encode() for k in keys]
            after = {node.address: node.conn.writes - counts[node.address] for node in store._nodes}
            assert after == dict.fromkeys(counts, 1)
            assert await store.touch_many([*keys[:10], "nope"], ttl=100) == [True] * 10 + [False]
            assert await store.delete_many(keys) == 200
            assert repr(store).startswith("AsyncMemcachedBackend(servers=")

    run(main())


def test_a_dead_server_of_a_pool_fails_its_keys_only(tmp_path: Any) -> None:
    """Its keys raise BackendUnavailable (not retried for retry_timeout), the others work."""
    pool = start_memcached_processes(3)
    try:

        async def main() -> None:
            store = AsyncMemcachedBackend.from_servers(pool.servers, retry_timeout=30)
            keys = [f"d:{n}" for n in range(60)]
            await store.set_many([(k, b"v") for k in keys])
            dead = pool.servers[1]
            pool.processes[1].stop()
            lost = [k for k in keys if store.server_for(k) == dead]
            kept = [k for k in keys if store.server_for(k) != dead]
            assert await store.get_many(kept) == [b"v"] * len(kept)
            with pytest.raises(BackendUnavailable) as info:
                await store.get(lost[0])
            assert info.value.server == dead
            with pytest.raises(BackendUnavailable, match="retry_timeout=30s"):
                await store.get(lost[0])
            with pytest.raises(BatchWriteError) as batch:
                await store.set_many([(k, b"w") for k in keys])
            assert sorted(batch.value.written) == sorted(kept)
            assert sorted(batch.value.not_written) == sorted(lost)
            assert batch.value.unknown == []
            assert await store.get_many(kept) == [b"w"] * len(kept)
            await store.aclose()
            miss = AsyncMemcachedBackend.from_servers(pool.servers, down_server_reads_miss=True)
            assert await miss.get_many(keys) == [None if k in lost else b"w" for k in keys]
            await miss.aclose()

        run(main())
    finally:
        pool.stop()


# -- failures ---------------------------------------------------------------------------


def test_a_restarted_server_is_unavailable_then_recovers() -> None:
    """Killed: BackendUnavailable naming it, quickly; restarted: the same backend works."""
    server = own_memcached()
    port = server.port

    async def main() -> None:
        nonlocal server
        store = AsyncMemcachedBackend.from_servers(server.address, timeout=2.0)
        await store.set("k", b"v")
        server.stop()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as info:
            await store.get("k")
        assert info.value.server == server.address
        assert server.address in str(info.value)
        with pytest.raises(BackendUnavailable):
            await store.set("k", b"v")
        assert time.monotonic() - started < 2.0
        server = own_memcached_on(port)
        assert await store.get("k") is None
        await store.set("k", b"again")
        assert await store.get("k") == b"again"
        # A restart while connected: the kept connection is found closed, a read is resent.
        server.restart()
        assert await store.get("k") is None
        await store.aclose()

    try:
        run(main())
    finally:
        server.stop()


def own_memcached_on(port: int) -> ServerProcess:
    return sync_checks.start_memcached(port=port)


def test_a_silent_server_times_out() -> None:
    """A server that accepts and never answers: reads BackendUnavailable, writes OutcomeUnknown."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]

        async def main() -> None:
            store = AsyncMemcachedBackend.from_servers(f"127.0.0.1:{port}", timeout=0.2)
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match="timed out") as info:
                await store.get("k")
            assert isinstance(info.value.__cause__, TimeoutError)
            with pytest.raises(OutcomeUnknown, match="may or may not"):
                await store.incr("k")
            with pytest.raises(BatchWriteError) as batch:
                await store.set_many([("a", b"1"), ("b", b"2")])
            assert batch.value.unknown == ["a", "b"]
            assert time.monotonic() - started < 2.0
            await store.aclose()

        run(main())


def test_a_connect_that_times_out_is_unavailable() -> None:
    """connect_timeout bounds connecting (a full listen backlog never accepts)."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)

            async def main() -> None:
                store = AsyncMemcachedBackend.from_servers(f"127.0.0.1:{port}", connect_timeout=0.3)
                started = time.monotonic()
                with pytest.raises(BackendUnavailable):
                    await store.get("k")
                assert time.monotonic() - started < 3.0
                await store.aclose()

            run(main())
        finally:
            for filler in fillers:
                filler.close()


async def _fake_server(reply: bytes) -> tuple[asyncio.AbstractServer, str]:
    """A server answering every request with ``reply``."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readline():
                writer.write(reply)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (b"VALUE other 0 1\r\nx\r\nEND\r\n", "which this request did not ask for"),
        (b"SERVER_ERROR busy\r\n", "busy"),
    ],
)
def test_a_reply_that_does_not_fit_is_an_error_and_drops_the_connection(
    reply: bytes, match: str
) -> None:
    """A reply for another key or an error reply: BackendError, and a new connection next."""

    async def main() -> None:
        server, address = await _fake_server(reply)
        store = AsyncMemcachedBackend.from_servers(address)
        try:
            connections = []
            for _ in range(2):
                with pytest.raises(BackendError) as info:
                    await store.get("mine")
                assert match in str(info.value)
                assert info.value.server == address
                connections.append(store._single.conn)
            assert connections == [None, None]  # each dropped after its bad reply
        finally:
            await store.aclose()
            server.close()
            await server.wait_closed()

    run(main())


def test_bytes_nothing_asked_for_drop_the_connection() -> None:
    """memcached never speaks unasked: extra bytes close the connection; the reply stands."""

    async def main() -> None:
        server, address = await _fake_server(b"END\r\nEND\r\n")
        store = AsyncMemcachedBackend.from_servers(address)
        try:
            assert await store.get("mine") is None
            first = store._single.conn
            for _ in range(100):
                if first is None or first.closed:
                    break
                await asyncio.sleep(0.01)
            assert first is None or first.closed
            assert "nothing asked for" in str(first.cause if first else "nothing asked for")
        finally:
            await store.aclose()
            server.close()
            await server.wait_closed()

    run(main())


def test_compare_and_set_on_a_server_without_cas_says_so(
    no_cas_server: ServerProcess,  # noqa: F811
) -> None:
    """-C: gets, negative incr and KEEP_TTL raise BackendError naming -C."""

    async def main() -> None:
        async with AsyncMemcachedBackend.from_servers(no_cas_server.address) as store:
            await store.set("n", b"5")
            for attempt in (
                store.gets("n"),
                store.incr("n", -1),
                store.replace("n", b"6", KEEP_TTL),
                store.replace_many([("n", b"6")], KEEP_TTL),
            ):
                with pytest.raises(BackendError, match="CAS disabled"):
                    await attempt
            assert await store.get("n") == b"5"

    run(main())


def test_a_server_out_of_memory_says_what_became_of_the_old_values(
    full_server: ServerProcess,  # noqa: F811
) -> None:
    """-M: a refused set says the old value is gone (it is), a refused replace or cas kept."""

    async def main() -> None:
        flush([full_server.address])
        async with AsyncMemcachedBackend.from_servers(full_server.address) as store:
            for name in ("saved", "updated", "swapped"):
                await store.set(name, b"old value of " + name.encode())

            async def fill() -> None:
                for n in range(40):
                    await store.set(f"fill:{n}", b"x" * 300_000)

            with pytest.raises(BackendError, match="out of memory"):
                await fill()
            big = b"y" * 300_000
            with pytest.raises(BackendError, match=r"out of memory.*previous value.*is gone"):
                await store.set("saved", big)
            assert await store.get("saved") is None
            with pytest.raises(BackendError, match=r"out of memory.*previous value is kept"):
                await store.replace("updated", big)
            assert await store.get("updated") == b"old value of updated"
            got = await store.gets("swapped")
            assert got is not None
            with pytest.raises(BackendError, match=r"out of memory.*previous value is kept"):
                await store.cas("swapped", big, got[1])
            assert await store.get("swapped") == b"old value of swapped"

    run(main())


def test_refused_writes_send_nothing(memcached_server: MemcachedServer) -> None:
    """Oversized values and TTLs past 2038 raise before anything is written."""

    async def main() -> None:
        async with AsyncMemcachedBackend.from_servers(
            memcached_server.servers, max_value_size=100
        ) as store:
            await store.set("k", b"old")
            token = await store.gets("k")
            assert token is not None
            conn = store._single.conn
            before = (conn.writes, conn.queued)
            too_far = 2**31 - time.time() + 100
            for write in (
                store.set("k", b"x" * 101),
                store.set_many([("k", b"v"), ("o", b"x" * 101)]),
                store.replace("k", b"x" * 101, KEEP_TTL),
                store.cas("k", b"x" * 101, token[1]),
                store.set("k", b"new", ttl=too_far),
                store.add_many([("fresh", b"new")], ttl=too_far),
                store.touch_many(["k"], ttl=too_far),
            ):
                with pytest.raises(Exception, match=r"over the 100-byte limit|2038"):
                    await write
            assert (conn.writes, conn.queued) == before
            assert await store.get_many(["k", "fresh"]) == [b"old", None]

    run(main())


def test_keep_ttl_batches_of_absent_keys_send_no_empty_request(
    memcached_server: MemcachedServer,
) -> None:
    """replace_many KEEP_TTL whose keys are all absent answers at once (no cas round)."""

    async def main() -> None:
        async with AsyncMemcachedBackend.from_servers(memcached_server.servers, timeout=1) as store:
            assert await store.replace_many([("absent:1", b"v"), ("absent:2", b"v")], KEEP_TTL) == [
                False,
                False,
            ]
            assert await store.get_many(["absent:1", "absent:2"]) == [None, None]

    run(main())


def test_close_and_reuse(memcached_server: MemcachedServer) -> None:
    """aclose closes the connections; using the backend again reconnects."""

    async def main() -> None:
        store = AsyncMemcachedBackend.from_servers(memcached_server.servers)
        await store.set("k", b"v")
        await store.aclose()
        assert store._single.conn is None
        assert await store.get("k") == b"v"
        await store.aclose()
        await store.aclose()

    run(main())
    store = AsyncMemcachedBackend.from_servers(memcached_server.servers)

    async def write_then_read(key: str) -> bytes | None:
        await store.set(key, b"1")
        try:
            return await store.get(key)
        finally:
            await store.aclose()

    assert run(write_then_read("loops")) == b"1"
    assert run(write_then_read("loops again")) == b"1"  # a second loop: a new connection


def test_a_unix_socket_server(tmp_path: Any) -> None:
    """``unix:/path`` addresses connect over a Unix socket."""
    binary = shutil.which("memcached")
    assert binary is not None
    path = str(tmp_path / "mc.sock")
    argv = [binary, "-s", path, "-U", "0", "-m", "16"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv += ["-u", "root"]
    process = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 5
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)

        async def main() -> None:
            async with AsyncMemcachedBackend.from_servers(f"unix:{path}") as store:
                assert store.servers == [f"unix:{path}"]
                assert repr(store._single) == f"<memcached unix:{path}>"
                await store.set("k", b"over a unix socket")
                assert await store.get("k") == b"over a unix socket"

        run(main())
    finally:
        process.terminate()
        process.wait(5)


def test_missing_pymemcache_raises_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    """pymemcache (its ring and address parsing) is needed: MissingDependency names the extra."""
    monkeypatch.setitem(sys.modules, "pymemcache.client.hash", None)
    with pytest.raises(MissingDependency, match="memcached"):
        AsyncMemcachedBackend.from_servers("127.0.0.1:1")


def test_aclose_while_connecting_fails_the_waiting_requests() -> None:
    """A connection attempt stopped by aclose: its requests get BackendUnavailable."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)

            async def main() -> None:
                store = AsyncMemcachedBackend.from_servers(f"127.0.0.1:{port}")
                waiting = asyncio.ensure_future(store.get("k"))
                await asyncio.sleep(0.05)
                await store.aclose()
                with pytest.raises(BackendUnavailable, match="closed"):
                    await waiting

            run(main())
        finally:
            for filler in fillers:
                filler.close()


def test_a_request_on_a_connection_already_lost_was_never_sent(
    memcached_server: MemcachedServer,
) -> None:
    """A request queued on a connection that was lost meanwhile fails at once, unsent."""

    async def main() -> None:
        store = AsyncMemcachedBackend.from_servers(memcached_server.servers)
        await store.get("warm")
        conn = store._single.conn
        await store.aclose()
        assert conn.closed
        with pytest.raises(Failure) as info:
            await conn.request(b"get k\r\n", read_value, b"k")
        assert info.value.sent == 0

    run(main())


def test_without_a_running_event_loop_the_error_says_so(memcached_server: MemcachedServer) -> None:
    """Awaited outside asyncio (under trio, or stepped by hand): ConfigurationError, not a crash."""
    store = AsyncMemcachedBackend.from_servers(memcached_server.servers)
    call = store.get("k")
    with pytest.raises(ConfigurationError, match="asyncio event loop"):
        call.send(None)
    call.close()


def test_under_trio_the_backend_says_to_use_asyncio(memcached_server: MemcachedServer) -> None:
    """Awaited under trio: a ConfigurationError naming the ways to run it, nothing sent."""
    trio = pytest.importorskip("trio")
    store = AsyncMemcachedBackend.from_servers(memcached_server.servers)

    async def main() -> None:
        await store.get("k")

    with pytest.raises(ConfigurationError, match="AsyncMemcachedBackend") as info:
        trio.run(main)
    assert "anyio's asyncio backend or trio-asyncio" in str(info.value)
    assert store._single.conn is None
