"""A Redis backend on redis-py: one command (one round trip) per operation, batches pipelined.

The same class works on one server (``redis.Redis``) and on a Redis Cluster
(``redis.cluster.RedisCluster``). redis-py is an optional dependency
(``pip install 'cacheorm[redis]'``); it is imported when a
:class:`RedisBackend` is built, so ``import cacheorm`` works without it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from cacheorm import _redis_ops as ops
from cacheorm._backend import CasToken, Closing
from cacheorm._checks import as_bytes as _as_bytes
from cacheorm._checks import as_items as _as_items
from cacheorm._checks import check_batch as _check_batch
from cacheorm._checks import check_delta as _check_delta
from cacheorm._checks import check_key as _check_key
from cacheorm._errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    MissingDependency,
    OutcomeUnknown,
    safe_repr,
)
from cacheorm._redis_ops import NOT_SENT, UNKNOWN, describe, key_list, px, type_name
from cacheorm._slots import by_slot
from cacheorm._ttl import BackendTTL

if TYPE_CHECKING:
    import redis
    import redis.cluster

    #: What :class:`RedisBackend` wraps.
    RedisClient = redis.Redis | redis.cluster.RedisCluster

__all__ = ["RedisBackend"]

#: How many MOVED / ASK / TRYAGAIN replies one cluster command follows before giving up.
_MAX_REDIRECTS = 5
#: How long to wait before resending after TRYAGAIN (a slot being migrated).
_TRYAGAIN_DELAY = 0.05
#: At most this many threads call cluster nodes at once.
_MAX_THREADS = 16


def _import_redis() -> Any:
    """The ``redis`` module, or MissingDependency naming the ``redis`` extra."""
    try:
        import redis
        import redis.cluster  # pyright: ignore[reportUnusedImport]  # loads redis.cluster
    except ImportError:
        raise MissingDependency("RedisBackend", "redis") from None
    return redis


def _server_address(client: Any) -> str:
    """``host:port`` or the unix socket path the client connects to; never a password."""
    return ops.address(getattr(getattr(client, "connection_pool", None), "connection_kwargs", None))


def _pack(commands: Sequence[tuple[Any, ...]], encoder: Any) -> list[bytes]:
    """``commands`` in the Redis protocol, as one buffer for ``send_packed_command``.

    What redis-py's ``pack_commands`` does, without its per-argument overhead
    (a 10,000-command cluster batch spent a third of its time there).
    """
    out: list[bytes] = []
    append = out.append
    encoding, errors = encoder.encoding, encoder.encoding_errors
    encode = encoder.encode
    for command in commands:
        append(b"*%d\r\n" % len(command))
        for arg in command:
            if type(arg) is str:
                arg = arg.encode(encoding, errors)
            elif type(arg) is not bytes:
                arg = encode(arg)
            append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return [b"".join(out)]


def _reader(connection: Any, response_error: type[BaseException]) -> Callable[[], Any]:
    """A function reading ``connection``'s next reply, an error reply as its exception.

    It calls the connection's protocol parser directly, as
    ``Connection.read_response`` does but without its per-reply wrapper (a
    tenth of a large pipeline's time), and fails the same way: a broken or
    timed-out socket disconnects and raises redis-py's ``ConnectionError`` /
    ``TimeoutError``.
    """
    parser = getattr(connection, "_parser", None)
    parse = getattr(parser, "read_response", None)
    if parse is None:  # pragma: no cover - every redis-py connection class has one

        def wrapped() -> Any:
            try:
                return connection.read_response()
            except response_error as exc:
                return exc

        return wrapped
    exceptions = _import_redis().exceptions

    def read() -> Any:
        try:
            reply = parse()
        except TimeoutError:  # the socket timed out (socket.timeout)
            connection.disconnect()
            raise exceptions.TimeoutError(f"Timeout reading from {_where(connection)}") from None
        except OSError as exc:
            connection.disconnect()
            raise exceptions.ConnectionError(
                f"Error while reading from {_where(connection)}: {exc.args}"
            ) from exc
        except BaseException:
            connection.disconnect()
            raise
        if isinstance(reply, BaseException) and not isinstance(reply, response_error):
            connection.disconnect()  # hiredis hands some connection errors back as values
            raise reply
        return reply

    return read


def _where(connection: Any) -> str:
    host, port = getattr(connection, "host", None), getattr(connection, "port", None)
    if host is not None:
        return f"{host}:{port}"
    return str(getattr(connection, "path", "the server"))


def _version(module: Any) -> tuple[int, int]:
    """``(major, minor)`` of a module's ``__version__`` (0 for parts that are not numbers)."""
    parts = [*str(getattr(module, "__version__", "")).split("."), "", ""][:2]
    numbers = [int("".join(itertools.takewhile(str.isdigit, part)) or 0) for part in parts]
    return numbers[0], numbers[1]


def _needs_command_name(get_connection: Callable[..., Any]) -> bool:
    """Whether ``pool.get_connection`` takes a command name (redis-py < 5.3 requires one)."""
    try:
        parameter = inspect.signature(get_connection).parameters.get("command_name")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is inspect.Parameter.empty


class _Server:
    """One Redis server (or cluster node): its address and how to borrow a connection.

    ``acquire`` returns a connected connection, or raises before anything was
    sent; ``release`` gives it back. Connections keep their pool's settings
    (timeouts, TLS, auth, the ``Retry`` cacheorm uses for idempotent batches).
    """

    __slots__ = ("acquire", "name", "pool", "release")

    def __init__(
        self,
        name: str,
        acquire: Callable[[], Any],
        release: Callable[[Any], None],
        pool: object = None,
    ) -> None:
        self.name = name
        self.acquire = acquire
        self.release = release
        self.pool = pool

    @classmethod
    def of_pool(cls, name: str, pool: Any) -> _Server:
        """The server behind a redis-py connection pool."""
        get_connection: Callable[..., Any] = pool.get_connection
        get: Callable[[], Any] = get_connection
        if _needs_command_name(get_connection):
            get = functools.partial(get_connection, "_")
        return cls(name, get, pool.release, pool)

    @classmethod
    def of_single_connection(cls, name: str, client: Any) -> _Server:
        """The one connection of a ``single_connection_client=True`` client, under its lock."""
        lock = getattr(client, "single_connection_lock", None) or threading.RLock()

        def acquire() -> Any:
            lock.acquire()
            connection = client.connection
            if connection is None:
                lock.release()
                raise _import_redis().exceptions.ConnectionError("the client is closed")
            return connection

        def release(_: Any) -> None:
            lock.release()

        return cls(name, acquire, release)


class _Broken(Exception):
    """A connection failed during an exchange of pipelined commands.

    Attributes:
        replies: the replies read before it failed, in command order.
        sent: how many commands (from the first) may have reached the server.
        cause: redis-py's exception.
        server: the server's address.
    """

    def __init__(self, replies: list[Any], sent: int, cause: BaseException, server: str) -> None:
        super().__init__(str(cause))
        self.replies = replies
        self.sent = sent
        self.cause = cause
        self.server = server


class RedisBackend(Closing):
    """Stores bytes in Redis (or anything speaking its protocol: Valkey, KeyDB, ...).

    Every single-key operation is one Redis command and one round trip; a
    batch is one command (MGET, MSET, DEL) or one non-transactional pipeline,
    so one round trip too. ``add`` and ``replace`` are ``SET NX`` / ``SET XX``
    with the expiry in the same command, ``incr`` is INCRBY (it keeps the
    key's TTL) and ``cas`` is a one-key Lua script (EVALSHA, and EVAL when the
    server does not have it). TTLs are sent as whole milliseconds, rounded up;
    a write without a TTL clears any TTL the key had.

    **Redis Cluster.** Given a ``redis.cluster.RedisCluster`` (or built with
    :meth:`from_cluster` / ``from_url(url, cluster=True)``), keys are routed
    by hash slot. A batch groups its keys by the node that owns their slot and
    sends one pipeline per node (an MGET, MSET or DEL per slot, or one command
    per key), calling the nodes concurrently from a small thread pool that
    :meth:`close` shuts down; results come back in input order. A MOVED or
    ASK reply means the command was not applied, so it is redirected (after
    refreshing the slot map for MOVED), at most five times, for every kind of
    write. redis-py's ``RedisCluster`` connects when it is built; the cluster
    backends that :meth:`from_url` and :meth:`from_cluster` make build it on
    their first operation instead, so building one never connects.

    **Keys of another type.** A key that holds a hash, list or other non-string
    Redis type is a :class:`~cacheorm.BackendError` naming the key and server
    on every read (``get``, ``get_many``, ``gets``, ``exists``) and on every
    conditional write (``add``, ``replace``, ``cas``, ``incr`` and the batch
    forms), which never replace it. ``set``, ``set_many`` and ``delete`` are
    unconditional, as in Redis: they replace or remove it. ``replace`` uses
    ``SET ... XX GET``, which needs Redis 6.2 or later.

    **Keeping the TTL.** ``replace``, ``replace_many`` and ``cas`` with
    ``ttl=KEEP_TTL`` send ``KEEPTTL``: the value keeps the key's remaining TTL.

    **Retries.** Connections, timeouts and TLS are the redis-py client's.

    * Idempotent operations keep the client's retry policy: ``get``,
      ``get_many``, ``set``, ``replace``, ``delete``, ``delete_many``,
      ``exists`` and ``gets`` run through the client, which retries a command
      on ``ConnectionError`` / ``TimeoutError`` according to its ``Retry``
      (``redis.Redis(host=...)`` retries by default in redis-py 6+, ten
      times in 8.x; a client built by ``from_url`` does not unless given
      ``retry=``; redis-py 5.x retries only the errors named in
      ``retry_on_error``). ``set_many`` and ``replace_many`` resend, on the
      connection's ``Retry``, only the commands whose replies were lost. On a
      cluster, ``RedisCluster``'s own ``retry`` applies to single-key
      operations (it refreshes the slot map between attempts); batches to a
      node are not retried there, since redis-py gives node connections no
      retries. A ``DEL`` that is retried after its reply was lost does not
      count the keys it already removed, so ``delete`` / ``delete_many`` may
      then undercount.
    * Operations that must not run twice are never resent: ``add`` and
      ``add_many`` (``SET NX``: a resend would report your own write as
      AlreadyExists), ``incr`` (INCRBY: a resend counts twice) and ``cas`` (a
      resend fails against your own write, and the caller would apply its
      update again). They run on a connection taken from the pool, outside
      the client's ``Retry``. If the connection fails before the command was
      sent, nothing happened and :class:`~cacheorm.BackendUnavailable` is
      raised; if it fails after, :class:`~cacheorm.OutcomeUnknown` says the
      write may or may not have been applied. Read the key to find out.
    * A batch write that fails part-way raises
      :class:`~cacheorm.BatchWriteError`: ``written`` (the server confirmed),
      ``not_written`` (certainly not applied: not sent, refused unapplied by
      the cluster, or an ``add_many`` / ``replace_many`` pair whose NX / XX
      condition did not hold) and ``unknown`` (sent, reply lost). Every key
      is in exactly one list. Pipelined replies are read one by one, so the
      ones that arrived count. One MSET is atomic: all its keys are written,
      or all unknown.

    To configure retries, give redis-py the policy:
    ``redis.Redis(host=..., retry=Retry(ExponentialBackoff(), 3),
    retry_on_error=[...], socket_timeout=2.0)``, or
    ``RedisBackend.from_url(url, retry=Retry(NoBackoff(), 0), socket_timeout=2.0)``
    (which defaults both socket timeouts to 5 s), or
    ``RedisBackend.from_cluster(nodes, retry=Retry(...))`` for a cluster.

    **Errors.** Every redis-py error is translated: connection failures,
    timeouts and cluster outages (``ClusterDownError``,
    ``RedisClusterException``) raise :class:`~cacheorm.BackendUnavailable`
    (or its subclasses above), anything else :class:`~cacheorm.BackendError`;
    all name the operation, the key and the server or node address (never a
    password) and chain the redis-py exception.

    Args:
        client: a ``redis.Redis`` or ``redis.cluster.RedisCluster`` client built
            with ``decode_responses=False`` (the default). :meth:`close` closes it.

    Raises:
        MissingDependency: redis-py is not installed.
        TypeError: ``client`` is not a redis-py client.
        ConfigurationError: the client decodes responses to str.
    """

    def __init__(self, client: RedisClient) -> None:
        redis_module = _import_redis()
        cluster_class = redis_module.cluster.RedisCluster
        if not isinstance(client, (redis_module.Redis, cluster_class)):
            raise TypeError(
                "RedisBackend needs a redis.Redis or redis.cluster.RedisCluster client, "
                f"not {type(client).__name__}; use RedisBackend.from_url(url) to build one "
                "from a URL"
            )
        self._setup(redis_module, is_cluster=isinstance(client, cluster_class))
        self._attach(client)

    def _setup(self, redis_module: Any, *, is_cluster: bool) -> None:
        """The state that does not depend on a connected client."""
        exceptions = redis_module.exceptions
        self._redis = redis_module
        self._is_cluster = is_cluster
        self._cluster: Any = None
        self._client: Any = None
        self._server = "<not connected>"
        self._password: str | None = None
        self._db: Any = 0
        self._main: _Server | None = None
        self._build: Callable[[], Any] | None = None
        self._connect_lock = threading.Lock()
        self._nodes: dict[str, _Server] = {}
        self._threads: ThreadPoolExecutor | None = None
        self._threads_lock = threading.Lock()
        self._closed = False
        # redis-py 5.x retries only the errors in a connection's retry_on_error.
        self._listed_only = _version(redis_module) < (6, 0)
        cluster_errors: tuple[type[BaseException], ...] = (
            exceptions.RedisClusterException,
            exceptions.ClusterError,
        )
        self._errors: tuple[type[BaseException], ...] = (
            exceptions.RedisError,
            OSError,
            UnicodeEncodeError,
            *cluster_errors,
        )
        self._unavailable: tuple[type[BaseException], ...] = (
            exceptions.ConnectionError,
            exceptions.TimeoutError,
            OSError,
            *cluster_errors,
        )
        self._response_error: type[BaseException] = exceptions.ResponseError
        self._no_script: type[BaseException] = exceptions.NoScriptError
        self._loading: type[BaseException] = exceptions.BusyLoadingError
        self._moved: type[BaseException] = exceptions.MovedError
        self._ask: type[BaseException] = exceptions.AskError
        self._try_again: type[BaseException] = exceptions.TryAgainError
        self._cluster_down: type[BaseException] = exceptions.ClusterDownError
        # How keys become bytes (the client's encoding), for hashing them to slots here.
        self._key_slot: Callable[[bytes], int] | None = None
        self._key_encoding: tuple[str, str] = ("utf-8", "strict")

    def _attach(self, client: Any, server: str | None = None) -> None:
        """Use ``client``; ``server`` names it (else its address, or its startup nodes).

        Raises:
            ConfigurationError: the client decodes responses to str.
        """
        if self._is_cluster:
            pool_kwargs = getattr(client.nodes_manager, "connection_kwargs", {}) or {}
            if server is None:
                startup = list(getattr(client.nodes_manager, "startup_nodes", {}) or {})
                server = f"cluster {','.join(startup) or '<no startup node>'}"
        else:
            pool_kwargs = getattr(client.connection_pool, "connection_kwargs", {})
            server = _server_address(client)
        if pool_kwargs.get("decode_responses"):
            raise ConfigurationError(
                "RedisBackend needs a redis client with decode_responses=False: values are bytes"
            )
        self._server = server
        password = pool_kwargs.get("password")
        self._password = str(password) if password else None
        self._db = pool_kwargs.get("db", 0)
        if self._is_cluster:
            encoder = getattr(client, "encoder", None)
            key_slot = getattr(getattr(self._redis, "crc", None), "key_slot", None)
            if encoder is not None and key_slot is not None:
                self._key_encoding = (encoder.encoding, encoder.encoding_errors)
                self._key_slot = key_slot
        elif getattr(client, "connection", None) is not None:
            self._main = _Server.of_single_connection(server, client)
        else:
            self._main = _Server.of_pool(server, client.connection_pool)
        self._client = client
        # Bound once: the hot paths then cost one attribute lookup per call.
        self._execute: Callable[..., Any] = client.execute_command
        if self._is_cluster:
            self._cluster = client  # last: a thread that sees it sees the rest

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, **kwargs: Any) -> RedisBackend:
        """A backend on a new client for ``url``, built by redis-py's ``from_url``.

        ``redis://[[user]:[password]@]host[:port][/db]``, ``rediss://...`` (TLS)
        and ``unix:///path/to/redis.sock[?db=N]`` are accepted (a cluster:
        ``redis://`` and ``rediss://``). ``socket_timeout`` and
        ``socket_connect_timeout`` default to 5 seconds; every other keyword
        (``retry``, ``max_connections``, ``ssl_*``, ...) goes to redis-py as is,
        so the retry policy is redis-py's for clients built from a URL unless
        ``retry=`` says otherwise.

        Nothing connects here, for a cluster too: redis-py's ``RedisCluster``
        connects when it is built, so with ``cluster=True`` it is built on the
        first operation (or the first read of :attr:`client`), and a cluster
        that cannot be reached raises :class:`~cacheorm.BackendUnavailable`
        from there, naming the node.

        Args:
            url: the server's URL; with ``cluster=True``, any node of the cluster.
            cluster: use a ``redis.cluster.RedisCluster``, which discovers
                the other nodes from this one.
            **kwargs: more ``redis.Redis`` / ``RedisCluster`` / connection pool options.

        Raises:
            MissingDependency: redis-py is not installed.
            ConfigurationError: ``url`` has another scheme or is not a URL redis-py
                can parse (the message names it, password masked), or
                ``decode_responses`` was asked for.
        """
        redis_module = _import_redis()
        schemes = ("redis", "rediss") if cluster else ("redis", "rediss", "unix")
        shown = ops.masked_url(url)
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if scheme not in schemes:
            accepted = ", ".join(f"{name}://" for name in schemes)
            raise ConfigurationError(
                f"RedisBackend.from_url({shown!r}{', cluster=True' if cluster else ''}): the "
                f"URL must start with one of {accepted}, e.g. 'redis://localhost:6379/0'"
            )
        if kwargs.get("decode_responses"):
            raise ConfigurationError(
                "RedisBackend needs a redis client with decode_responses=False: values are bytes"
            )
        kwargs.setdefault("socket_connect_timeout", 5.0)
        kwargs.setdefault("socket_timeout", 5.0)
        client: Any = None  # a RedisCluster is built lazily, below
        try:
            parsed = redis_module.connection.parse_url(url)  # no I/O; refuses a bad port
            if not cluster:
                client = redis_module.Redis.from_url(url, **kwargs)
        except ValueError as exc:
            detail = str(exc)
            password = ops.url_password(url)
            if password:
                detail = detail.replace(password, "***")
            raise ConfigurationError(
                f"RedisBackend.from_url({shown!r}): redis-py cannot use this URL: {detail}"
            ) from exc
        if cluster:
            host, port = parsed.get("host", "localhost"), parsed.get("port", 6379)
            return cls._lazy_cluster(
                lambda: redis_module.cluster.RedisCluster.from_url(url, **kwargs),
                f"cluster {ops.address({'host': host, 'port': port})}",
                parsed.get("password") or kwargs.get("password"),
            )
        try:
            return cls(client)
        except BaseException:
            client.close()
            raise

    @classmethod
    def from_cluster(cls, nodes: Sequence[str], **kwargs: Any) -> RedisBackend:
        """A backend on a new ``redis.cluster.RedisCluster`` that starts from ``nodes``.

        ``socket_timeout`` and ``socket_connect_timeout`` default to 5 seconds;
        every other keyword (``retry``, ``password``, ``ssl``, ``address_remap``,
        ...) goes to ``RedisCluster`` as is.

        Nothing connects here: the ``RedisCluster`` (which connects when it is
        built) is built on the first operation or the first read of
        :attr:`client`, and a cluster that cannot be reached raises
        :class:`~cacheorm.BackendUnavailable` from there, naming the nodes.

        Args:
            nodes: ``"host:port"`` of one or more cluster nodes.
            **kwargs: more ``RedisCluster`` options.

        Raises:
            MissingDependency: redis-py is not installed.
            ValueError: no node, or a node that is not ``host:port``.
            ConfigurationError: ``decode_responses`` was asked for.
        """
        redis_module = _import_redis()
        if isinstance(nodes, str):
            nodes = [nodes]
        startup: list[Any] = []  # redis.cluster.ClusterNode
        for node in nodes:
            host, sep, port = str(node).rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"cluster nodes are 'host:port', not {safe_repr(node)}")
            startup.append(redis_module.cluster.ClusterNode(host.strip("[]"), int(port)))
        if not startup:
            raise ValueError("from_cluster needs at least one 'host:port' node")
        if kwargs.get("decode_responses"):
            raise ConfigurationError(
                "RedisBackend needs a redis client with decode_responses=False: values are bytes"
            )
        kwargs.setdefault("socket_connect_timeout", 5.0)
        kwargs.setdefault("socket_timeout", 5.0)
        names = ",".join(ops.address({"host": node.host, "port": node.port}) for node in startup)
        return cls._lazy_cluster(
            lambda: redis_module.cluster.RedisCluster(startup_nodes=startup, **kwargs),
            f"cluster {names}",
            kwargs.get("password"),
        )

    @classmethod
    def _lazy_cluster(
        cls, build: Callable[[], Any], server: str, password: str | None
    ) -> RedisBackend:
        """A cluster backend whose client ``build`` makes on first use (it connects)."""
        self = cls.__new__(cls)
        self._setup(_import_redis(), is_cluster=True)
        self._server = server
        self._password = str(password) if password else None
        self._build = build
        self._execute = self._execute_connecting
        return self

    def _connected_cluster(self, op: str, keys: str | Sequence[str]) -> Any:
        """The RedisCluster client, built on first use (one thread builds it).

        Raises:
            BackendUnavailable: no startup node could be reached (this call
                fails; the next one tries again), or the backend is closed.
            ConfigurationError: the client decodes responses to str.
        """
        with self._connect_lock:
            if self._cluster is not None:
                return self._cluster
            if self._closed:
                raise BackendUnavailable(
                    f"this RedisBackend ({self._server}) is closed", server=self._server
                )
            build = self._build
            assert build is not None
            try:
                client = build()
            except self._errors as exc:
                what, key = describe(keys)
                detail = self._detail(exc).replace("\n", " ")
                raise BackendUnavailable(
                    f"redis {op} of {what} failed: {self._server} is unavailable: {detail}",
                    key=key,
                    server=self._server,
                ) from exc
            try:
                self._attach(client, self._server)
            except BaseException:
                client.close()
                raise
            return client

    def _execute_connecting(self, *args: Any, **options: Any) -> Any:
        """``execute_command`` before the cluster client exists: build it, then run."""
        keys = [str(arg) for arg in args[1:2]]
        return self._connected_cluster(str(args[0]), keys).execute_command(*args, **options)

    @property
    def client(self) -> RedisClient:
        """The redis-py client, for commands this backend does not offer.

        For a backend built by ``from_url(..., cluster=True)`` or
        :meth:`from_cluster`, reading it the first time builds (and connects)
        the ``RedisCluster``.

        Raises:
            BackendUnavailable: the cluster's client could not be built.
        """
        if self._client is None:
            return self._connected_cluster("connect", [])  # type: ignore[no-any-return]
        return self._client  # type: ignore[no-any-return]

    @property
    def server(self) -> str:
        """The server address, ``host:port`` or a unix socket path; for a cluster,
        ``"cluster "`` and the startup nodes' ``host:port``, comma-separated."""
        return self._server

    # -- error translation -------------------------------------------------

    def _detail(self, exc: BaseException) -> str:
        """redis-py's message, with any password masked."""
        return ops.mask(str(exc) or type(exc).__name__, self._password)

    def _fail(
        self, op: str, keys: str | Sequence[str], exc: BaseException, server: str | None = None
    ) -> Exception:
        """The cacheorm exception for redis-py's ``exc`` during ``op`` on ``keys``."""
        detail = self._detail(exc)
        if server is None:
            server = self._node_of(exc, describe(keys)[1])
        if isinstance(exc, self._unavailable):  # ClusterDownError is a ClusterError
            return ops.unavailable(op, keys, detail, server, type(exc).__name__)
        if isinstance(exc, self._response_error):
            return ops.refused(op, keys, detail, server)
        return ops.failed(op, keys, detail, server)

    def _foreign(self, op: str, key: str, kind: str) -> BackendError:
        """BackendError: ``key`` holds a Redis ``kind`` (a hash, a list...), not a string."""
        return ops.foreign(op, key, kind, self._node_of(None, key))

    def _unknown(self, op: str, key: str, exc: BaseException, server: str) -> OutcomeUnknown:
        """OutcomeUnknown: ``op`` on ``key`` was sent to ``server`` and its reply lost."""
        return ops.unknown(op, key, self._detail(exc), server, type(exc).__name__)

    def _node_of(self, exc: BaseException | None, key: str | None) -> str:
        """The node a redis-py error concerns (cluster), or this backend's server."""
        if self._cluster is None:
            return self._server
        name = getattr(getattr(exc, "connection", None), "name", None)  # set by RedisCluster
        if isinstance(name, str):
            return name
        if key is not None:
            with contextlib.suppress(Exception):  # only for a message
                return str(self._cluster.get_node_from_key(key).name)
        return self._server

    # -- sending without redis-py's retries -------------------------------------

    def _exchange_one(self, server: _Server, op: str, key: str, args: tuple[Any, ...]) -> Any:
        """Send one command once on a pooled connection of ``server``; its raw reply.

        Raises:
            BackendUnavailable: the connection failed before the command was sent.
            OutcomeUnknown: it failed after, so the command may have run.
            redis.exceptions.ResponseError: the server's error reply (the
                connection stays usable).
        """
        try:
            connection = server.acquire()
        except self._errors as exc:
            raise self._fail(op, key, exc, server.name) from exc
        try:
            try:
                packed = connection.pack_command(*args)
                # A failed send never delivered the whole command (sendall stops
                # at the failure and redis-py closes the socket), so it did not run.
                connection.send_packed_command(packed)
            except self._errors as exc:
                raise self._fail(op, key, exc, server.name) from exc
            try:
                return connection.read_response()
            except self._response_error:
                raise
            except self._errors as exc:
                if isinstance(exc, self._loading):  # refused while loading: not run
                    raise self._fail(op, key, exc, server.name) from exc
                raise self._unknown(op, key, exc, server.name) from exc
        finally:
            server.release(connection)

    def _once(
        self, op: str, key: str, args: tuple[Any, ...], fallback: tuple[Any, ...] | None = None
    ) -> Any:
        """Run a non-idempotent command once (following cluster redirects); its raw reply.

        ``fallback`` is sent instead if the server answers NOSCRIPT (the
        script was not run, so sending EVAL cannot apply it twice).
        """
        server = self._main
        if server is None:
            return self._cluster_once(op, key, args, fallback)
        try:
            return self._exchange_one(server, op, key, args)
        except self._response_error as exc:
            if fallback is None or not isinstance(exc, self._no_script):
                raise self._fail(op, key, exc, server.name) from exc
        try:
            return self._exchange_one(server, op, key, fallback)
        except self._response_error as exc:
            raise self._fail(op, key, exc, server.name) from exc

    def _cluster_once(
        self, op: str, key: str, args: tuple[Any, ...], fallback: tuple[Any, ...] | None
    ) -> Any:
        """:meth:`_once` on a cluster: a batch of one command, to the key's node."""
        slots = self._slots(op, [key])
        outcome, failures = self._cluster_batch(op, [args], slots, idempotent=False)
        if fallback is not None and isinstance(outcome[0], self._no_script):
            outcome, failures = self._cluster_batch(op, [fallback], slots, idempotent=False)
        reply = outcome[0]
        if failures:
            server, exc = failures[0]
            if reply is UNKNOWN:
                raise self._unknown(op, key, exc, server) from exc
            raise self._fail(op, key, exc, server) from exc
        if isinstance(reply, BaseException):
            raise self._fail(op, key, reply) from reply
        return reply

    # -- pipelines ------------------------------------------------------------------

    def _exchange(
        self, server: _Server, commands: Sequence[tuple[Any, ...]], idempotent: bool
    ) -> list[Any]:
        """Send ``commands`` in one write and read their replies one by one.

        An error reply stands in the list as its ``ResponseError``. When
        ``idempotent``, a connection failure is retried on the connection's
        ``Retry``, resending only the commands whose replies were lost.

        Raises:
            _Broken: the connection failed; what was read and sent so far.
        """
        replies: list[Any] = []
        sent = 0
        try:
            connection = server.acquire()
        except self._errors as exc:
            raise _Broken(replies, 0, exc, server.name) from exc
        response_error = self._response_error
        listed_only = self._listed_only

        def fail(error: Exception) -> None:
            connection.disconnect()
            if listed_only and not isinstance(error, tuple(connection.retry_on_error or ())):
                raise error

        def attempt() -> None:
            nonlocal sent
            rest = commands[len(replies) :] if replies else commands
            packed = _pack(rest, connection.encoder)
            try:
                connection.send_packed_command(packed)
            except BaseException:
                if len(rest) > 1:  # the first commands may have arrived whole
                    sent = len(commands)
                raise
            sent = len(commands)
            read = _reader(connection, response_error)
            append = replies.append
            for _ in range(len(rest)):
                append(read())

        try:
            if idempotent:
                connection.retry.call_with_retry(attempt, fail)
            else:
                attempt()
        except self._errors as exc:
            raise _Broken(replies, sent, exc, server.name) from exc
        finally:
            server.release(connection)
        return replies

    def _batch_error(
        self,
        op: str,
        command_keys: Sequence[Sequence[str]],
        outcome: Sequence[Any],
        failures: Sequence[tuple[str, BaseException]],
        conditional: bool = False,
    ) -> Exception:
        """BatchWriteError for a write batch whose commands ended as ``outcome``."""
        shown = [(name, self._detail(exc)) for name, exc in failures]
        return ops.batch_error(op, command_keys, outcome, shown, self._server, conditional)

    def _write_batch(
        self,
        op: str,
        commands: list[tuple[Any, ...]],
        command_keys: Callable[[], Sequence[Sequence[str]]],
        idempotent: bool,
        conditional: bool = False,
    ) -> list[Any]:
        """Run a write pipeline on the one server; its replies, or BatchWriteError."""
        server = self._main
        assert server is not None
        try:
            replies = self._exchange(server, commands, idempotent)
        except _Broken as broken:
            cause = broken.cause
            if broken.sent == 0 and not isinstance(cause, self._unavailable):
                raise self._fail(op, [k for ks in command_keys() for k in ks], cause) from cause
            outcome = ops.outcome_after(broken.replies, broken.sent, len(commands))
            raise self._batch_error(
                op, command_keys(), outcome, [(broken.server, cause)], conditional
            ) from cause
        return replies

    def _first_error(self, op: str, replies: Sequence[Any], keys: Sequence[str]) -> None:
        """Raise the cacheorm error for the first error reply among ``replies``, if any."""
        for key, reply in zip(keys, replies, strict=True):
            if isinstance(reply, BaseException):
                raise self._fail(op, key, reply) from reply

    # -- cluster routing ------------------------------------------------------------

    def _pool_server(self, node: Any) -> _Server:
        """The _Server of a cluster node (cached while its pool stays the same)."""
        client = node.redis_connection
        if client is None:
            client = self._cluster.get_redis_connection(node)
        pool = client.connection_pool
        server = self._nodes.get(node.name)
        if server is None or server.pool is not pool:
            server = _Server.of_pool(node.name, pool)
            self._nodes[node.name] = server
        return server

    def _slot_server(self, slot: int) -> _Server:
        """The primary node that owns ``slot``, per the client's slot map."""
        return self._pool_server(self._cluster.nodes_manager.get_node_from_slot(slot))

    def _node_server(self, address: tuple[str, int]) -> _Server:
        """The node at ``address`` (an ASK target), refreshing the slot map if it is new."""
        host, port = address
        remap = getattr(self._cluster.nodes_manager, "remap_host_port", None)
        if remap is not None:  # the client's address_remap, as for CLUSTER SLOTS replies
            host, port = remap(host, port)
        node = self._cluster.get_node(host=host, port=port)
        if node is None:
            self._refresh_slots()
            node = self._cluster.get_node(host=host, port=port)
        if node is None:
            raise _import_redis().exceptions.ConnectionError(
                f"the cluster redirected to {host}:{port}, a node it does not list"
            )
        return self._pool_server(node)

    def _refresh_slots(self) -> None:
        """Reload the slot map from the cluster (CLUSTER SLOTS)."""
        with contextlib.suppress(*self._errors):  # the next command reports an outage
            self._cluster.nodes_manager.initialize()

    def _thread_pool(self) -> ThreadPoolExecutor:
        """The threads that call cluster nodes concurrently, started on first use."""
        with self._threads_lock:
            if self._closed:
                raise BackendUnavailable(
                    f"this RedisBackend ({self._server}) is closed", server=self._server
                )
            if self._threads is None:
                self._threads = ThreadPoolExecutor(
                    max_workers=_MAX_THREADS, thread_name_prefix="cacheorm-redis-cluster"
                )
            return self._threads

    def _try_exchange(
        self, server: _Server, commands: list[tuple[Any, ...]], idempotent: bool
    ) -> list[Any] | _Broken:
        """:meth:`_exchange`, returning the failure instead of raising it."""
        try:
            return self._exchange(server, commands, idempotent)
        except _Broken as broken:
            return broken

    def _cluster_batch(
        self, op: str, commands: list[tuple[Any, ...]], slots: list[int], idempotent: bool
    ) -> tuple[list[Any], list[tuple[str, BaseException]]]:
        """Run ``commands`` (``slots[i]`` is command i's slot): one pipeline per node, at once.

        Returns every command's reply in order (an error reply as its
        exception; UNKNOWN / NOT_SENT where the connection failed) and the
        ``(node, error)`` failures. MOVED and ASK replies are redirected.
        """
        count = len(commands)
        outcome: list[Any] = [NOT_SENT] * count
        failures: list[tuple[str, BaseException]] = []
        pending: list[int] = list(range(count))
        asks: dict[int, tuple[str, int]] = {}
        for round_ in range(_MAX_REDIRECTS + 1):
            groups: dict[tuple[str, bool], tuple[_Server, list[int]]] = {}
            # The client's slot map, read without its lock: a stale entry only
            # costs a MOVED redirect. Each node's _Server is looked up once.
            slot_map: dict[int, list[Any]] = getattr(self._cluster.nodes_manager, "slots_cache", {})
            by_node: dict[int, _Server] = {}
            for i in pending:
                target = asks.get(i)
                try:
                    if target:
                        server = self._node_server(target)
                    else:
                        owners = slot_map.get(slots[i])
                        if not owners:
                            server = self._slot_server(slots[i])  # raises SlotNotCoveredError
                        else:
                            found = by_node.get(id(owners[0]))
                            if found is None:
                                found = by_node[id(owners[0])] = self._pool_server(owners[0])
                            server = found
                except self._errors as exc:
                    failures.append((self._server, exc))
                    continue  # stays NOT_SENT
                group = groups.get((server.name, target is not None))
                if group is None:
                    group = groups[(server.name, target is not None)] = (server, [])
                group[1].append(i)
            jobs: list[tuple[_Server, list[tuple[Any, ...]], bool]] = []
            for (_, asking), (server, indices) in groups.items():
                if asking:  # ASKING goes right before each redirected command
                    batch = [c for i in indices for c in (("ASKING",), commands[i])]
                    jobs.append((server, batch, False))
                else:
                    jobs.append((server, [commands[i] for i in indices], idempotent))
            results = self._run_jobs(jobs)
            pending = []
            refresh = wait = False
            for ((_, asking), (server, indices)), result in zip(
                groups.items(), results, strict=True
            ):
                if isinstance(result, _Broken):
                    failures.append((result.server, result.cause))
                    replies = result.replies[1::2] if asking else result.replies
                    sent = len(indices) if result.sent else 0
                    for n, i in enumerate(indices):
                        if n < len(replies):
                            outcome[i] = replies[n]
                        else:
                            outcome[i] = UNKNOWN if n < sent else NOT_SENT
                    result = replies  # the replies that did arrive are still checked below
                elif asking:
                    result = result[1::2]
                for i, reply in zip(indices, result, strict=False):
                    if not isinstance(reply, BaseException):  # the usual case, first
                        outcome[i] = reply
                        if asks:
                            asks.pop(i, None)
                        continue
                    if isinstance(reply, self._moved):
                        refresh = True
                    elif isinstance(reply, self._ask):
                        asks[i] = (str(reply.host), int(reply.port))  # type: ignore[attr-defined]
                    elif isinstance(reply, self._try_again):
                        wait = True
                    else:
                        asks.pop(i, None)
                        outcome[i] = reply
                        if isinstance(reply, self._cluster_down):
                            outcome[i] = NOT_SENT  # refused unapplied
                            failures.append((server.name, reply))
                        continue
                    outcome[i] = NOT_SENT
                    if isinstance(reply, self._moved):
                        asks.pop(i, None)
                    pending.append(i)
            if not pending:
                break
            if round_ == _MAX_REDIRECTS:
                failures.append(
                    (
                        self._server,
                        _import_redis().exceptions.ClusterError(
                            f"still redirected after {_MAX_REDIRECTS} redirections"
                        ),
                    )
                )
                break
            if refresh:
                self._refresh_slots()
            if wait:
                time.sleep(_TRYAGAIN_DELAY)
        if failures and any(isinstance(exc, self._unavailable) for _, exc in failures):
            self._refresh_slots()  # a failover may have moved slots to another node
        return outcome, failures

    def _run_jobs(
        self, jobs: list[tuple[_Server, list[tuple[Any, ...]], bool]]
    ) -> list[list[Any] | _Broken]:
        """Run each ``(server, commands, idempotent)`` exchange, the servers concurrently."""
        if len(jobs) <= 1:
            return [self._try_exchange(*job) for job in jobs]
        pool = self._thread_pool()
        futures = [pool.submit(self._try_exchange, *job) for job in jobs[1:]]
        first = self._try_exchange(*jobs[0])
        return [first, *(future.result() for future in futures)]

    def _slots(self, op: str, keys: Sequence[str]) -> list[int]:
        """Each key's hash slot."""
        cluster = self._cluster
        if cluster is None:  # a lazy cluster backend's first use
            cluster = self._connected_cluster(op, keys)
        key_slot = self._key_slot
        try:
            if key_slot is not None:  # keys are str: encode as the client would, hash
                return [key_slot(key.encode(*self._key_encoding)) for key in keys]
            keyslot = cluster.keyslot
            return [keyslot(key) for key in keys]
        except self._errors as exc:
            raise self._fail(op, keys, exc) from exc

    def _by_slot(self, op: str, keys: Sequence[str]) -> dict[int, list[int]]:
        """The indices of ``keys``, grouped by hash slot (first appearance order)."""
        return by_slot(self._slots(op, keys))

    def _cluster_failure(
        self,
        op: str,
        command_keys: Sequence[Sequence[str]],
        outcome: Sequence[Any],
        failures: Sequence[tuple[str, BaseException]],
        conditional: bool = False,
    ) -> None:
        """Raise for a cluster write batch with ``failures``, or for its first error reply."""
        if failures:
            raise self._batch_error(op, command_keys, outcome, failures, conditional) from failures[
                0
            ][1]
        for keys, reply in zip(command_keys, outcome, strict=True):
            if isinstance(reply, BaseException):
                raise self._fail(op, keys[0], reply) from reply

    # -- the Backend protocol ----------------------------------------------

    def get(self, key: str, /) -> bytes | None:
        """The value under ``key`` (GET), or None if absent or expired."""
        _check_key(key)
        try:
            value: bytes | None = self._execute("GET", key, keys=(key,))
        except self._errors as exc:
            raise self._fail("GET", key, exc) from exc
        return value

    def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        """The values under ``keys`` (one MGET; per node and slot on a cluster), in order."""
        keys = key_list(keys)
        if not keys:
            return []
        if self._is_cluster:
            return self._cluster_get_many(keys)
        try:
            values: list[bytes | None] = self._execute("MGET", *keys, keys=keys)
        except self._errors as exc:
            raise self._fail("MGET", keys, exc) from exc
        if None in values:
            self._foreign_misses([k for k, v in zip(keys, values, strict=True) if v is None])
        return values

    def _foreign_misses(self, keys: list[str]) -> None:
        """Raise BackendError if a key MGET answered nil for holds another Redis type.

        MGET answers nil both for an absent key and for a hash or list, so the
        misses of a batch get one EXISTS (per slot on a cluster): one more
        round trip, only for a batch with misses. Only if some miss exists
        (another type, or a value written since the MGET) are their types read.
        """
        keys = list(dict.fromkeys(keys))
        if not self._is_cluster:
            try:
                found: int = self._execute("EXISTS", *keys, keys=keys)
            except self._errors as exc:
                raise self._fail("EXISTS", keys, exc) from exc
        else:
            groups = list(self._by_slot("EXISTS", keys).items())
            commands = [("EXISTS", *[keys[i] for i in ix]) for _, ix in groups]
            replies = self._cluster_read("EXISTS", commands, [slot for slot, _ in groups], keys)
            found = sum(replies)
        if found:
            self._refuse_foreign("TYPE", keys)

    def _types(self, op: str, keys: list[str]) -> list[str]:
        """The Redis type of each key (TYPE, pipelined: one round trip per server)."""
        commands = [("TYPE", key) for key in keys]
        if self._is_cluster:
            replies = self._cluster_read(op, commands, self._slots(op, keys), keys)
        else:
            server = self._main
            assert server is not None
            try:
                replies = self._exchange(server, commands, idempotent=True)
            except _Broken as broken:
                raise self._fail(op, keys, broken.cause, broken.server) from broken.cause
            self._first_error(op, replies, keys)
        return [type_name(reply) for reply in replies]

    def _refuse_foreign(self, op: str, keys: list[str]) -> None:
        """Raise BackendError naming the first of ``keys`` that holds another Redis type."""
        ops.first_foreign(op, keys, self._types(op, keys), lambda key: self._node_of(None, key))

    def _cluster_read(
        self, op: str, commands: list[tuple[Any, ...]], slots: list[int], keys: list[str]
    ) -> list[Any]:
        """Run idempotent read ``commands`` on the cluster; their replies, or the error."""
        outcome, failures = self._cluster_batch(op, commands, slots, idempotent=True)
        if failures:
            name, exc = failures[0]
            raise self._fail(op, keys, exc, name) from exc
        for command, reply in zip(commands, outcome, strict=True):
            if isinstance(reply, BaseException):
                raise self._fail(op, command[1], reply) from reply
        return outcome

    def _cluster_get_many(self, keys: list[str]) -> list[bytes | None]:
        """get_many on a cluster: an MGET per slot, pipelined per node, nodes at once."""
        groups = list(self._by_slot("MGET", keys).items())
        # A slot with one key (most of them, in a big batch) gets a GET, whose
        # reply is cheaper to parse than a one-element MGET array.
        commands = [
            ("GET", keys[ix[0]]) if len(ix) == 1 else ("MGET", *[keys[i] for i in ix])
            for _, ix in groups
        ]
        outcome, failures = self._cluster_batch(
            "MGET", commands, [slot for slot, _ in groups], idempotent=True
        )
        if failures:
            name, exc = failures[0]
            raise self._fail("MGET", keys, exc, name) from exc
        values: list[bytes | None] = [None] * len(keys)
        for (_, indices), reply in zip(groups, outcome, strict=True):
            if isinstance(reply, BaseException):
                raise self._fail("MGET", keys[indices[0]], reply) from reply
            if len(indices) == 1:
                values[indices[0]] = reply
                continue
            for i, value in zip(indices, reply, strict=True):
                values[i] = value
        if None in values:
            self._foreign_misses([k for k, v in zip(keys, values, strict=True) if v is None])
        return values

    def set(self, key: str, value: bytes, /, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` (SET, with PX when ``ttl``), replacing any value and TTL.

        Raises:
            TypeError: ``value`` is not bytes, bytearray or memoryview.
            InvalidTTL: ``ttl`` is not positive, or too long for Redis.
        """
        data = _as_bytes(_check_key(key), value)
        command = ops.set_command(key, data, ttl)
        try:
            self._execute(*command)
        except self._errors as exc:
            raise self._fail("SET", key, exc) from exc

    def set_many(self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None) -> None:
        """Store every pair: one MSET, or with ``ttl`` one pipeline of ``SET PX``.

        On a cluster, an MSET per slot (or a ``SET PX`` per key), pipelined per
        node. Nothing is sent if a key or value has the wrong type or ``ttl``
        is invalid.

        Raises:
            BatchWriteError: the connection failed part-way; says which keys
                were written, which not, and which are unknown.
        """
        pairs = _as_items(items)
        ms = px(ttl)
        if not pairs:
            return
        if self._is_cluster:
            self._cluster_set_many(pairs, ms)
            return
        op, commands, command_keys = ops.set_many_commands(pairs, ms)
        replies = self._write_batch(op, commands, lambda: command_keys, idempotent=True)
        self._first_error(op, replies, [keys[0] for keys in command_keys])

    def _cluster_set_many(self, pairs: list[tuple[str, bytes]], px: int | None) -> None:
        """set_many on a cluster: MSET per slot, or SET PX per key; pipelined per node."""
        keys = [key for key, _ in pairs]
        commands: list[tuple[Any, ...]]
        if px is None:
            groups = list(self._by_slot("MSET", keys).items())
            commands = [
                ("MSET", *[part for i in indices for part in pairs[i]]) for _, indices in groups
            ]
            slots = [slot for slot, _ in groups]
            command_keys: list[list[str]] = [[keys[i] for i in ix] for _, ix in groups]
            op = "MSET"
        else:
            commands = [("SET", key, data, "PX", px) for key, data in pairs]
            slots = self._slots("SET", keys)
            command_keys = [[key] for key in keys]
            op = "SET"
        outcome, failures = self._cluster_batch(op, commands, slots, idempotent=True)
        self._cluster_failure(op, command_keys, outcome, failures)

    def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        """Store only if ``key`` is absent (``SET NX``, expiry included); True if stored.

        Never resent: see the class docstring.

        Raises:
            BackendUnavailable: the server could not be reached; nothing was written.
            OutcomeUnknown: the command was sent and its reply lost.
        """
        data = _as_bytes(_check_key(key), value)
        reply = self._once("SET NX", key, ops.add_command(key, data, ttl))
        if reply is not None:
            return True
        self._refused_add_check([key])
        return False

    def _refused_add_check(self, keys: list[str]) -> None:
        """After SET NX refused ``keys``: BackendError if one holds another Redis type.

        SET NX leaves a hash alone but answers as for any existing key; a TYPE
        (one more round trip, on the refused path only) tells them apart. If
        that read fails, the refusal stands: nothing was written either way.
        """
        with contextlib.suppress(BackendUnavailable):
            self._refuse_foreign("SET NX", keys)

    def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        """``add`` for each pair, in order, in one pipeline; a later pair sees earlier ones.

        Never resent, like ``add``.

        Raises:
            BatchWriteError: the connection failed part-way (see the class docstring).
        """
        pairs = _as_items(items)
        ms = px(ttl)
        return self._write_many("NX", pairs, () if ms is None else ("PX", ms), idempotent=False)

    def replace(self, key: str, value: bytes, /, ttl: BackendTTL = None) -> bool:
        """Store only if ``key`` holds a string value; True if stored.

        One ``SET key value XX GET`` with the expiry (``PX``, or ``KEEPTTL`` for
        ``ttl=KEEP_TTL``, which keeps the key's remaining TTL, or none) in the same
        command. ``GET`` makes Redis refuse, unapplied, a key holding another type
        (plain ``SET XX`` would replace a hash); it needs Redis 6.2 or later.

        Raises:
            BackendError: the key holds another Redis type (a hash, a list...).
        """
        data = _as_bytes(_check_key(key), value)
        expiry = ops.expiry(ttl)
        try:
            # get=True: redis-py's SET callback then hands back the old value as is,
            # instead of decoding it to compare it with "OK".
            previous = self._execute("SET", key, data, "XX", "GET", *expiry, get=True)
        except self._errors as exc:
            raise self._fail("SET XX", key, exc) from exc
        return previous is not None

    def replace_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: BackendTTL = None
    ) -> list[bool]:
        """``replace`` for each pair, in order, in one pipeline (``KEEP_TTL`` too).

        Raises:
            BatchWriteError: the connection failed part-way (see the class
                docstring), or a key holds another Redis type while other pairs
                were written.
            BackendError: a key holds another Redis type (nothing written).
        """
        pairs = _as_items(items)
        return self._write_many("XX", pairs, ("GET", *ops.expiry(ttl)), idempotent=True)

    def _write_many(
        self,
        condition: str,
        pairs: list[tuple[str, bytes]],
        options: tuple[Any, ...],
        idempotent: bool,
    ) -> list[bool]:
        """One pipeline of ``SET key value NX|XX [options]``; which pairs were stored.

        A nil reply is a refusal (NX / XX did not hold); with ``GET`` among the
        options, a replace answers the old value, also not nil.
        """
        if not pairs:
            return []
        op = f"SET {condition}"
        commands = ops.write_many_commands(condition, pairs, options)
        keys = [key for key, _ in pairs]
        if self._is_cluster:
            outcome, failures = self._cluster_batch(op, commands, self._slots(op, keys), idempotent)
            if failures:
                self._cluster_failure(op, [[key] for key in keys], outcome, failures, True)
            replies = outcome
        else:
            replies = self._write_batch(
                op, commands, lambda: [[key] for key, _ in pairs], idempotent, conditional=True
            )
        stored = ops.stored_of(op, keys, replies, lambda key, error: self._fail(op, key, error))
        if condition == "NX" and not all(stored):
            try:
                self._refused_add_check(ops.refused_keys(keys, stored))
            except BackendError as exc:
                raise ops.partly_written(op, keys, stored, exc) from None
        return stored

    def delete(self, key: str, /) -> bool:
        """Remove ``key`` (DEL); True if it existed."""
        _check_key(key)
        try:
            removed: int = self._execute("DEL", key)
        except self._errors as exc:
            raise self._fail("DEL", key, exc) from exc
        return removed > 0

    def delete_many(self, keys: Sequence[str], /) -> int:
        """Remove ``keys`` (one DEL; per node and slot on a cluster); the number that existed.

        Raises:
            BatchWriteError: on a cluster, a node failed part-way; ``written``
                then lists the keys confirmed removed (or absent).
        """
        keys = key_list(keys)
        if not keys:
            return 0
        if self._is_cluster:
            groups = list(self._by_slot("DEL", keys).items())
            commands = [("DEL", *[keys[i] for i in indices]) for _, indices in groups]
            outcome, failures = self._cluster_batch(
                "DEL", commands, [slot for slot, _ in groups], idempotent=True
            )
            command_keys = [[keys[i] for i in indices] for _, indices in groups]
            self._cluster_failure("DEL", command_keys, outcome, failures)
            return sum(int(reply) for reply in outcome)
        try:
            removed: int = self._execute("DEL", *keys)
        except self._errors as exc:
            raise self._fail("DEL", keys, exc) from exc
        return removed

    def exists(self, key: str, /) -> bool:
        """True if ``key`` holds a live value (TYPE: one command, like EXISTS).

        TYPE rather than EXISTS, so that a key of another Redis type is an
        error here as it is for ``get``, not a record that seems to exist.

        Raises:
            BackendError: the key holds another Redis type (a hash, a list...).
        """
        _check_key(key)
        try:
            kind = type_name(self._execute("TYPE", key, keys=(key,)))
        except self._errors as exc:
            raise self._fail("TYPE", key, exc) from exc
        found = ops.exists_of(kind)
        if found is None:
            raise self._foreign("TYPE", key, kind)
        return found

    def incr(self, key: str, delta: int = 1, /) -> int:
        """Add ``delta`` to the counter under ``key`` (INCRBY), starting from 0; the new value.

        The counter is stored as ASCII decimal digits and keeps the key's TTL.
        Redis counters are signed 64-bit integers. Never resent: see the class
        docstring.

        Raises:
            TypeError: ``delta`` is not an int.
            BackendError: the stored value is not an integer Redis accepts, or
                the result would overflow 64 bits.
            BackendUnavailable: the server could not be reached; nothing was counted.
            OutcomeUnknown: the command was sent and its reply lost.
        """
        result: int = self._once("INCRBY", key, ops.incr_command(_check_key(key), delta))
        return result

    def gets(self, key: str, /) -> tuple[bytes, CasToken] | None:
        """The value (GET) and a token for :meth:`cas`, or None if absent.

        The token is the SHA-1 hex digest of the value, so it stands for the
        contents, not for a write: if the value changes from A to B and back
        to A, a ``cas`` with the token from A still succeeds. Compare-and-set
        stays linearizable for read-modify-write, since the value it was
        computed from is the one stored.
        """
        _check_key(key)
        try:
            value: bytes | None = self._execute("GET", key, keys=(key,))
        except self._errors as exc:
            raise self._fail("GET", key, exc) from exc
        if value is None:
            return None
        return value, ops.token_of(value)

    def cas(self, key: str, value: bytes, token: CasToken, /, ttl: BackendTTL = None) -> bool:
        """Store ``value`` only if ``key`` still holds what ``gets`` read; True if stored.

        One Lua script on the key's server (or node) compares the SHA-1 of the
        stored value with ``token`` and runs SET (with ``PX`` when ``ttl``, with
        ``KEEPTTL`` for ``ttl=KEEP_TTL``) if they match: EVALSHA, and EVAL if the
        server answers NOSCRIPT. A missing key, or a token :meth:`gets` did not
        make, gives False. Never resent: see the class docstring.

        Raises:
            BackendError: the key holds another Redis type (a hash, a list...).
            BackendUnavailable: the server could not be reached; nothing was written.
            OutcomeUnknown: the script was sent and its reply lost.
        """
        data = _as_bytes(_check_key(key), value)
        commands = ops.cas_commands(key, data, token, ttl)
        if commands is None:
            return False
        stored = self._once("CAS script", key, *commands)
        return bool(stored == 1)

    # -- optional capabilities: TTLBackend, CounterBackend, ScanBackend -------------

    def _each_key(
        self,
        op: str,
        commands: list[tuple[Any, ...]],
        keys: list[str],
        fallbacks: list[tuple[Any, ...]],
    ) -> list[Any]:
        """Run one idempotent script call per key: a pipeline per server (node); the replies.

        Calls answered NOSCRIPT are sent again as ``fallbacks`` (EVAL).
        """
        if self._is_cluster:
            replies, failures = self._cluster_batch(
                op, commands, self._slots(op, keys), idempotent=True
            )
            if failures:
                name, exc = failures[0]
                raise self._fail(op, keys, exc, name) from exc
        else:
            server = self._main
            assert server is not None
            try:
                replies = self._exchange(server, commands, idempotent=True)
            except _Broken as broken:
                raise self._fail(op, keys, broken.cause, broken.server) from broken.cause
        redo = [i for i, reply in enumerate(replies) if isinstance(reply, self._no_script)]
        if redo and commands is not fallbacks:
            again = [fallbacks[i] for i in redo]
            sent_again = self._each_key(op, again, [keys[i] for i in redo], again)
            for i, reply in zip(redo, sent_again, strict=True):
                replies[i] = reply
        self._first_error(op, replies, keys)
        return replies

    def touch(self, key: str, /, ttl: float | None = None) -> bool:
        """Give ``key`` a new TTL (PEXPIRE; PERSIST for None); True if it existed."""
        return self.touch_many([key], ttl)[0]

    def touch_many(self, keys: Sequence[str], /, ttl: float | None = None) -> list[bool]:
        """``touch`` each key: a script per key (PEXPIRE, or PERSIST for None), one
        pipeline per server or node.

        Idempotent, so resent like the other idempotent batches; a failure
        raises :class:`~cacheorm.BackendUnavailable` (some keys may have been
        touched: touch them again). A key of another Redis type is a
        :class:`~cacheorm.BackendError`.
        """
        keys = key_list(keys)
        commands, fallbacks = ops.touch_commands(keys, ttl)
        if not keys:
            return []
        return [reply == 1 for reply in self._each_key("touch", commands, keys, fallbacks)]

    def ttl_of(self, key: str, /) -> float | None:
        """Seconds ``key`` has left (PTTL, to the ms); ``math.inf`` if none, None if absent.

        A one-key script (TYPE, then PTTL), retried like a read. A key of
        another Redis type is a :class:`~cacheorm.BackendError`, as for ``get``.
        """
        _check_key(key)
        command, fallback = ops.ttl_commands(key)
        return ops.ttl_seconds(self._each_key("PTTL", [command], [key], [fallback])[0])

    def counter_add(self, key: str, delta: int, /, ttl: float | None = None) -> int:
        """Add ``delta`` to the counter under ``key``, never below 0; the new value.

        One Lua script (EVALSHA, EVAL on NOSCRIPT): EXISTS, INCRBY, a SET to 0
        when the result is negative, and PEXPIRE when it created the key.
        Never resent: see the class docstring. Values above ``2**53`` lose
        precision in the script's Lua numbers.

        Raises:
            BackendError: the key holds a non-integer or another Redis type.
            OutcomeUnknown: the script was sent and its reply lost.
        """
        _check_key(key)
        _check_delta(delta)
        value = self._once("counter script", key, *ops.counter_commands(key, delta, ttl))
        return int(value)

    def scan(self, prefix: str, /, batch: int = 500) -> Iterator[list[str]]:
        """The string keys starting with ``prefix``: ``SCAN ... MATCH ... COUNT batch TYPE string``.

        On a cluster, every primary is scanned in turn. ``prefix`` is matched
        literally (its glob characters are escaped). Each reply is one batch;
        ``COUNT`` is a hint, so a batch may hold more or fewer keys. Keys that
        are not valid in the client's encoding are not cacheorm's and are left out.
        """
        _check_key(prefix)
        _check_batch(batch)
        return self._scan(prefix, batch)

    def _scan(self, prefix: str, batch: int) -> Iterator[list[str]]:
        pattern = ops.scan_pattern(prefix)
        encoding = self._key_encoding[0]
        for server in self._scan_servers():
            cursor: Any = 0
            while True:
                command = ops.scan_command(cursor, pattern, batch)
                try:
                    reply = self._exchange(server, [command], idempotent=True)[0]
                except _Broken as broken:
                    raise self._fail("SCAN", prefix, broken.cause, broken.server) from broken.cause
                if isinstance(reply, BaseException):
                    raise self._fail("SCAN", prefix, reply, server.name) from reply
                cursor, found = reply
                keys = ops.scan_keys(found, encoding)
                if keys:
                    yield keys
                if int(cursor) == 0:
                    break

    def _scan_servers(self) -> list[_Server]:
        """The server, or every primary node of the cluster."""
        if not self._is_cluster:
            assert self._main is not None
            return [self._main]
        cluster = self._cluster
        if cluster is None:
            cluster = self._connected_cluster("SCAN", [])
        try:
            return [self._pool_server(node) for node in cluster.get_primaries()]
        except self._errors as exc:
            raise self._fail("SCAN", [], exc) from exc

    def close(self) -> None:
        """Close the redis-py client (also one passed in), its pool, and the cluster threads."""
        with self._threads_lock:
            self._closed = True
            threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=True)
        with self._connect_lock:  # a lazy cluster's client is then never built
            client = self._client
        if client is None:
            return
        try:
            client.close()
        except self._errors as exc:
            raise self._fail("close", [], exc) from exc

    def __repr__(self) -> str:
        """The class, server address and database; never a password."""
        if self._is_cluster:
            return f"RedisBackend(cluster={self._server.removeprefix('cluster ')!r})"
        return f"RedisBackend(server={self._server!r}, db={self._db!r})"
