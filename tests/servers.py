"""Real redis-server and memcached processes for the tests, on free loopback ports.

The test session starts one of each (lazily, on first use) and stops them at
the end. ``REDIS_URL`` / ``MEMCACHED_SERVERS`` / ``REDIS_CLUSTER_NODES`` point
the session at existing servers instead; the tests then flush the database they
are given, so point them at a spare one.

Fault tests start servers of their own (:func:`start_redis_process`,
:func:`start_memcached_processes`) whatever the environment says, so that they
can kill, pause and restart them on the same port (:class:`ServerProcess`).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

#: How long a freshly started server may take to accept connections.
START_TIMEOUT = 10.0
#: ``cluster-node-timeout`` of the Redis cluster nodes started here, in milliseconds.
CLUSTER_NODE_TIMEOUT_MS = 2000
#: How long a new Redis cluster may take to reach ``cluster_state:ok``.
CLUSTER_TIMEOUT = 15.0


class ServerMissing(Exception):
    """The server binary is not installed; the message is the skip reason."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ask(host: str, port: int, request: bytes, expect: bytes) -> bool:
    """Send ``request`` and report whether the reply starts with ``expect``."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(request)
            return sock.recv(64).startswith(expect)
    except OSError:
        return False


@dataclasses.dataclass
class ServerProcess:
    """A server process this session started, and how to reach it.

    ``kill``, ``pause``/``resume`` and ``restart`` let a test take the server
    away and bring it back on the same port with the same arguments.
    """

    name: str
    argv: list[str]
    host: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    workdir: str | None = None
    #: The request that shows the server is up, and the start of its answer.
    ping: bytes = b""
    pong: bytes = b""
    #: Stop with SIGTERM (and wait); False stops with SIGKILL, for servers that
    #: keep nothing on disk and are slow to exit (memcached takes ~1 s on TERM).
    graceful: bool = True

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive (a paused process is alive)."""
        return self.process is not None and self.process.poll() is None

    def start(self, ping: bytes | None = None, pong: bytes | None = None) -> None:
        """Start the process and wait until it answers ``ping`` with ``pong``.

        Args:
            ping: the request to send; the one of the previous start when None.
            pong: the expected start of the answer; likewise.

        Raises:
            RuntimeError: the process exited, or did not answer in ``START_TIMEOUT``.
        """
        self.launch(ping, pong)
        self.wait_ready()

    def launch(self, ping: bytes | None = None, pong: bytes | None = None) -> None:
        """Start the process without waiting for it; :meth:`wait_ready` waits."""
        if ping is not None:
            self.ping = ping
        if pong is not None:
            self.pong = pong
        if not self.ping or not self.pong:
            raise ValueError(f"{self.name}: start() needs a ping and a pong the first time")
        if self.workdir is not None:
            os.makedirs(self.workdir, exist_ok=True)
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.workdir
        )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the launched process answers; stop it and raise if it does not."""
        process = self.process
        if process is None:
            raise RuntimeError(f"{self.name} on {self.address} was not started")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                self._end()
                raise RuntimeError(f"{self.name} exited at start ({self.argv}): {err.strip()}")
            if _ask(self.host, self.port, self.ping, self.pong):
                return
            time.sleep(0.01)
        self._end()
        raise RuntimeError(f"{self.name} did not answer on {self.address} in {timeout}s")

    def kill(self) -> None:
        """SIGKILL the process and reap it; the port is free after, the workdir is kept."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        self._end()

    def pause(self) -> None:
        """SIGSTOP the process and wait until it is stopped: it accepts, but never answers."""
        process = self._alive("pause")
        process.send_signal(signal.SIGSTOP)
        _wait_for_state(process.pid, stopped=True)

    def resume(self) -> None:
        """SIGCONT a paused process; it then answers what it was sent meanwhile."""
        process = self._alive("resume")
        process.send_signal(signal.SIGCONT)
        _wait_for_state(process.pid, stopped=False)

    def restart(self) -> None:
        """Stop the process (as :meth:`stop` does) if it runs, then start it on the same port.

        The work directory is kept (and recreated if it is gone), so a Redis
        cluster node finds its ``nodes.conf`` again. The port may be held
        briefly by another process; starting is tried for ``START_TIMEOUT``.

        Raises:
            RuntimeError: the server did not come back.
        """
        self._end()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.launch()
            try:
                self.wait_ready(max(0.1, deadline - time.monotonic()))
            except RuntimeError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
                continue
            return

    def stop(self) -> None:
        """Stop the process (TERM, then KILL) and remove its work directory."""
        self._end()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _alive(self, action: str) -> subprocess.Popen[bytes]:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"cannot {action} {self.name} on {self.address}: it is not running")
        return self.process

    def _end(self) -> None:
        """Stop the process if it runs (resuming it first if paused) and reap it."""
        process = self.process
        if process is not None and process.poll() is None and not self.graceful:
            process.kill()
        elif process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a stopped process ignores TERM until resumed
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
        if process is not None:
            process.wait(5)
            if process.stderr is not None:
                process.stderr.close()
        self.process = None


