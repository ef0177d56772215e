"""RedisConnection on real redis-server processes: pipelining, order, cancellation, failures."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from cacheorm._aio_redis import ConnectionLost, RedisConnection, RequestTimeout
from cacheorm._resp import ReplyError
from tests.servers import (
    RedisServer,
    ServerMissing,
    ServerProcess,
    _binary,  # pyright: ignore[reportPrivateUsage]
    _redis_process,  # pyright: ignore[reportPrivateUsage]
    closed_port,
    free_port,
    start_redis_process,
)

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` in a fresh event loop."""

    async def wrapped() -> T:
        return await main()

    return asyncio.run(wrapped())


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("//", 1)[1].split("/", 1)[0].rpartition(":")
    return host, int(port)


def connect(server: RedisServer, **options: Any) -> RedisConnection:
    """A RedisConnection to ``server``."""
    host, port = _host_port(server.url)
    return RedisConnection(host, port, **options)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, to kill, pause and restart."""
    try:
        server = start_redis_process()
    except ServerMissing as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


def _process(server: RedisServer) -> ServerProcess:
    assert server.process is not None
    return server.process


def test_execute_returns_replies_in_order(redis_server: RedisServer) -> None:
    """A request's commands run contiguously; an error reply is a ReplyError in the list."""

    async def main() -> None:
        conn = connect(redis_server)
        try:
            replies = await conn.execute(
                [
                    ("DEL", "c:h", "c:a"),
                    ("SET", "c:a", b"1"),
                    ("GET", "c:a"),
                    ("HSET", "c:h", "f", "v"),
                    ("GET", "c:h"),
                    ("GET", "c:missing"),
                ]
            )
            assert replies[1:4] == [b"OK", b"1", 1]
            assert isinstance(replies[4], ReplyError)
            assert replies[4].code == "WRONGTYPE"
            assert replies[5] is None
            assert conn.connected
            assert conn.connects == 1
            assert repr(conn).startswith("RedisConnection(")
        finally:
            await conn.aclose()
        assert not conn.connected

    run(main)


def test_concurrent_requests_share_writes(redis_server: RedisServer) -> None:
    """1,000 concurrent gets go out in a handful of writes, each task getting its own value."""

    async def main() -> tuple[int, int]:
        conn = connect(redis_server)
        try:
            await conn.execute([("SET", f"p:{i}", f"v{i}") for i in range(1000)])
            before = conn.writes

            async def get(i: int) -> bool:
                (value,) = await conn.execute([("GET", f"p:{i}")])
                return value == f"v{i}".encode()

            results = await asyncio.gather(*[get(i) for i in range(1000)])
            return sum(results), conn.writes - before
        finally:
            await conn.aclose()

    right, writes = run(main)
    print(f"1000 concurrent gets: {right} right values in {writes} writes")
    assert right == 1000
    assert writes <= 5


def test_cancelled_requests_never_hand_on_their_replies(redis_server: RedisServer) -> None:
    """Cancelled waiters' replies are read and dropped; every completed call gets its own value."""

    async def main() -> tuple[int, int, int]:
        conn = connect(redis_server)
        rng = random.Random(12)
        wrong = done = cancelled = 0
        try:
            await conn.execute([("SET", f"x:{i}", f"value-{i}") for i in range(200)])

            async def get(i: int) -> None:
                nonlocal wrong, done
                (value,) = await conn.execute([("GET", f"x:{i}")])
                done += 1
                wrong += value != f"value-{i}".encode()

            for _ in range(25):
                tasks = [asyncio.ensure_future(get(rng.randrange(200))) for _ in range(200)]
                await asyncio.sleep(0)
                for task in tasks:
                    if rng.random() < 0.3:
                        task.cancel()
                await asyncio.sleep(rng.choice([0, 0, 0.0005]))
                for task in tasks:
                    if rng.random() < 0.2:
                        task.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                cancelled += sum(isinstance(r, asyncio.CancelledError) for r in results)
            assert (await conn.execute([("GET", "x:7")])) == [b"value-7"]
            assert conn.connects == 1
        finally:
            await conn.aclose()
        return wrong, done, cancelled

    wrong, done, cancelled = run(main)
    print(f"connection cancellations: {cancelled} cancelled, {done} completed, {wrong} wrong")
    assert wrong == 0
    assert cancelled > 500
    assert done > 500


