"""The fault-injecting proxy, against a real redis-server and memcached over raw sockets."""

from __future__ import annotations

import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest

from tests.proxy import FaultProxy
from tests.servers import MemcachedServer, RedisServer, closed_port


def _redis_target(server: RedisServer) -> tuple[str, int]:
    url = urllib.parse.urlsplit(server.url)
    if url.scheme != "redis" or url.hostname is None:
        pytest.skip(f"the proxy tests need a redis:// URL over TCP, not {server.url}")
    return url.hostname, url.port or 6379


def _memcached_target(server: MemcachedServer) -> tuple[str, int]:
    host, _, port = server.servers[0].rpartition(":")
    return host.strip("[]"), int(port)


@pytest.fixture
def redis_proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    """A proxy in front of this session's Redis server."""
    with FaultProxy(*_redis_target(redis_server)) as proxy:
        yield proxy


@pytest.fixture
def memcached_proxy(memcached_server: MemcachedServer) -> Iterator[FaultProxy]:
    """A proxy in front of this session's memcached."""
    with FaultProxy(*_memcached_target(memcached_server)) as proxy:
        yield proxy


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    """A raw client socket through ``proxy``."""
    return socket.create_connection((proxy.host, proxy.port), timeout=timeout)


def command(*parts: bytes | str) -> bytes:
    """One Redis command in RESP."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from ``sock``; fails the test at end of stream."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"stream ended after {len(data)} of {size} bytes: {data!r}"
        data += chunk
    return data


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until the other side closes it (FIN)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def direct(target: tuple[str, int], request: bytes, size: int) -> bytes:
    """Send ``request`` straight to the server (not through the proxy); read ``size`` bytes."""
    with socket.create_connection(target, timeout=2.0) as sock:
        sock.sendall(request)
        return read_exactly(sock, size)


def key() -> str:
    return f"proxy-test-{uuid.uuid4().hex}"


def proxy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("proxy-")]


def test_pass_forwards_both_ways(redis_proxy: FaultProxy) -> None:
    """In pass mode commands and replies, large ones too, go through unchanged."""
    name, value = key(), b"x" * 3_000_000
    with connect(redis_proxy) as sock:
        sock.sendall(command("PING"))
        assert read_exactly(sock, 7) == b"+PONG\r\n"
        sock.sendall(command("SET", name, value) + command("GET", name))
        expected = b"+OK\r\n$%d\r\n%s\r\n" % (len(value), value)
        assert read_exactly(sock, len(expected)) == expected
        sock.sendall(command("DEL", name))
        assert read_exactly(sock, 4) == b":1\r\n"
    assert redis_proxy.bytes_to_client >= len(value)
    assert redis_proxy.address == f"127.0.0.1:{redis_proxy.port}"


def test_drop_replies_applies_the_command_but_loses_the_reply(
    redis_server: RedisServer, redis_proxy: FaultProxy
) -> None:
    """The server runs the command; the client (already connected) waits in vain."""
    name = key()
    with connect(redis_proxy, timeout=0.3) as sock:
        sock.sendall(command("PING"))
        assert read_exactly(sock, 7) == b"+PONG\r\n"
        redis_proxy.drop_replies()
        sock.sendall(command("SET", name, "v"))
        with pytest.raises(TimeoutError):
            sock.recv(1)
    target = _redis_target(redis_server)
    assert direct(target, command("EXISTS", name), 4) == b":1\r\n"
    redis_proxy.pass_through()
    with connect(redis_proxy) as sock:
        sock.sendall(command("DEL", name))
        assert read_exactly(sock, 4) == b":1\r\n"


def test_cut_replies_after_keeps_the_first_replies_of_a_pipeline(
    redis_server: RedisServer, redis_proxy: FaultProxy
) -> None:
    """A pipeline of three INCRs: two replies arrive, then the connection closes; all ran."""
    name = key()
    with connect(redis_proxy) as sock:
        sock.sendall(command("PING"))
        assert read_exactly(sock, 7) == b"+PONG\r\n"
        redis_proxy.cut_replies_after(8)  # counted from here: ":1\r\n:2\r\n"
        sock.sendall(command("INCR", name) * 3)
        assert read_until_closed(sock) == b":1\r\n:2\r\n"
    assert redis_proxy.mode == "cut_replies_after"
    target = _redis_target(redis_server)
    assert direct(target, command("GET", name), 7) == b"$1\r\n3\r\n"
    with connect(redis_proxy) as sock:  # a new connection gets its own 8 bytes
        sock.sendall(command("INCR", name) * 3)
        assert read_until_closed(sock) == b":4\r\n:5\r\n"
    assert direct(target, command("DEL", name), 4) == b":1\r\n"


def test_reset_resets_on_send_and_forwards_nothing(
    redis_server: RedisServer, redis_proxy: FaultProxy
) -> None:
    """A connection open before the switch is reset when it next sends; the command is lost."""
    name = key()
    target = _redis_target(redis_server)
    with connect(redis_proxy) as old:
        old.sendall(command("PING"))
        assert read_exactly(old, 7) == b"+PONG\r\n"
        redis_proxy.reset()
        old.sendall(command("SET", name, "v"))
        with pytest.raises(ConnectionResetError):
            old.recv(1)
    with connect(redis_proxy) as new:  # new connections are accepted, then reset too
        new.sendall(command("SET", name, "v"))
        with pytest.raises(ConnectionResetError):
            new.recv(1)
    assert direct(target, command("EXISTS", name), 4) == b":0\r\n"
    redis_proxy.pass_through()
    with connect(redis_proxy) as sock:
        sock.sendall(command("PING"))
        assert read_exactly(sock, 7) == b"+PONG\r\n"


def test_refuse_closes_the_port_and_pass_reopens_it(redis_proxy: FaultProxy) -> None:
    """refuse resets open connections and refuses new ones; pass listens on the same port."""
    port = redis_proxy.port
    with connect(redis_proxy) as old:
        old.sendall(command("PING"))
        assert read_exactly(old, 7) == b"+PONG\r\n"
        redis_proxy.refuse()
        with pytest.raises(ConnectionResetError):
            old.recv(1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    redis_proxy.pass_through()
    assert redis_proxy.port == port
    with connect(redis_proxy) as sock:
        sock.sendall(command("PING"))
        assert read_exactly(sock, 7) == b"+PONG\r\n"


def test_memcached_through_every_mode(
    memcached_server: MemcachedServer, memcached_proxy: FaultProxy
) -> None:
    """The modes work for memcached's text protocol too."""
    name = key()
    target = _memcached_target(memcached_server)
    with connect(memcached_proxy, timeout=0.3) as sock:
        sock.sendall(f"set {name} 0 0 1\r\na\r\n".encode())
        assert read_exactly(sock, 8) == b"STORED\r\n"
        memcached_proxy.drop_replies()
        sock.sendall(f"append {name} 0 0 1\r\nb\r\n".encode())
        with pytest.raises(TimeoutError):
            sock.recv(1)
    value = f"VALUE {name} 0 2\r\nab\r\nEND\r\n".encode()
    assert direct(target, f"get {name}\r\n".encode(), len(value)) == value
    memcached_proxy.cut_replies_after(len("STORED\r\n"))
    with connect(memcached_proxy) as sock:
        sock.sendall(f"append {name} 0 0 1\r\nc\r\n".encode() * 2)
        assert read_until_closed(sock) == b"STORED\r\n"
    value = f"VALUE {name} 0 4\r\nabcc\r\nEND\r\n".encode()
    assert direct(target, f"get {name}\r\n".encode(), len(value)) == value
    memcached_proxy.reset()
    with connect(memcached_proxy) as sock:
        sock.sendall(f"delete {name}\r\n".encode())
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    memcached_proxy.pass_through()
    with connect(memcached_proxy) as sock:
        sock.sendall(f"delete {name}\r\n".encode())
        assert read_exactly(sock, 9) == b"DELETED\r\n"