def _wait_for_state(pid: int, *, stopped: bool, timeout: float = 5.0) -> None:
    """Wait until ``pid`` is (or is no longer) stopped by a signal; Linux's /proc only."""
    path = f"/proc/{pid}/stat"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as stat:
                state = stat.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return  # no /proc (or the process is gone): nothing better to wait on
        if (state in ("T", "t")) == stopped:
            return
        time.sleep(0.002)
    raise RuntimeError(f"process {pid} did not {'stop' if stopped else 'continue'} in {timeout}s")


@dataclasses.dataclass
class RedisServer:
    """How to reach the Redis server of this session."""

    url: str
    unix_url: str | None
    process: ServerProcess | None

    def stop(self) -> None:
        """Stop the server if this session started it."""
        if self.process is not None:
            self.process.stop()


@dataclasses.dataclass
class RedisClusterServer:
    """How to reach a Redis Cluster: nodes this session started, or ``REDIS_CLUSTER_NODES``.

    Attributes:
        nodes: the started nodes, all primaries (empty when from the environment).
        startup_nodes: ``host:port`` of every node to give a cluster client.
    """

    nodes: list[ServerProcess]
    startup_nodes: list[str]

    def wait_ok(self, timeout: float = CLUSTER_TIMEOUT) -> None:
        """Wait until every node says ``cluster_state:ok`` (after a node restarts, say).

        Raises:
            RuntimeError: some node did not, within ``timeout``; names them.
        """
        deadline = time.monotonic() + timeout
        while True:
            states = {address: _cluster_state(address) for address in self.startup_nodes}
            if all(state == "ok" for state in states.values()):
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"the Redis cluster did not reach cluster_state:ok in {timeout}s: {states}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the nodes this session started."""
        for node in self.nodes:
            node.stop()


@dataclasses.dataclass
class MemcachedServer:
    """How to reach the memcached server(s) of this session."""

    servers: list[str]
    processes: Sequence[ServerProcess]

    def stop(self) -> None:
        """Stop the servers this session started."""
        for process in self.processes:
            process.stop()


def _binary(name: str, env: str | None, package: str | None = None) -> str:
    """The path of ``name``; ServerMissing with a one-line reason if it is not installed."""
    path = shutil.which(name)
    if path is None:
        why = f"and {env} is not set" if env else "(this test starts, kills and restarts its own)"
        raise ServerMissing(f"{name} is not installed (apt-get install {package or name}) {why}")
    return path


def _redis_argv(binary: str, port: int, workdir: str, *extra: str) -> list[str]:
    return [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--unixsocket", os.path.join(workdir, "redis.sock"),
        "--unixsocketperm", "700",
        "--save", "",
        "--appendonly", "no",
        "--dir", workdir,
        "--daemonize", "no",
        "--loglevel", "warning",
        *extra,
    ]  # fmt: skip