def test_refused_connection_is_not_sent() -> None:
    """Nothing listening: ConnectionLost(sent=False) naming the server, fast."""

    async def main() -> None:
        conn = RedisConnection("127.0.0.1", closed_port(), connect_timeout=2)
        with pytest.raises(ConnectionLost, match="could not connect") as info:
            await conn.execute([("GET", "k")])
        assert info.value.sent is False
        assert info.value.server == conn.server
        await conn.aclose()

    run(main)


def test_restart_fails_pending_then_reconnects(own_redis: RedisServer) -> None:
    """Requests in flight when the server dies fail with sent=True; the next one reconnects."""

    async def main() -> None:
        conn = connect(own_redis, timeout=5)
        try:
            assert await conn.execute([("SET", "r", "1")]) == [b"OK"]
            blocked = asyncio.ensure_future(conn.execute([("BLPOP", "nothing", "0")]))
            await asyncio.sleep(0.05)
            _process(own_redis).kill()
            with pytest.raises(ConnectionLost) as info:
                await blocked
            assert info.value.sent is True
            with pytest.raises(ConnectionLost) as refused:
                await conn.execute([("GET", "r")])
            assert refused.value.sent is False
            _process(own_redis).restart()
            assert await conn.execute([("SET", "r", "2"), ("GET", "r")]) == [b"OK", b"2"]
            assert conn.connects == 2
        finally:
            await conn.aclose()

    run(main)


def test_silent_server_times_out(own_redis: RedisServer) -> None:
    """A paused server: every pending request fails with RequestTimeout after ``timeout``."""

    async def main() -> float:
        conn = connect(own_redis, timeout=0.3)
        try:
            await conn.execute([("PING",)])
            _process(own_redis).pause()
            start = time.monotonic()
            results = await asyncio.gather(
                *[conn.execute([("GET", f"t{i}")]) for i in range(10)], return_exceptions=True
            )
            elapsed = time.monotonic() - start
            assert all(isinstance(r, RequestTimeout) and r.sent for r in results)
            assert "timeout" in str(results[0])
            _process(own_redis).resume()
            assert await conn.execute([("PING",)]) == [b"PONG"]
            return elapsed
        finally:
            await conn.aclose()

    elapsed = run(main)
    assert 0.25 <= elapsed < 1.0


