"""RedisBackend's retry policy and partial batches, with a fault proxy in front of redis-server.

The backend talks to a real redis-server through :class:`tests.proxy.FaultProxy`
and its client is configured to retry eagerly (``Retry(ExponentialBackoff(),
3)``, short socket timeouts). The tests then lose replies, reset or refuse
connections and cut pipelined replies part-way, and read the server directly
(not through the proxy) to see what really happened: idempotent reads are
retried, non-idempotent writes are never sent twice, and a batch that fails
part-way says which keys were written, not written and unknown.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

pytest.importorskip("redis")

import redis
from redis.backoff import AbstractBackoff, ExponentialBackoff
from redis.retry import Retry

from cacheorm import (
    AlreadyExists,
    BackendError,
    BackendUnavailable,
    BatchWriteError,
    OutcomeUnknown,
    RedisBackend,
)
from tests.proxy import FaultProxy
from tests.servers import RedisServer

#: Seconds a lost reply takes to notice: the client's socket timeout.
TIMEOUT = 0.5
#: The RESP2 reply to a stored SET: ``+OK\r\n``; a refused ``SET NX`` is ``$-1\r\n``.
REPLY = 5


def server_address(redis_server: RedisServer) -> tuple[str, int]:
    """The session server's TCP host and port."""
    parts = urlsplit(redis_server.url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


class HealingBackoff(AbstractBackoff):
    """Backs off briefly and switches the proxy back to ``pass``: the network heals
    between a failed attempt and its retry, so a resend would reach the server."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.computed = 0

    def __deepcopy__(self, memo: dict[int, Any]) -> HealingBackoff:
        """redis-py copies the Retry it is given; the copy must still heal this proxy."""
        return self

    def reset(self) -> None:
        """Nothing to reset."""

    def compute(self, failures: int) -> float:
        """Heal the network; retry after 10 ms."""
        self.computed += 1
        self.proxy.pass_through()
        return 0.01


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's redis-server, passing traffic."""
    host, port = server_address(redis_server)
    with FaultProxy(host, port) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client straight to the server (not through the proxy), on a flushed database."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.script_flush()
    client.config_resetstat()
    yield client
    client.close()


def make_backend(proxy: FaultProxy, retry: Retry, **kwargs: Any) -> RedisBackend:
    """A backend whose client reaches the server through ``proxy`` with ``retry``."""
    client = redis.Redis(
        host=proxy.host,
        port=proxy.port,
        retry=retry,
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        **kwargs,
    )
    return RedisBackend(client)


@pytest.fixture
def store(proxy: FaultProxy, raw: redis.Redis) -> Iterator[RedisBackend]:
    """A backend through the proxy whose client retries three times, quickly."""
    backend = make_backend(proxy, Retry(ExponentialBackoff(cap=0.05, base=0.01), 3))
    yield backend
    backend.close()


@pytest.fixture
def healing(proxy: FaultProxy, raw: redis.Redis) -> Iterator[tuple[RedisBackend, HealingBackoff]]:
    """A backend through the proxy whose client retries three times; the network heals
    before each retry."""
    backoff = HealingBackoff(proxy)
    backend = make_backend(proxy, Retry(backoff, 3))
    yield backend, backoff
    backend.close()


@pytest.fixture
def no_retry(proxy: FaultProxy, raw: redis.Redis) -> Iterator[RedisBackend]:
    """A backend through the proxy whose client never retries."""
    backend = make_backend(proxy, Retry(ExponentialBackoff(), 0))
    yield backend
    backend.close()


def calls(raw: redis.Redis) -> dict[str, int]:
    """Commands the server ran since the fixture reset its statistics (the observer's left out)."""
    stats: dict[str, dict[str, Any]] = raw.info("commandstats")
    counted = {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}
    skip = ("info", "config", "flushdb", "script", "get", "mget", "exists", "client", "hello")
    skip += ("dbsize",)
    return {name: n for name, n in counted.items() if n and not name.startswith(skip)}


def refuse(proxy: FaultProxy) -> None:
    """Refuse connections, and wait until the proxy has closed every open one."""
    proxy.refuse()
    deadline = time.monotonic() + 5
    while proxy.connection_count:
        assert time.monotonic() < deadline, "the proxy did not close its connections"
        time.sleep(0.005)


def noscript_reply_size(redis_server: RedisServer) -> int:
    """The byte size of the server's NOSCRIPT error reply to an EVALSHA."""
    host, port = server_address(redis_server)
    request = b"*3\r\n$7\r\nEVALSHA\r\n$40\r\n" + b"0" * 40 + b"\r\n$1\r\n0\r\n"
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(request)
        reply = b""
        while not reply.endswith(b"\r\n"):
            reply += sock.recv(4096)
    assert reply.startswith(b"-NOSCRIPT"), reply
    return len(reply)


# -- non-idempotent writes are never resent ----------------------------------------


def test_add_with_a_lost_reply_is_outcome_unknown_not_already_exists(
    store: RedisBackend, proxy: FaultProxy, raw: redis.Redis
) -> None:
    """A SET NX whose reply is lost raises OutcomeUnknown once; it is never resent, so it
    is never reported as AlreadyExists (or False) for its own write, which did happen."""
    store.get("warm-up")  # connect first: a lost handshake reply would fail before sending
    proxy.drop_replies()
    with pytest.raises(OutcomeUnknown) as info:
        store.add("user:1", b"mine", ttl=60)
    exc = info.value
    assert not isinstance(exc, AlreadyExists)
    assert exc.key == "user:1"
    assert exc.server == store.server
    assert "may or may not" in str(exc)
    assert "'user:1'" in str(exc)
    assert store.server in str(exc)
    assert raw.get("user:1") == b"mine"
    assert calls(raw) == {"set": 1}
    proxy.pass_through()
    assert store.add("user:1", b"again") is False
    assert store.add("user:2", b"new") is True
    assert store.get("user:1") == b"mine"


def test_add_reset_after_sending_is_never_resent_even_when_the_network_heals(
    healing: tuple[RedisBackend, HealingBackoff], proxy: FaultProxy, raw: redis.Redis
) -> None:
    """A SET NX whose connection is reset after sending is OutcomeUnknown: the client's
    Retry would resend it to a healed network, cacheorm does not (the server saw none)."""
    store, backoff = healing
    store.get("warm-up")  # open the pooled connection through the proxy
    proxy.reset()
    with pytest.raises(OutcomeUnknown):
        store.add("k", b"v")
    assert backoff.computed == 0
    assert calls(raw) == {}
    assert raw.get("k") is None
    proxy.pass_through()
    assert store.add("k", b"v") is True


def test_incr_with_a_lost_reply_counts_exactly_once(
    store: RedisBackend, proxy: FaultProxy, raw: redis.Redis
) -> None:
    """An INCRBY whose reply is lost is OutcomeUnknown and applied once, not four times."""
    raw.set("n", b"10")
    store.get("warm-up")
    proxy.drop_replies()
    with pytest.raises(OutcomeUnknown, match="'n'"):
        store.incr("n", 5)
    assert raw.get("n") == b"15"
    assert calls(raw) == {"set": 1, "incrby": 1}
    proxy.pass_through()
    assert store.incr("n") == 16


def test_incr_when_the_network_heals_before_a_retry_still_counts_once(
    healing: tuple[RedisBackend, HealingBackoff], proxy: FaultProxy, raw: redis.Redis
) -> None:
    """Even when a resend would have reached the server, incr is not resent."""
    store, backoff = healing
    store.get("warm-up")
    proxy.drop_replies()
    with pytest.raises(OutcomeUnknown):
        store.incr("n")
    assert backoff.computed == 0
    assert raw.get("n") == b"1"


def test_cas_with_a_lost_reply_is_applied_once(
    store: RedisBackend, proxy: FaultProxy, raw: redis.Redis
) -> None:
    """A compare-and-set whose reply is lost is OutcomeUnknown; the script ran once, so the
    value is ours and not refused by a resend against our own write."""
    raw.set("k", b"v1")
    got = store.gets("k")
    assert got is not None
    store.cas("k", b"v1", got[1])  # the script is now loaded
    raw.config_resetstat()
    proxy.drop_replies()
    with pytest.raises(OutcomeUnknown, match="CAS"):
        store.cas("k", b"v2", got[1])
    assert raw.get("k") == b"v2"
    assert calls(raw) == {"evalsha": 1, "set": 1}
    proxy.pass_through()
    assert store.cas("k", b"v3", got[1]) is False
    assert store.get("k") == b"v2"


def test_cas_noscript_fallback_with_a_lost_reply_is_applied_once(
    store: RedisBackend, proxy: FaultProxy, raw: redis.Redis, redis_server: RedisServer
) -> None:
    """EVALSHA answered NOSCRIPT (not run), then EVAL's reply is lost: one script run,
    no third attempt, OutcomeUnknown."""
    raw.set("k", b"v1")
    token = hashlib.sha1(b"v1").hexdigest()
    size = noscript_reply_size(redis_server)
    raw.config_resetstat()
    store.get("warm-up")  # open the connection before counting reply bytes
    proxy.cut_replies_after(size)
    with pytest.raises(OutcomeUnknown):
        store.cas("k", b"v2", token)
    assert raw.get("k") == b"v2"
    assert calls(raw) == {"evalsha": 1, "eval": 1, "set": 1}


def test_add_when_connections_are_refused_is_unavailable_and_writes_nothing(
    store: RedisBackend, proxy: FaultProxy, raw: redis.Redis
) -> None:
    """A refused connection fails before sending: BackendUnavailable, not OutcomeUnknown,
    and nothing is written; once connections pass again the same backend works."""
    store.get("warm-up")
    refuse(proxy)
    for write in (
        lambda: store.add("k", b"v"),
        lambda: store.incr("n"),
        lambda: store.cas("k", b"v", "0" * 40),
    ):
        with pytest.raises(BackendUnavailable) as info:
            write()
        assert not isinstance(info.value, OutcomeUnknown)
        assert "unavailable" in str(info.value)
        assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    assert raw.dbsize() == 0
    assert calls(raw) == {}
    proxy.pass_through()
    assert store.add("k", b"v") is True
    assert store.incr("n") == 1


# -- idempotent commands keep the client's retries --------------------------------


def test_get_on_a_reset_connection_is_retried_and_succeeds(
    healing: tuple[RedisBackend, HealingBackoff], proxy: FaultProxy, raw: redis.Redis
) -> None:
    """A GET whose connection is reset is retried by the client's Retry and succeeds."""
    store, backoff = healing
    raw.set("k", b"v")
    store.get("warm-up")
    proxy.reset()
    assert store.get("k") == b"v"
    assert backoff.computed == 1


def test_get_with_a_lost_reply_is_retried(
    healing: tuple[RedisBackend, HealingBackoff], proxy: FaultProxy, raw: redis.Redis
) -> None:
    """A GET whose reply is lost times out, is resent and answered; the server saw two."""
    store, backoff = healing
    raw.set("k", b"v")
    store.get("warm-up")
    raw.config_resetstat()
    proxy.drop_replies()
    assert store.get("k") == b"v"
    assert backoff.computed == 1
    stats = raw.info("commandstats")
    assert stats["cmdstat_get"]["calls"] == 2


def test_reads_fail_as_unavailable_once_retries_run_out(
    store: RedisBackend, proxy: FaultProxy
) -> None:
    """With the network still down after the last retry, a read is BackendUnavailable."""
    store.get("warm-up")
    refuse(proxy)
    with pytest.raises(BackendUnavailable) as info:
        store.get("k")
    assert not isinstance(info.value, OutcomeUnknown)
    proxy.pass_through()
    assert store.get("k") is None


def test_an_error_reply_leaves_the_connection_usable(
    store: RedisBackend, proxy: FaultProxy, raw: redis.Redis
) -> None:
    """incr of a non-integer is a BackendError; the same pooled connection serves on."""
    raw.set("word", b"hello")
    store.get("warm-up")
    assert proxy.connection_count == 1
    with pytest.raises(BackendError, match="not an integer") as info:
        store.incr("word")
    assert not isinstance(info.value, BackendUnavailable)
    assert store.incr("n") == 1
    assert store.add("k", b"v") is True
    assert proxy.connection_count == 1


def test_single_connection_client(proxy: FaultProxy, raw: redis.Redis) -> None:
    """A single_connection_client works, loses a reply as OutcomeUnknown, and recovers."""
    backend = make_backend(
        proxy, Retry(ExponentialBackoff(cap=0.05, base=0.01), 3), single_connection_client=True
    )
    try:
        assert backend.add("k", b"v") is True
        assert backend.incr("n", 2) == 2
        got = backend.gets("k")
        assert got is not None
        assert backend.cas("k", b"w", got[1]) is True
        proxy.drop_replies()
        with pytest.raises(OutcomeUnknown):
            backend.incr("n")
        proxy.pass_through()
        assert raw.get("n") == b"3"
        assert backend.incr("n") == 4
        assert backend.add_many([("a", b"1"), ("k", b"x")]) == [True, False]
    finally:
        backend.close()


# -- batches that fail part-way ----------------------------------------------------


def test_add_many_cut_part_way_reports_written_refused_and_unknown(
    store: RedisBackend, proxy: FaultProxy, raw: redis.Redis
) -> None:
    """Five SET NX sent, two replies arrive (one stored, one refused), three lost:
    written, not_written (the refused key) and unknown say so, nothing is resent."""
    raw.set("b", b"old")
    raw.config_resetstat()
    store.get("warm-up")
    proxy.cut_replies_after(2 * REPLY)
    items = [("a", b"1"), ("b", b"2"), ("c", b"3"), ("d", b"4"), ("e", b"5")]
    with pytest.raises(BatchWriteError) as info:
        store.add_many(items, ttl=60)
    exc = info.value
    assert isinstance(exc, BackendUnavailable)
    # "b" existed: its SET NX was refused, so it is certainly not written
    assert (exc.written, exc.not_written, exc.unknown) == (["a"], ["b"], ["c", "d", "e"])
    assert exc.server == store.server
    for part in ("1 written", "1 not written", "3 unknown", "'c'", store.server):
        assert part in str(exc)
    assert calls(raw) == {"set": 5}
    assert raw.get("b") == b"old"
    proxy.pass_through()
    assert store.add_many([("a", b"x"), ("f", b"6")]) == [False, True]


def test_set_many_pipeline_cut_part_way_without_retries(
    no_retry: RedisBackend, proxy: FaultProxy, raw: redis.Redis
) -> None:
    """A pipeline of SET PX whose replies stop after three: three written, the rest
    unknown (sent), none reported as written that was not confirmed."""
    no_retry.get("warm-up")
    proxy.cut_replies_after(3 * REPLY)
    items = [(f"k{i}", b"%d" % i) for i in range(10)]
    with pytest.raises(BatchWriteError) as info:
        no_retry.set_many(items, ttl=60)
    exc = info.value
    assert exc.written == ["k0", "k1", "k2"]
    assert exc.unknown == [f"k{i}" for i in range(3, 10)]
    assert exc.not_written == []
    assert raw.mget(exc.written) == [b"0", b"1", b"2"]


def test_set_many_resends_only_the_unconfirmed_commands(
    healing: tuple[RedisBackend, HealingBackoff], proxy: FaultProxy, raw: redis.Redis
) -> None:
    """set_many is idempotent, so it is retried, but a retry resends only the SETs whose
    replies were lost: three of ten confirmed, then the other seven resent (17 in all)."""
    store, backoff = healing
    store.get("warm-up")
    proxy.cut_replies_after(3 * REPLY)
    items = [(f"k{i}", b"%d" % i) for i in range(10)]
    store.set_many(items, ttl=60)
    assert backoff.computed == 1
    assert calls(raw) == {"set": 17}
    assert raw.mget([k for k, _ in items]) == [v for _, v in items]


def test_replace_many_cut_part_way(
    no_retry: RedisBackend, proxy: FaultProxy, raw: redis.Redis
) -> None:
    """replace_many: a confirmed stored key is written, a confirmed refusal in no list,
    the lost ones unknown."""
    raw.mset({"a": b"0", "c": b"0"})
    no_retry.get("warm-up")
    proxy.cut_replies_after(2 * REPLY)
    with pytest.raises(BatchWriteError) as info:
        no_retry.replace_many([("a", b"1"), ("b", b"2"), ("c", b"3")])
    assert (info.value.written, info.value.not_written, info.value.unknown) == (
        ["a"],
        ["b"],  # absent, so its SET XX was refused
        ["c"],
    )
    assert raw.exists("b") == 0


def test_mset_with_a_lost_reply_is_all_unknown(
    no_retry: RedisBackend, proxy: FaultProxy, raw: redis.Redis
) -> None:
    """One MSET is atomic: when its reply is lost every key is unknown, none written."""
    no_retry.get("warm-up")
    proxy.drop_replies()
    with pytest.raises(BatchWriteError) as info:
        no_retry.set_many([("a", b"1"), ("b", b"2")])
    assert (info.value.written, info.value.not_written, info.value.unknown) == ([], [], ["a", "b"])
    assert raw.mget(["a", "b"]) == [b"1", b"2"]


def test_batches_when_connections_are_refused_are_not_written(
    store: RedisBackend, proxy: FaultProxy, raw: redis.Redis
) -> None:
    """A batch that could not connect wrote nothing: every key is in not_written."""
    store.get("warm-up")
    refuse(proxy)
    writes = [
        lambda: store.set_many([("a", b"1"), ("b", b"2")]),
        lambda: store.set_many([("a", b"1"), ("b", b"2")], ttl=5),
        lambda: store.add_many([("a", b"1"), ("b", b"2")]),
        lambda: store.replace_many([("a", b"1"), ("b", b"2")]),
    ]
    for write in writes:
        with pytest.raises(BatchWriteError) as info:
            write()
        assert (info.value.written, info.value.not_written, info.value.unknown) == (
            [],
            ["a", "b"],
            [],
        )
    assert raw.dbsize() == 0
    proxy.pass_through()
    assert store.add_many([("a", b"1"), ("b", b"2")]) == [True, True]


def test_a_command_whose_send_fails_was_not_applied(
    no_retry: RedisBackend, proxy: FaultProxy, raw: redis.Redis
) -> None:
    """A connection reset while a 16 MB SET NX is still being written: the server never got
    the whole command, so it is BackendUnavailable (not OutcomeUnknown) and nothing is
    stored. The same for a pipeline is unknown: its first commands may have arrived whole."""
    big = b"x" * (16 * 1024 * 1024)
    no_retry.get("warm-up")
    proxy.reset()
    with pytest.raises(BackendUnavailable, match="writing to socket") as info:
        no_retry.add("big", big)
    assert not isinstance(info.value, OutcomeUnknown)
    proxy.pass_through()
    no_retry.get("warm-up")
    proxy.reset()
    with pytest.raises(BatchWriteError) as batch:
        no_retry.add_many([("a", big[:1024]), ("b", big)])
    assert (batch.value.written, batch.value.not_written, batch.value.unknown) == (
        [],
        [],
        ["a", "b"],
    )
    assert raw.dbsize() == 0


# -- the follow-up reads that tell a miss from a key of another Redis type ------------


def test_a_network_failure_after_mget_fails_the_get_many(
    no_retry: RedisBackend, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """get_many whose MGET answered and whose EXISTS of the misses cannot be sent raises
    BackendUnavailable naming EXISTS: it never reports misses it could not check."""
    no_retry.set("hit", b"v")
    original = RedisBackend._foreign_misses

    def network_fails(self: RedisBackend, keys: list[str]) -> None:
        refuse(proxy)
        original(self, keys)

    monkeypatch.setattr(RedisBackend, "_foreign_misses", network_fails)
    with pytest.raises(BackendUnavailable, match="EXISTS") as info:
        no_retry.get_many(["hit", "miss"])
    assert info.value.key == "miss"


@pytest.fixture
def types_fail(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """The network refuses every connection just before the backend reads key types."""
    original = RedisBackend._types

    def network_fails(self: RedisBackend, op: str, keys: list[str]) -> list[str]:
        refuse(proxy)
        return original(self, op, keys)

    monkeypatch.setattr(RedisBackend, "_types", network_fails)


def test_a_network_failure_before_type_fails_the_get_many(
    no_retry: RedisBackend, raw: redis.Redis, types_fail: None
) -> None:
    """A miss that EXISTS says is there gets its TYPE read; if that fails, get_many is
    BackendUnavailable naming TYPE."""
    raw.hset("h", "f", "v")
    with pytest.raises(BackendUnavailable, match="TYPE") as info:
        no_retry.get_many(["h"])
    assert info.value.key == "h"


def test_a_refused_add_stays_refused_when_its_type_check_fails(
    no_retry: RedisBackend, raw: redis.Redis, types_fail: None
) -> None:
    """add refused by SET NX answers False even if the TYPE read after it cannot be sent:
    nothing was written either way."""
    raw.set("taken", b"old")
    assert no_retry.add("taken", b"new") is False
    assert raw.get("taken") == b"old"