def test_a_target_that_is_down_resets_the_client() -> None:
    """With nothing behind the proxy, a client is accepted and reset at once."""

    def ping(proxy: FaultProxy) -> bytes:
        # The reset can win the race with connect() itself, or come on the first read.
        with connect(proxy) as sock:
            sock.sendall(command("PING"))
            return sock.recv(1)

    with FaultProxy("127.0.0.1", closed_port()) as proxy, pytest.raises(ConnectionResetError):
        ping(proxy)


def test_the_server_closing_closes_the_client(redis_proxy: FaultProxy) -> None:
    """When the server ends a connection, the client sees it end too."""
    with connect(redis_proxy) as sock:
        sock.sendall(command("QUIT"))
        assert read_until_closed(sock) == b"+OK\r\n"
    deadline = time.monotonic() + 2
    while redis_proxy.connection_count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert redis_proxy.connection_count == 0


def test_close_stops_every_thread_and_refuses_after() -> None:
    """close() joins the threads it started, even with connections open, and is idempotent."""
    before = proxy_threads()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        proxy = FaultProxy("127.0.0.1", server.getsockname()[1])
        clients: list[socket.socket] = []
        accepted: list[socket.socket] = []
        try:
            for _ in range(3):
                clients.append(connect(proxy))
                accepted.append(server.accept()[0])
                clients[-1].sendall(b"?")  # both pumps run once a byte went each way
                assert read_exactly(accepted[-1], 1) == b"?"
                accepted[-1].sendall(b"!")
                assert read_exactly(clients[-1], 1) == b"!"
            assert len(proxy_threads()) == len(before) + 1 + 2 * len(clients)
            proxy.close()
            proxy.close()
            assert proxy_threads() == before
            for sock in clients:
                assert sock.recv(1) == b""
        finally:
            proxy.close()
            for sock in clients + accepted:
                sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1.0).close()
    with pytest.raises(ValueError, match="closed"):
        proxy.pass_through()


def test_bad_modes_are_refused(redis_proxy: FaultProxy) -> None:
    """An unknown mode or a negative byte count is a ValueError; the mode is unchanged."""
    with pytest.raises(ValueError, match="unknown proxy mode"):
        redis_proxy.set_mode("slow")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        redis_proxy.cut_replies_after(-1)
    assert redis_proxy.mode == "pass"
    assert "mode=pass" in repr(redis_proxy)
