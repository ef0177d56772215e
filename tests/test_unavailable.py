"""Every operation on a server that is down raises BackendUnavailable naming it, quickly."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import cacheorm as co
from tests.servers import closed_port

OPERATIONS: dict[str, Callable[[co.Backend], object]] = {
    "get": lambda b: b.get("k"),
    "get_many": lambda b: b.get_many(["k", "l"]),
    "set": lambda b: b.set("k", b"v"),
    "set ttl": lambda b: b.set("k", b"v", ttl=5),
    "set_many": lambda b: b.set_many([("k", b"v"), ("l", b"w")]),
    "set_many ttl": lambda b: b.set_many([("k", b"v"), ("l", b"w")], ttl=5),
    "add": lambda b: b.add("k", b"v"),
    "add ttl": lambda b: b.add("k", b"v", ttl=5),
    "add_many": lambda b: b.add_many([("k", b"v"), ("l", b"w")]),
    "replace": lambda b: b.replace("k", b"v"),
    "replace ttl": lambda b: b.replace("k", b"v", ttl=5),
    "replace_many": lambda b: b.replace_many([("k", b"v"), ("l", b"w")]),
    "delete": lambda b: b.delete("k"),
    "delete_many": lambda b: b.delete_many(["k", "l"]),
    "exists": lambda b: b.exists("k"),
    "incr": lambda b: b.incr("k"),
    "incr negative": lambda b: b.incr("k", -1),
    "gets": lambda b: b.gets("k"),
}


@pytest.fixture(params=["redis", "memcached"])
def down(request: pytest.FixtureRequest) -> Iterator[tuple[co.Backend, str]]:
    """A backend whose server address has nothing listening, and that address."""
    port = closed_port()
    backend: Any
    if request.param == "redis":
        pytest.importorskip("redis")
        backend = co.RedisBackend.from_url(f"redis://:pw-not-shown@127.0.0.1:{port}/0")
    else:
        pytest.importorskip("pymemcache")
        backend = co.MemcachedBackend.from_servers([f"127.0.0.1:{port}"], connect_timeout=2.0)
    yield backend, f"127.0.0.1:{port}"
    backend.close()


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_every_operation_raises_backend_unavailable(
    down: tuple[co.Backend, str], operation: str
) -> None:
    """The error names the server, not the password, chains the driver's, and comes fast."""
    backend, address = down
    start = time.monotonic()
    with pytest.raises(co.BackendUnavailable) as info:
        OPERATIONS[operation](backend)
    assert time.monotonic() - start < 5
    assert info.value.server == address
    assert address in str(info.value)
    assert "pw-not-shown" not in str(info.value)
    assert info.value.__cause__ is not None


def test_cas_on_a_down_server_raises_backend_unavailable(down: tuple[co.Backend, str]) -> None:
    """cas with a well-formed token reaches the server, and fails as unavailable."""
    backend, address = down
    token: object = "0" * 40 if isinstance(backend, co.RedisBackend) else b"1"
    with pytest.raises(co.BackendUnavailable, match=address.replace(".", r"\.")):
        backend.cas("k", b"v", token)