async def _fake_server(reply: bytes) -> tuple[asyncio.Server, int]:
    """A TCP server that answers every read with ``reply`` (nothing if empty)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                if reply:
                    writer.write(reply)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_connect_timeout() -> None:
    """A server that accepts but never answers AUTH: RequestTimeout(sent=False) after
    connect_timeout."""

    async def main() -> None:
        server, port = await _fake_server(b"")
        conn = RedisConnection("127.0.0.1", port, password="pw", connect_timeout=0.2)
        try:
            start = time.monotonic()
            with pytest.raises(RequestTimeout, match="connect_timeout") as info:
                await conn.execute([("GET", "k")])
            assert info.value.sent is False
            assert time.monotonic() - start < 1.0
        finally:
            await conn.aclose()
            server.close()
            await server.wait_closed()

    run(main)


def test_bytes_that_are_not_resp_close_the_connection() -> None:
    """A reply that is not RESP: the request fails (sent) and the connection is closed."""

    async def main() -> None:
        server, port = await _fake_server(b"?garbage\r\n")
        conn = RedisConnection("127.0.0.1", port)
        try:
            with pytest.raises(ConnectionLost, match="not RESP") as info:
                await conn.execute([("PING",)])
            assert info.value.sent is True
            assert not conn.connected
        finally:
            await conn.aclose()
            server.close()
            await server.wait_closed()

    run(main)


def test_a_reply_nobody_asked_for_closes_the_connection() -> None:
    """One reply too many: the request gets its own, then the connection is closed."""

    async def main() -> None:
        server, port = await _fake_server(b"+OK\r\n+EXTRA\r\n")
        conn = RedisConnection("127.0.0.1", port)
        try:
            assert await conn.execute([("PING",)]) == [b"OK"]
            await asyncio.sleep(0.01)
            assert not conn.connected
            assert await conn.execute([("PING",)]) == [b"OK"]
            assert conn.connects == 2
        finally:
            await conn.aclose()
            server.close()
            await server.wait_closed()

    run(main)


def test_server_closing_the_connection(own_redis: RedisServer) -> None:
    """CLIENT KILL of our own connection: pending requests fail, the next reconnects."""

    async def main() -> None:
        conn = connect(own_redis)
        try:
            with pytest.raises(ConnectionLost, match=r"closed the connection|lost") as info:
                await conn.execute([("CLIENT", "KILL", "SKIPME", "no"), ("PING",)])
            assert info.value.sent is True
            assert await conn.execute([("PING",)]) == [b"PONG"]
        finally:
            await conn.aclose()

    run(main)


@pytest.fixture(scope="module")
def auth_redis() -> Iterator[ServerProcess]:
    """A redis-server with a default password and an ACL user."""
    try:
        binary = _binary("redis-server", None)
    except ServerMissing as exc:
        pytest.skip(str(exc))
    server = _redis_process(
        binary,
        free_port(),
        "--requirepass", "s3cret",
        "--user", "alice", "on", ">wonder", "~*", "+@all",
    )  # fmt: skip
    server.start(pong=b"-NOAUTH")
    yield server
    server.stop()


def test_auth_acl_and_db(auth_redis: ServerProcess) -> None:
    """AUTH with a password or an ACL user, SELECT db; a wrong password is refused, masked."""

    async def main() -> None:
        default = RedisConnection(auth_redis.host, auth_redis.port, password="s3cret", db=3)
        alice = RedisConnection(
            auth_redis.host, auth_redis.port, username="alice", password="wonder", db=3
        )
        wrong = RedisConnection(auth_redis.host, auth_redis.port, password="not-it")
        anonymous = RedisConnection(auth_redis.host, auth_redis.port)
        try:
            await default.execute([("SET", "who", "default")])
            assert await alice.execute([("GET", "who"), ("ACL", "WHOAMI")]) == [
                b"default",
                b"alice",
            ]
            with pytest.raises(ConnectionLost, match="AUTH was refused") as info:
                await wrong.execute([("PING",)])
            assert info.value.sent is False
            assert "not-it" not in str(info.value)
            (reply,) = await anonymous.execute([("GET", "who")])
            assert isinstance(reply, ReplyError)
            assert reply.code == "NOAUTH"
        finally:
            for conn in (default, alice, wrong, anonymous):
                await conn.aclose()

    run(main)


def test_backpressure_with_large_values(redis_server: RedisServer) -> None:
    """Many tasks writing 1 MB values: writing pauses, every value arrives whole."""

    async def main() -> tuple[int, int]:
        conn = connect(redis_server, timeout=30)
        value = os.urandom(1 << 20)
        try:

            async def put(i: int) -> bool:
                replies = await conn.execute([("SET", f"big:{i}", value), ("STRLEN", f"big:{i}")])
                return replies == [b"OK", len(value)]

            ok = await asyncio.gather(*[put(i) for i in range(64)])
            (back,) = await conn.execute([("GET", "big:63")])
            assert back == value
            await conn.execute([("DEL", *[f"big:{i}" for i in range(64)])])
            return sum(ok), conn.pauses
        finally:
            await conn.aclose()

    ok, pauses = run(main)
    print(f"backpressure: {ok} 1 MB writes, writing paused {pauses} times")
    assert ok == 64
    assert pauses >= 1


def test_closed_connection_refuses_requests(redis_server: RedisServer) -> None:
    """After aclose() pending requests fail (sent) and new ones fail unsent."""

    async def main() -> None:
        conn = connect(redis_server)
        await conn.execute([("PING",)])
        blocked = asyncio.ensure_future(conn.execute([("BLPOP", "nothing", "0")]))
        await asyncio.sleep(0.05)
        await conn.aclose()
        with pytest.raises(ConnectionLost) as info:
            await blocked
        assert info.value.sent is True
        with pytest.raises(ConnectionLost, match="closed") as after:
            await conn.execute([("PING",)])
        assert after.value.sent is False
        await conn.aclose()

    run(main)


def test_aclose_while_connecting() -> None:
    """aclose() during the connect: the waiting request fails unsent, nothing leaks."""

    async def main() -> None:
        server, port = await _fake_server(b"")
        conn = RedisConnection("127.0.0.1", port, password="pw", connect_timeout=5)
        try:
            waiting = asyncio.ensure_future(conn.execute([("PING",)]))
            await asyncio.sleep(0.05)
            await conn.aclose()
            with pytest.raises(ConnectionLost) as info:
                await waiting
            assert info.value.sent is False
        finally:
            server.close()
            await server.wait_closed()

    run(main)


def test_unix_socket(own_redis: RedisServer) -> None:
    """A connection over the server's unix socket."""
    assert own_redis.unix_url is not None
    path = own_redis.unix_url.removeprefix("unix://")

    async def main() -> None:
        conn = RedisConnection(path=path)
        try:
            assert await conn.execute([("PING",)]) == [b"PONG"]
            assert conn.server.endswith("redis.sock")
        finally:
            await conn.aclose()

    run(main)


