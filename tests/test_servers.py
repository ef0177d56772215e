"""The test servers: environment overrides and the reason given when a binary is missing."""

from __future__ import annotations

import os
import shutil
import socket
import time
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


def _require(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (apt-get install {binary})")


def _answers(process: servers.ServerProcess, timeout: float = 0.3) -> bool:
    """Whether the server answers its ping within ``timeout`` (a paused one does not)."""
    try:
        with socket.create_connection((process.host, process.port), timeout=timeout) as sock:
            sock.sendall(process.ping)
            return sock.recv(64).startswith(process.pong)
    except OSError:
        return False


def test_memcached_processes_kill_pause_and_restart_on_the_same_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Own memcached processes ignore MEMCACHED_SERVERS and come back on their port."""
    _require("memcached")
    monkeypatch.setenv("MEMCACHED_SERVERS", "10.0.0.1:11211")
    pool = servers.start_memcached_processes(2)
    try:
        first, second = pool.processes
        assert pool.servers == [first.address, second.address]
        assert first.port != second.port
        first.pause()
        assert first.running
        assert not _answers(first)
        first.resume()
        assert _answers(first)
        first.kill()
        assert not first.running
        assert not _answers(first)
        assert _answers(second)
        port = first.port
        first.restart()
        assert first.port == port
        assert _answers(first)
        second.restart()  # a restart of a running server stops it first
        assert _answers(second)
    finally:
        pool.stop()
    assert not _answers(first)
    assert not _answers(second)


def test_redis_process_restarts_with_its_workdir(monkeypatch: pytest.MonkeyPatch) -> None:
    """An own redis-server ignores REDIS_URL; kill and restart keep its workdir, stop removes it."""
    _require("redis-server")
    monkeypatch.setenv("REDIS_URL", "redis://cache.example:6380/3")
    server = servers.start_redis_process()
    process = server.process
    assert process is not None
    assert process.workdir is not None
    try:
        assert server.url == f"redis://{process.address}/0"
        marker = os.path.join(process.workdir, "marker")
        with open(marker, "w") as file:
            file.write("kept")
        process.kill()
        assert os.path.exists(marker)
        assert not _answers(process)
        process.restart()
        assert os.path.exists(marker)
        assert _answers(process)
        assert server.unix_url is not None
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1.0)
            sock.connect(server.unix_url.removeprefix("unix://"))
            sock.sendall(b"PING\r\n")
            assert sock.recv(64) == b"+PONG\r\n"
        shutil.rmtree(process.workdir)
        process.pause()
        start = time.monotonic()
        process.restart()  # TERM reaches a paused process; a workdir that is gone is made again
        assert time.monotonic() - start < 4
        assert _answers(process)
    finally:
        server.stop()
    assert not os.path.exists(process.workdir)


def test_pause_and_kill_of_a_stopped_process_are_errors_or_no_ops() -> None:
    """pause/resume of a dead process say so; kill works on a paused one, twice too."""
    _require("memcached")
    pool = servers.start_memcached_processes(1)
    (process,) = pool.processes
    try:
        process.pause()
        process.kill()  # SIGKILL reaches a paused process
        assert not process.running
        process.kill()
        with pytest.raises(RuntimeError, match="not running"):
            process.pause()
        with pytest.raises(RuntimeError, match="not running"):
            process.resume()
    finally:
        pool.stop()


@pytest.mark.parametrize(
    ("start", "binary"),
    [
        (servers.start_redis_process, "redis-server"),
        (servers.start_memcached_processes, "memcached"),
    ],
)
def test_own_servers_need_the_binary_whatever_the_environment(
    monkeypatch: pytest.MonkeyPatch, start: Callable[[], object], binary: str
) -> None:
    """Tests that kill their server cannot use REDIS_URL & co.; the reason says so in one line."""
    monkeypatch.setenv("REDIS_URL", "redis://cache.example:6380/3")
    monkeypatch.setenv("MEMCACHED_SERVERS", "10.0.0.1:11211")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(servers.ServerMissing) as info:
        start()
    reason = str(info.value)
    assert "\n" not in reason
    assert f"apt-get install {binary}" in reason
    assert "its own" in reason


def test_memcached_pool_servers_lists_an_existing_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """MEMCACHED_POOL_SERVERS names the pool; MEMCACHED_SERVERS does not apply to it."""
    monkeypatch.setenv("MEMCACHED_SERVERS", "10.0.0.9:11211")
    monkeypatch.setenv("MEMCACHED_POOL_SERVERS", "10.0.0.1:11211,10.0.0.2:11211, 10.0.0.3:11211")
    pool = servers.start_memcached_pool()
    assert pool.servers == ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"]
    assert pool.processes == []
    monkeypatch.delenv("MEMCACHED_POOL_SERVERS")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(servers.ServerMissing, match="MEMCACHED_POOL_SERVERS"):
        servers.start_memcached_pool()


def test_redis_cluster_nodes_points_at_an_existing_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """REDIS_CLUSTER_NODES lists the startup nodes; nothing is started."""
    monkeypatch.setenv("REDIS_CLUSTER_NODES", "10.0.0.1:7000, 10.0.0.2:7001,")
    cluster = servers.start_redis_cluster()
    assert cluster.startup_nodes == ["10.0.0.1:7000", "10.0.0.2:7001"]
    assert cluster.nodes == []
    cluster.stop()  # nothing to stop


@pytest.mark.parametrize(
    ("missing", "package"), [("redis-server", "redis-server"), ("redis-cli", "redis-tools")]
)
def test_a_cluster_without_redis_binaries_gives_a_one_line_reason(
    monkeypatch: pytest.MonkeyPatch, missing: str, package: str
) -> None:
    """Without redis-server or redis-cli the reason names the package and REDIS_CLUSTER_NODES."""
    monkeypatch.delenv("REDIS_CLUSTER_NODES", raising=False)
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == missing else which(name))
    with pytest.raises(servers.ServerMissing) as info:
        servers.start_redis_cluster()
    reason = str(info.value)
    assert "\n" not in reason
    assert f"{missing} is not installed (apt-get install {package})" in reason
    assert "REDIS_CLUSTER_NODES" in reason


def test_a_cluster_needs_three_masters(monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-cli cannot create a cluster of fewer than 3 primaries; say so before starting any."""
    monkeypatch.delenv("REDIS_CLUSTER_NODES", raising=False)
    with pytest.raises(ValueError, match="at least 3 masters"):
        servers.start_redis_cluster(2)


def _cluster_command(address: str, request: bytes) -> bytes:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=2.0) as sock:
        sock.sendall(request)
        reply = b""
        while not reply.endswith(b"\r\n") or reply.count(b"\r\n") < 2:
            chunk = sock.recv(65536)
            assert chunk
            reply += chunk
        return reply