def _redis_process(binary: str, port: int, *extra: str, cluster: bool = False) -> ServerProcess:
    workdir = tempfile.mkdtemp(prefix="cacheorm-redis-")
    if cluster:
        extra += (
            "--cluster-enabled", "yes",
            "--cluster-config-file", os.path.join(workdir, "nodes.conf"),
            "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
        )  # fmt: skip
    return ServerProcess(
        name="redis-server",
        argv=_redis_argv(binary, port, workdir, *extra),
        host="127.0.0.1",
        port=port,
        workdir=workdir,
        ping=b"PING\r\n",
        pong=b"+PONG",
    )


def start_one_redis(binary: str, *extra: str) -> ServerProcess:
    """A new redis-server on a free port, with ``extra`` options; its unix socket is
    ``<workdir>/redis.sock``."""
    last: Exception | None = None
    for _ in range(3):  # another process may take the free port before the server does
        server = _redis_process(binary, free_port(), *extra)
        try:
            server.start()
        except RuntimeError as exc:
            last = exc
            server.stop()
            continue
        return server
    raise RuntimeError(f"could not start redis-server: {last}")


def start_redis() -> RedisServer:
    """The Redis server of ``REDIS_URL``, or a new ``redis-server`` on a free port."""
    url = os.environ.get("REDIS_URL")
    if url:
        return RedisServer(url=url, unix_url=None, process=None)
    return _start_redis(_binary("redis-server", "REDIS_URL"))


def start_redis_process() -> RedisServer:
    """A new ``redis-server`` of the caller's own, whatever ``REDIS_URL`` says.

    For tests that kill, pause or restart the server (``.process``).

    Raises:
        ServerMissing: redis-server is not installed.
    """
    return _start_redis(_binary("redis-server", None))


def _start_redis(binary: str) -> RedisServer:
    server = start_one_redis(binary)
    assert server.workdir is not None
    sock = os.path.join(server.workdir, "redis.sock")
    return RedisServer(url=f"redis://{server.address}/0", unix_url=f"unix://{sock}", process=server)


def start_memcached(count: int = 1) -> MemcachedServer:
    """The servers of ``MEMCACHED_SERVERS`` (comma-separated), or new ``memcached`` processes."""
    listed = os.environ.get("MEMCACHED_SERVERS")
    if listed:
        return MemcachedServer(servers=_split(listed), processes=[])
    return _start_memcached(_binary("memcached", "MEMCACHED_SERVERS"), count)


def start_memcached_processes(count: int = 1) -> MemcachedServer:
    """``count`` new ``memcached`` processes of the caller's own, whatever the environment says.

    For tests that kill, pause or restart one of them (``.processes[i]``),
    which a shared pool must not suffer.

    Raises:
        ServerMissing: memcached is not installed.
    """
    return _start_memcached(_binary("memcached", None), count)


def start_memcached_pool(count: int = 3) -> MemcachedServer:
    """The servers of ``MEMCACHED_POOL_SERVERS`` (comma-separated), or ``count`` new ones.

    A pool for multi-server tests; ``MEMCACHED_SERVERS`` (the single server of
    the session) does not apply to it.

    Raises:
        ServerMissing: memcached is not installed and the variable is not set.
    """
    listed = os.environ.get("MEMCACHED_POOL_SERVERS")
    if listed:
        return MemcachedServer(servers=_split(listed), processes=[])
    return _start_memcached(_binary("memcached", "MEMCACHED_POOL_SERVERS"), count)


def _start_memcached(binary: str, count: int) -> MemcachedServer:
    processes: list[ServerProcess] = []
    try:
        for _ in range(count):
            processes.append(start_one_memcached(binary))
    except BaseException:
        for process in processes:
            process.stop()
        raise
    return MemcachedServer(servers=[p.address for p in processes], processes=processes)


def _split(listed: str) -> list[str]:
    return [s.strip() for s in listed.split(",") if s.strip()]


