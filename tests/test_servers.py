"""The test servers: environment overrides and the reason given when a binary is missing."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest

from tests import servers


def test_redis_url_points_the_session_at_an_existing_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With REDIS_URL set no redis-server is started and the URL is used as given."""
    monkeypatch.setenv("REDIS_URL", "redis://cache.example:6380/3")
    server = servers.start_redis()
    assert server.url == "redis://cache.example:6380/3"
    assert server.process is None
    assert server.unix_url is None
    server.stop()  # nothing to stop


def test_memcached_servers_lists_existing_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """MEMCACHED_SERVERS is a comma-separated list of addresses; none is started."""
    monkeypatch.setenv("MEMCACHED_SERVERS", " 10.0.0.1:11211, 10.0.0.2:11211 ,")
    server = servers.start_memcached()
    assert server.servers == ["10.0.0.1:11211", "10.0.0.2:11211"]
    assert server.processes == []


@pytest.mark.parametrize(
    ("start", "binary", "env"),
    [
        (servers.start_redis, "redis-server", "REDIS_URL"),
        (servers.start_memcached, "memcached", "MEMCACHED_SERVERS"),
    ],
)
def test_a_missing_binary_gives_a_one_line_reason(
    monkeypatch: pytest.MonkeyPatch, start: Callable[[], object], binary: str, env: str
) -> None:
    """Without the binary the skip reason is one line naming the package and the variable."""
    monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(servers.ServerMissing) as info:
        start()
    reason = str(info.value)
    assert "\n" not in reason
    assert f"apt-get install {binary}" in reason
    assert env in reason


def test_started_servers_answer_and_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A started memcached answers on its port and is gone after stop()."""
    monkeypatch.delenv("MEMCACHED_SERVERS", raising=False)
    if shutil.which("memcached") is None:
        pytest.skip("memcached is not installed (apt-get install memcached)")
    server = servers.start_memcached()
    (process,) = server.processes
    assert servers._ask(process.host, process.port, b"version\r\n", b"VERSION")
    server.stop()
    assert not servers._ask(process.host, process.port, b"version\r\n", b"VERSION")