def test_requests_not_yet_written_fail_unsent(redis_server: RedisServer) -> None:
    """A request queued but not flushed when the connection closes never reached the server:
    ConnectionLost(sent=False), so resending it is safe."""

    async def main() -> None:
        conn = connect(redis_server)
        await conn.execute([("PING",)])
        queued = asyncio.ensure_future(conn.execute([("INCR", "unsent:c")]))
        await asyncio.sleep(0)  # the request is queued; its flush has not run yet
        await conn.aclose()
        with pytest.raises(ConnectionLost) as info:
            await queued
        assert info.value.sent is False
        check = connect(redis_server)
        try:
            assert await check.execute([("GET", "unsent:c")]) == [None]
        finally:
            await check.aclose()

    run(main)


def test_new_requests_wait_while_writing_is_paused(redis_server: RedisServer) -> None:
    """Requests made while the write buffer is full wait for it to drain, then go out whole."""

    async def main() -> tuple[int, int]:
        conn = connect(redis_server, timeout=30)
        value = os.urandom(4 << 20)
        try:
            await conn.execute([("PING",)])
            first = [
                asyncio.ensure_future(conn.execute([("SET", f"bp:{i}", value)])) for i in range(8)
            ]
            await asyncio.sleep(0)
            await asyncio.sleep(0)  # flushed: 32 MB in the transport's buffer
            paused = conn._protocol is not None and conn._protocol.paused  # pyright: ignore[reportPrivateUsage]
            later = [asyncio.ensure_future(conn.execute([("STRLEN", f"bp:{i}")])) for i in range(8)]
            assert await asyncio.gather(*first) == [[b"OK"]] * 8
            lengths = await asyncio.gather(*later)
            await conn.execute([("DEL", *[f"bp:{i}" for i in range(8)])])
            return int(paused), sum(reply == [len(value)] for reply in lengths)
        finally:
            await conn.aclose()

    paused, right = run(main)
    assert paused == 1
    assert right == 8


def test_a_connection_used_from_a_new_event_loop_reconnects(redis_server: RedisServer) -> None:
    """One RedisConnection used by two asyncio.run calls: the second connects again in its own
    loop, and closes the socket the first loop left open."""
    conn = connect(redis_server)

    async def ping() -> list[object]:
        return await conn.execute([("PING",)])

    assert asyncio.run(ping()) == [b"PONG"]
    assert asyncio.run(ping()) == [b"PONG"]
    assert conn.connects == 2

    async def close() -> None:
        await conn.aclose()

    asyncio.run(close())