def start_one_memcached(
    binary: str, *extra: str, port: int | None = None, threads: int = 2
) -> ServerProcess:
    """A new memcached on ``port`` (a free one if None), with ``extra`` options."""
    last: Exception | None = None
    for _ in range(3):
        use = free_port() if port is None else port
        argv = [binary, "-l", "127.0.0.1", "-p", str(use), "-U", "0", "-m", "64"]
        argv += ["-t", str(threads), *extra]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            argv += ["-u", "root"]  # memcached refuses to run as root without -u
        server = ServerProcess(
            name="memcached",
            argv=argv,
            host="127.0.0.1",
            port=use,
            ping=b"version\r\n",
            pong=b"VERSION",
            graceful=False,
        )
        try:
            server.start()
        except RuntimeError as exc:
            last = exc
            server.stop()
            continue
        return server
    raise RuntimeError(f"could not start memcached {list(extra)}: {last}")


def start_redis_cluster(masters: int = 3) -> RedisClusterServer:
    """The cluster of ``REDIS_CLUSTER_NODES``, or ``masters`` new primaries joined by redis-cli.

    Each node is a ``redis-server --cluster-enabled yes`` with its own work
    directory (holding ``nodes.conf``, so a node restarted with
    :meth:`ServerProcess.restart` rejoins), on a free port whose cluster bus
    port (``port + 10000``) is free too. There are no replicas.

    Raises:
        ServerMissing: redis-server or redis-cli is not installed.
        ValueError: fewer than 3 masters (redis-cli cannot create such a cluster).
        RuntimeError: the nodes did not start, join or reach ``cluster_state:ok``.
    """
    listed = os.environ.get("REDIS_CLUSTER_NODES")
    if listed:
        return RedisClusterServer(nodes=[], startup_nodes=_split(listed))
    if masters < 3:
        raise ValueError(f"redis-cli --cluster create needs at least 3 masters, not {masters}")
    server = _binary("redis-server", "REDIS_CLUSTER_NODES")
    cli = _binary("redis-cli", "REDIS_CLUSTER_NODES", package="redis-tools")
    last: Exception | None = None
    for _ in range(3):  # another process may take a free port before a node does
        nodes = [_redis_process(server, port, cluster=True) for port in _cluster_ports(masters)]
        try:
            for node in nodes:
                node.launch()
            for node in nodes:
                node.wait_ready()
        except RuntimeError as exc:
            last = exc
            for node in nodes:
                node.stop()
            continue
        cluster = RedisClusterServer(nodes=nodes, startup_nodes=[n.address for n in nodes])
        try:
            _create_cluster(cli, cluster.startup_nodes)
            cluster.wait_ok()
        except BaseException:
            cluster.stop()
            raise
        return cluster
    raise RuntimeError(f"could not start {masters} redis-server cluster nodes: {last}")


def _cluster_ports(count: int) -> list[int]:
    """``count`` distinct ports below the ephemeral range whose ``port + 10000`` is free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(10000, 30000)
        if port in ports or port + 10000 in ports or port - 10000 in ports:
            continue
        if _bindable(port) and _bindable(port + 10000):
            ports.append(port)
    return ports


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _create_cluster(cli: str, addresses: list[str]) -> None:
    argv = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=CLUSTER_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"redis-cli --cluster create took over {CLUSTER_TIMEOUT}s") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()
        raise RuntimeError(
            f"redis-cli --cluster create {' '.join(addresses)} failed "
            f"(exit {done.returncode}): {' | '.join(output[-5:])}"
        )


def _cluster_state(address: str) -> str:
    """The ``cluster_state`` a node reports, or why it could not be asked."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0) as sock:
            sock.sendall(b"CLUSTER INFO\r\n")
            reply = b""
            while not (
                reply.endswith(b"\r\n") and (b"cluster_state:" in reply or reply[:1] == b"-")
            ):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:
        return f"unreachable ({exc})"
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("cluster_state:"):
            return line.partition(":")[2]
    return f"no cluster_state in {reply[:80]!r}"


def closed_port() -> int:
    """A loopback port with nothing listening, for "server unavailable" tests."""
    return free_port()