def test_the_session_cluster_covers_every_slot_and_a_node_rejoins_after_restart(
    redis_cluster: servers.RedisClusterServer,
) -> None:
    """Three primaries own all 16384 slots; a killed and restarted node rejoins (nodes.conf)."""
    if not redis_cluster.nodes:
        pytest.skip("REDIS_CLUSTER_NODES is set: not killing a node of someone else's cluster")
    assert len(redis_cluster.nodes) == 3
    assert redis_cluster.startup_nodes == [n.address for n in redis_cluster.nodes]
    for address in redis_cluster.startup_nodes:
        info = _cluster_command(address, b"CLUSTER INFO\r\n").decode()
        assert "cluster_state:ok" in info
        assert "cluster_slots_assigned:16384" in info
        assert "cluster_known_nodes:3" in info
        assert "cluster_size:3" in info
    node = redis_cluster.nodes[1]
    assert node.workdir is not None
    assert os.path.exists(os.path.join(node.workdir, "nodes.conf"))
    node.kill()
    try:
        node.restart()
        start = time.monotonic()
        redis_cluster.wait_ok()
        took = time.monotonic() - start
        print(f"\nredis cluster: cluster_state:ok again {took:.2f}s after a node restarted")
    finally:
        if not node.running:
            node.restart()
        redis_cluster.wait_ok()
    info = _cluster_command(node.address, b"CLUSTER INFO\r\n").decode()
    assert "cluster_known_nodes:3" in info


def test_a_started_cluster_is_stopped_when_it_does_not_come_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If redis-cli fails, the nodes started for the cluster are stopped and the error says why."""
    _require("redis-server")
    monkeypatch.delenv("REDIS_CLUSTER_NODES", raising=False)
    started: list[servers.ServerProcess] = []
    launch = servers.ServerProcess.launch

    def record(self: servers.ServerProcess, *args: bytes | None) -> None:
        started.append(self)
        launch(self, *args)

    monkeypatch.setattr(servers.ServerProcess, "launch", record)
    monkeypatch.setattr(
        shutil,
        "which",
        lambda name: (
            "/bin/false"
            if name == "redis-cli"
            else "/usr/bin/redis-server"
            if name == "redis-server"
            else None
        ),
    )
    with pytest.raises(RuntimeError, match=r"redis-cli --cluster create .* failed \(exit 1\)"):
        servers.start_redis_cluster()
    assert len(started) == 3
    assert all(not p.running for p in started)
    assert all(p.workdir is not None and not os.path.exists(p.workdir) for p in started)
