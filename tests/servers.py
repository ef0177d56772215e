"""Real redis-server and memcached processes for the tests, on free loopback ports.

The test session starts one of each (lazily, on first use) and stops them at
the end. ``REDIS_URL`` / ``MEMCACHED_SERVERS`` point the session at existing
servers instead; the tests then flush the database they are given, so point
them at a spare one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

#: How long a freshly started server may take to accept connections.
START_TIMEOUT = 10.0


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
    """A server process this session started, and how to reach it."""

    name: str
    argv: list[str]
    host: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    workdir: str | None = None

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    def start(self, ping: bytes, pong: bytes) -> None:
        """Start the process and wait until it answers ``ping`` with ``pong``."""
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.workdir
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                raise RuntimeError(f"{self.name} exited at start ({self.argv}): {err.strip()}")
            if _ask(self.host, self.port, ping, pong):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on {self.address} in {START_TIMEOUT}s")

    def stop(self) -> None:
        """Stop the process (TERM, then KILL) and remove its work directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


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
class MemcachedServer:
    """How to reach the memcached server(s) of this session."""

    servers: list[str]
    processes: Sequence[ServerProcess]

    def stop(self) -> None:
        """Stop the servers this session started."""
        for process in self.processes:
            process.stop()


def _binary(name: str, env: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServerMissing(
            f"{name} is not installed (apt-get install {name}) and {env} is not set"
        )
    return path


def start_redis() -> RedisServer:
    """The Redis server of ``REDIS_URL``, or a new ``redis-server`` on a free port."""
    url = os.environ.get("REDIS_URL")
    if url:
        return RedisServer(url=url, unix_url=None, process=None)
    binary = _binary("redis-server", "REDIS_URL")
    last: Exception | None = None
    for _ in range(3):  # another process may take the free port before the server does
        workdir = tempfile.mkdtemp(prefix="cacheorm-redis-")
        sock = os.path.join(workdir, "redis.sock")
        port = free_port()
        server = ServerProcess(
            name="redis-server",
            argv=[
                binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--unixsocket", sock,
                "--unixsocketperm", "700",
                "--save", "",
                "--appendonly", "no",
                "--dir", workdir,
                "--daemonize", "no",
                "--loglevel", "warning",
            ],
            host="127.0.0.1",
            port=port,
            workdir=workdir,
        )  # fmt: skip
        try:
            server.start(b"PING\r\n", b"+PONG")
        except RuntimeError as exc:
            last = exc
            server.stop()
            continue
        return RedisServer(
            url=f"redis://{server.address}/0", unix_url=f"unix://{sock}", process=server
        )
    raise RuntimeError(f"could not start redis-server: {last}")


def start_memcached(count: int = 1) -> MemcachedServer:
    """The servers of ``MEMCACHED_SERVERS`` (comma-separated), or new ``memcached`` processes."""
    listed = os.environ.get("MEMCACHED_SERVERS")
    if listed:
        return MemcachedServer(
            servers=[s.strip() for s in listed.split(",") if s.strip()], processes=[]
        )
    binary = _binary("memcached", "MEMCACHED_SERVERS")
    processes: list[ServerProcess] = []
    try:
        for _ in range(count):
            processes.append(start_one_memcached(binary))
    except BaseException:
        for process in processes:
            process.stop()
        raise
    return MemcachedServer(servers=[p.address for p in processes], processes=processes)


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
        server = ServerProcess(name="memcached", argv=argv, host="127.0.0.1", port=use)
        try:
            server.start(b"version\r\n", b"VERSION")
        except RuntimeError as exc:
            last = exc
            server.stop()
            continue
        return server
    raise RuntimeError(f"could not start memcached {list(extra)}: {last}")


def closed_port() -> int:
    """A loopback port with nothing listening, for "server unavailable" tests."""
    return free_port()
