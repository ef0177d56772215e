"""An asyncio Redis Cluster backend on cacheorm's own auto-pipelined connections.

One :class:`~cacheorm._aio_redis.RedisConnection` per primary, shared by
every task; the slot map comes from ``CLUSTER SHARDS`` (``CLUSTER SLOTS``
before Redis 7) on first use, and the routing decisions (slots, grouping,
``MOVED`` / ``ASK`` / ``TRYAGAIN``) are the sans-I/O ones of
:mod:`cacheorm._slots`. A batch goes to every node at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl as _ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

from cacheorm import _redis_ops as ops
from cacheorm._aio_redis import ConnectionLost, RedisConnection, RequestTimeout
from cacheorm._backend import AsyncClosing, CasToken
from cacheorm._checks import as_bytes as _as_bytes
from cacheorm._checks import as_items as _as_items
from cacheorm._checks import check_batch as _check_batch
from cacheorm._checks import check_delta as _check_delta
from cacheorm._checks import check_key as _check_key
from cacheorm._errors import BackendError, BackendUnavailable, ConfigurationError, InvalidTTL
from cacheorm._resp import ReplyError
from cacheorm._slots import (
    Job,
    Route,
    RoutingError,
    SlotTable,
    by_slot,
    cluster_error,
    node_name,
    parse_shards,
    parse_slots,
    slots_of,
    split_node,
)
from cacheorm._ttl import BackendTTL

__all__ = ["AsyncRedisClusterBackend", "cluster_from_url"]

#: How many MOVED / ASK / TRYAGAIN rounds one batch follows before giving up.
_MAX_REDIRECTS = 5
#: How long to wait before resending after TRYAGAIN (a slot being migrated).
_TRYAGAIN_DELAY = 0.05

#: The command that gives the slot map (CLUSTER SLOTS is asked where it is unknown).
_SHARDS = ("CLUSTER", "SHARDS")

_UNKNOWN = ops.UNKNOWN


def _message(reply: object) -> str | None:
    """The message of an error reply, None for any other reply."""
    return reply.message if isinstance(reply, ReplyError) else None


class AsyncRedisClusterBackend(AsyncClosing):
    """Stores bytes in a Redis Cluster, from asyncio: the cluster twin of ``AsyncRedisBackend``.

    The operations, their arguments, TTL rules (``KEEP_TTL`` included),
    retries and errors are those of :class:`~cacheorm.RedisBackend` on a
    cluster. Keys are routed by hash slot (``{tags}`` included); a batch
    groups its keys by node and sends one pipeline to every node at once, so
    it costs about one round trip. Each node gets one connection, shared by
    every task and pipelined automatically.

    **Topology.** Nothing connects when the backend is built. The first
    operation asks the startup nodes for ``CLUSTER SHARDS`` (``CLUSTER
    SLOTS`` on Redis < 7). A ``MOVED`` reply (not applied) sends the command
    to the new owner and reloads the slot map; ``ASK`` sends it, after
    ``ASKING``, to the importing node without changing the map; ``TRYAGAIN``
    waits 50 ms and resends. At most five such rounds, then the commands
    left are reported as not applied. A node that fails has the slot map
    reloaded in the background.

    **Retries.** A command that certainly did not reach its node (the
    connection could not be made) is resent once, after a reload of the
    slot map. So is an idempotent one (``get``, ``set``, ``replace``,
    ``delete``, the reads and their batches) whose connection broke,
    unless it timed out. ``add``, ``add_many``, ``incr``, ``cas`` and
    ``counter_add`` are never resent once sent: a lost reply is
    :class:`~cacheorm.OutcomeUnknown`. A batch write that fails part-way
    raises :class:`~cacheorm.BatchWriteError` with ``written`` /
    ``not_written`` / ``unknown``.

    **Cancellation.** Cancelling a call is an interrupted request: its
    replies are read and dropped by the connection, never handed to
    another call.

    Args:
        nodes: ``"host:port"`` of one or more cluster nodes (one string is one node).
        connect_timeout: seconds to connect to a node (TLS and AUTH included).
        timeout: seconds a request may wait for its node's reply.
        username: the ACL user (with ``password``).
        password: the password sent with ``AUTH`` to every node.
        ssl_context: a TLS context: every node is reached over TLS.
        address_remap: maps a node's ``(host, port)``, as the cluster names
            it, to the address to connect to (a NAT, a proxy, a container
            network), as redis-py's ``address_remap`` does.

    Raises:
        ValueError: no node, or a node that is not ``host:port``.
        InvalidTTL: a timeout that is not a positive number.
    """

    def __init__(
        self,
        nodes: Sequence[str] | str,
        *,
        connect_timeout: float = 5.0,
        timeout: float = 5.0,
        username: str | None = None,
        password: str | None = None,
        ssl_context: _ssl.SSLContext | None = None,
        address_remap: Callable[[tuple[str, int]], tuple[str, int]] | None = None,
    ) -> None:
        if isinstance(nodes, str):
            nodes = [nodes]
        startup = [node_name(*split_node(node)) for node in nodes]
        if not startup:
            raise ValueError("AsyncRedisClusterBackend needs at least one 'host:port' node")
        for name, value in (("connect_timeout", connect_timeout), ("timeout", timeout)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 < value < math.inf
            ):
                raise InvalidTTL(f"{name} must be a positive number of seconds, not {value!r}")
        self._startup = list(dict.fromkeys(startup))
        self._server = "cluster " + ",".join(self._startup)
        self._options: dict[str, Any] = {
            "connect_timeout": float(connect_timeout),
            "timeout": float(timeout),
            "username": username,
            "password": password,
            "ssl": ssl_context,
        }
        self._password = password or None
        self._remap = address_remap
        self._table: SlotTable | None = None
        self._connections: dict[str, RedisConnection] = {}
        self._refreshing: asyncio.Task[SlotTable] | None = None
        self._suspects: set[str] = set()
        self._closed = False

    @classmethod
    def from_cluster(cls, nodes: Sequence[str] | str, **options: Any) -> AsyncRedisClusterBackend:
        """A backend on the cluster that ``nodes`` (``"host:port"``) belong to.

        Args:
            nodes: one or more cluster nodes; the others are discovered.
            **options: ``connect_timeout``, ``timeout``, ``username``,
                ``password``, ``ssl_context``.

        Raises:
            ValueError: no node, or a node that is not ``host:port``.
            TypeError: an unknown option.
        """
        return cls(nodes, **options)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AsyncRedisClusterBackend:
        """A backend on the cluster of the node in ``url``: see :func:`cluster_from_url`."""
        return cluster_from_url(url, **options)

    @property
    def server(self) -> str:
        """``"cluster "`` and the startup nodes' ``host:port``, comma-separated."""
        return self._server

    def __repr__(self) -> str:
        """The class and the startup nodes; never a password."""
        return f"AsyncRedisClusterBackend(cluster={self._server.removeprefix('cluster ')!r})"

    # -- topology --------------------------------------------------------------------

    def _connection(self, node: str) -> RedisConnection:
        """The connection to ``node``, made on first use."""
        connection = self._connections.get(node)
        if connection is None:
            if self._closed:
                raise ConnectionLost(
                    f"this AsyncRedisClusterBackend ({self._server}) is closed",
                    sent=False,
                    server=node,
                )
            host, port = split_node(node)
            if self._remap is not None:
                host, port = self._remap((host, port))
            connection = self._connections[node] = RedisConnection(host, port, **self._options)
        return connection

    async def _slot_table(self, op: str, keys: str | Sequence[str]) -> SlotTable:
        """The slot map, loaded on first use.

        Raises:
            BackendUnavailable: no node answered, or the backend is closed.
        """
        table = self._table
        if table is not None:
            return table
        try:
            return await self._refresh()
        except (RoutingError, ConnectionLost) as exc:
            raise self._fail(op, keys, exc, self._server) from exc

    def _refresh(self) -> asyncio.Future[SlotTable]:
        """Reload the slot map: one reload at a time, shared by every caller that needs it.

        The reload runs in its own task, so a caller that is cancelled does
        not cancel it for the others.
        """
        if self._closed:
            raise ConnectionLost(
                f"this AsyncRedisClusterBackend ({self._server}) is closed",
                sent=False,
                server=self._server,
            )
        task = self._refreshing
        if task is None:
            task = self._refreshing = asyncio.ensure_future(self._discover())
            task.add_done_callback(self._refreshed)
        return asyncio.shield(task)

    def _refreshed(self, task: asyncio.Task[SlotTable]) -> None:
        if self._refreshing is task:
            self._refreshing = None
        if not task.cancelled() and task.exception() is None:
            self._table = task.result()

    async def _discover(self) -> SlotTable:
        """Ask the known nodes, then the startup nodes (the ones that just failed last)."""
        known = self._table.nodes if self._table is not None else []
        candidates = list(dict.fromkeys([*known, *self._startup]))
        candidates.sort(key=lambda node: node in self._suspects)
        errors: list[str] = []
        last: BaseException | None = None
        for node in candidates:
            try:
                table = await self._ask_topology(node)
            except (ConnectionLost, ValueError, RoutingError) as exc:
                errors.append(f"{node}: {self._detail(exc)}")
                last = exc
                continue
            self._suspects.clear()
            return table
        raise RoutingError(f"no node gave the cluster's slot map ({'; '.join(errors)})") from last

    async def _ask_topology(self, node: str) -> SlotTable:
        """``node``'s slot map: CLUSTER SHARDS, or CLUSTER SLOTS where that is unknown."""
        connection = self._connection(node)
        host = split_node(node)[0]
        tls = self._options["ssl"] is not None
        reply = (await connection.execute([_SHARDS]))[0]
        if isinstance(reply, ReplyError):
            reply = (await connection.execute([("CLUSTER", "SLOTS")]))[0]
            if isinstance(reply, ReplyError):
                raise RoutingError(f"CLUSTER SLOTS was refused: {reply.message}")
            table = parse_slots(reply, host)
        else:
            table = parse_shards(reply, host, tls=tls)
        if not table.nodes:
            raise RoutingError("the node serves no slot: is it part of a cluster?")
        return table

    def _suspect(self, nodes: Sequence[str]) -> None:
        """Nodes failed: reload the slot map in the background, asking them last."""
        self._suspects.update(nodes)
        if self._closed or self._refreshing is not None:
            return
        with contextlib.suppress(ConnectionLost):
            self._refresh().add_done_callback(_retrieve)

    # -- sending -----------------------------------------------------------------------

    async def _send(
        self, job: Job, commands: Sequence[tuple[Any, ...]]
    ) -> list[object] | ConnectionLost:
        """One job's commands on its node's connection (each after ASKING when asked);
        their replies, or the connection's failure."""
        try:
            connection = self._connection(job.node)
            if job.asking:
                batch = [part for i in job.indices for part in (("ASKING",), commands[i])]
                return (await connection.execute(batch))[1::2]
            return await connection.execute([commands[i] for i in job.indices])
        except ConnectionLost as exc:
            return exc

    async def _batch(
        self,
        op: str,
        keys: str | Sequence[str],
        commands: Sequence[tuple[Any, ...]],
        slots: Sequence[int],
        idempotent: bool,
    ) -> Route:
        """Run ``commands`` (``slots[i]`` is command i's slot): one pipeline per node, at once.

        The route's ``outcome`` holds each command's reply (an error reply as
        a ReplyError; NOT_SENT / UNKNOWN where there was none) and its
        ``failures`` the nodes that failed.
        """
        table = await self._slot_table(op, keys)
        route = Route(slots, _message, self._server, _MAX_REDIRECTS)
        failed: list[str] = []
        while True:
            jobs = route.plan(table, self._unserved)
            if len(jobs) == 1:
                results = [await self._send(jobs[0], commands)]
            else:
                results = await asyncio.gather(*[self._send(job, commands) for job in jobs])
            for job, result in zip(jobs, results, strict=True):
                if isinstance(result, ConnectionLost):
                    failed.append(job.node)
                    resend = not result.sent or (
                        idempotent and not isinstance(result, RequestTimeout)
                    )
                    route.settle(job, None, result, result.sent, resend=resend)
                else:
                    route.settle(job, result, table=table)
            if not route.advance():
                break
            if route.refresh:
                try:
                    table = await self._refresh()
                except (RoutingError, ConnectionLost) as exc:
                    route.failures.append((self._server, exc))
                    break
            if route.wait:
                await asyncio.sleep(_TRYAGAIN_DELAY)
        if failed:
            self._suspect(failed)
        return route

    def _unserved(self, slot: int) -> BaseException:
        return RoutingError(f"hash slot {slot} is not served by any node of the slot map")

    async def _read(
        self,
        op: str,
        names: Sequence[str],
        commands: Sequence[tuple[Any, ...]],
        slots: Sequence[int],
        keys: Sequence[str] | None = None,
    ) -> list[Any]:
        """Run idempotent read ``commands``; their replies, or the error of the first failure.

        ``names[i]`` is the key that names command i in an error reply's
        message; ``keys`` (default ``names``) the keys a failed node's error names.
        """
        every = names if keys is None else keys
        route = await self._batch(op, every, commands, slots, idempotent=True)
        if route.failures:
            node, exc = route.failures[0]
            raise self._fail(op, every, exc, node) from exc
        for key, reply in zip(names, route.outcome, strict=True):
            if isinstance(reply, ReplyError):
                raise self._fail(op, key, reply) from reply
        return route.outcome

    async def _once(
        self,
        op: str,
        key: str,
        command: tuple[Any, ...],
        fallback: tuple[Any, ...] | None = None,
        *,
        idempotent: bool = False,
    ) -> Any:
        """Run one command on ``key``'s node (following redirects); its reply.

        ``fallback`` is sent instead if the node answers NOSCRIPT (the script
        did not run, so sending EVAL cannot apply it twice).

        Raises:
            BackendUnavailable: nothing was applied (node down, slot unserved).
            OutcomeUnknown: the command was sent and its reply lost (never resent
                unless ``idempotent``).
            BackendError: the node's error reply.
        """
        slot = self._slots(op, [key])
        route = await self._batch(op, key, [command], slot, idempotent)
        reply = route.outcome[0]
        if fallback is not None and _no_script(reply):
            route = await self._batch(op, key, [fallback], slot, idempotent)
            reply = route.outcome[0]
        if route.failures:
            node, exc = route.failures[0]
            if reply is _UNKNOWN and not idempotent:
                raise self._unknown(op, key, exc, node) from exc
            raise self._fail(op, key, exc, node) from exc
        if isinstance(reply, ReplyError):
            raise self._fail(op, key, reply) from reply
        return reply

    async def _one(self, op: str, key: str, command: tuple[Any, ...]) -> Any:
        """An idempotent single-key command: straight to its node, the general path on
        anything but a plain reply."""
        table = self._table
        if table is not None and type(key) is str:
            try:
                node = table.owners[slots_of([key])[0]]
            except UnicodeEncodeError as exc:
                raise self._fail(op, key, exc) from exc
            if node is not None:
                connection = self._connections.get(node)
                if connection is not None:
                    try:
                        reply = (await connection.execute([command]))[0]
                    except ConnectionLost:
                        pass  # resent on the general path
                    else:
                        if not isinstance(reply, ReplyError):
                            return reply
                        if cluster_error(reply.message, node) is None:
                            raise self._fail(op, key, reply, node) from reply
        return await self._once(op, key, command, idempotent=True)

    def _slots(self, op: str, keys: Sequence[str]) -> list[int]:
        """Each key's hash slot; BackendError for a key that is not UTF-8."""
        try:
            return slots_of(keys)
        except UnicodeEncodeError as exc:
            raise self._fail(op, keys, exc) from exc

    # -- errors --------------------------------------------------------------------------

    def _detail(self, exc: BaseException) -> str:
        """The error's message, any password masked."""
        detail = exc.message if isinstance(exc, ReplyError) else str(exc)
        return ops.mask(detail or type(exc).__name__, self._password)

    def _node_of(self, key: str | None) -> str:
        """The node that serves ``key`` per the slot map, else the cluster's name."""
        table = self._table
        if key is None or table is None:
            return self._server
        with contextlib.suppress(UnicodeEncodeError):
            node = table.owners[slots_of([key])[0]]
            if node is not None:
                return node
        return self._server

    def _fail(
        self, op: str, keys: str | Sequence[str], exc: BaseException, server: str | None = None
    ) -> Exception:
        """The cacheorm exception for ``exc`` during ``op`` on ``keys``.

        A connection failure, a routing failure and CLUSTERDOWN (refused
        unapplied) are :class:`~cacheorm.BackendUnavailable`; an error reply
        is what :func:`~cacheorm._redis_ops.refused` makes of it.
        """
        detail = self._detail(exc)
        if server is None:
            server = self._node_of(ops.describe(keys)[1])
        if isinstance(exc, ReplyError):
            if exc.code == "CLUSTERDOWN":
                return ops.unavailable(op, keys, detail, server, exc.code)
            return ops.refused(op, keys, detail, server)
        if isinstance(exc, (ConnectionLost, RoutingError)):
            return ops.unavailable(op, keys, detail, server, type(exc).__name__)
        return ops.failed(op, keys, detail, server)  # a key that is not UTF-8

    def _unknown(self, op: str, key: str, exc: BaseException, server: str) -> BackendError:
        """OutcomeUnknown: ``op`` on ``key`` was sent to ``server`` and its reply lost."""
        return ops.unknown(op, key, self._detail(exc), server, type(exc).__name__)

    def _batch_error(
        self,
        op: str,
        command_keys: Sequence[Sequence[str]],
        route: Route,
        conditional: bool = False,
    ) -> Exception:
        """BatchWriteError for a write batch whose commands ended as ``route.outcome``."""
        failures = [(node, self._detail(exc)) for node, exc in route.failures]
        return ops.batch_error(op, command_keys, route.outcome, failures, self._server, conditional)

    def _check_write(
        self,
        op: str,
        command_keys: Sequence[Sequence[str]],
        route: Route,
        conditional: bool = False,
    ) -> None:
        """Raise for a write batch with failures, or for its first error reply."""
        if route.failures:
            raise self._batch_error(op, command_keys, route, conditional) from route.failures[0][1]
        for keys, reply in zip(command_keys, route.outcome, strict=True):
            if isinstance(reply, ReplyError):
                raise self._fail(op, keys[0], reply) from reply

    # -- the AsyncBackend protocol -------------------------------------------------------

    async def get(self, key: str, /) -> bytes | None:
        """The value under ``key`` (GET), or None if absent or expired."""
        _check_key(key)
        value: bytes | None = await self._one("GET", key, ("GET", key))
        return value

    async def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        """The values under ``keys``: a GET or MGET per slot, pipelined per node, nodes at once."""
        keys = ops.key_list(keys)
        if not keys:
            return []
        groups = list(by_slot(self._slots("MGET", keys)).items())
        # A slot with one key (most of them, in a big batch) gets a GET, whose
        # reply is cheaper to parse than a one-element MGET array.
        commands = [
            ("GET", keys[ix[0]]) if len(ix) == 1 else ("MGET", *[keys[i] for i in ix])
            for _, ix in groups
        ]
        firsts = [keys[ix[0]] for _, ix in groups]
        replies = await self._read("MGET", firsts, commands, [slot for slot, _ in groups], keys)
        values: list[bytes | None] = [None] * len(keys)
        for (_, indices), reply in zip(groups, replies, strict=True):
            if len(indices) == 1:
                values[indices[0]] = reply
            else:
                for i, value in zip(indices, reply, strict=True):
                    values[i] = value
        if None in values:
            await self._foreign_misses([k for k, v in zip(keys, values, strict=True) if v is None])
        return values

    async def _foreign_misses(self, keys: list[str]) -> None:
        """Raise BackendError if a key MGET answered nil for holds another Redis type.

        One EXISTS per slot of the misses (one more round trip, only for a
        batch with misses); only if some exists are their types read.
        """
        keys = list(dict.fromkeys(keys))
        groups = list(by_slot(self._slots("EXISTS", keys)).items())
        commands = [("EXISTS", *[keys[i] for i in ix]) for _, ix in groups]
        firsts = [keys[ix[0]] for _, ix in groups]
        found = await self._read("EXISTS", firsts, commands, [slot for slot, _ in groups], keys)
        if sum(found):
            await self._refuse_foreign("TYPE", keys)

    async def _refuse_foreign(self, op: str, keys: list[str]) -> None:
        """Raise BackendError naming the first of ``keys`` that holds another Redis type."""
        replies = await self._read(op, keys, [("TYPE", key) for key in keys], self._slots(op, keys))
        ops.first_foreign(op, keys, [ops.type_name(reply) for reply in replies], self._node_of)

    async def set(self, key: str, value: bytes, /, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` (SET, PX when ``ttl``), replacing any value and TTL."""
        data = _as_bytes(_check_key(key), value)
        await self._one("SET", key, ops.set_command(key, data, ttl))

    async def set_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> None:
        """Store every pair: an MSET per slot, or a ``SET PX`` per key; pipelined per node.

        Raises:
            BatchWriteError: a node failed part-way; says which keys were
                written, which not, and which are unknown.
        """
        pairs = _as_items(items)
        ms = ops.px(ttl)
        if not pairs:
            return
        keys = [key for key, _ in pairs]
        slots = self._slots("SET", keys)
        if ms is None:  # an MSET per slot
            groups = list(by_slot(slots).items())
            op, commands = (
                "MSET",
                [("MSET", *[p for i in ix for p in pairs[i]]) for _, ix in groups],
            )
            slots = [slot for slot, _ in groups]
            command_keys = [[keys[i] for i in ix] for _, ix in groups]
        else:
            op, commands, command_keys = ops.set_many_commands(pairs, ms)
        route = await self._batch(op, keys, commands, slots, idempotent=True)
        self._check_write(op, command_keys, route)

    async def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        """Store only if ``key`` is absent (``SET NX``, expiry included); True if stored.

        Never resent once sent.

        Raises:
            BackendUnavailable: the node could not be reached; nothing was written.
            OutcomeUnknown: the command was sent and its reply lost.
        """
        data = _as_bytes(_check_key(key), value)
        if await self._once("SET NX", key, ops.add_command(key, data, ttl)) is not None:
            return True
        await self._refused_add_check([key])
        return False

    async def _refused_add_check(self, keys: list[str]) -> None:
        """After SET NX refused ``keys``: BackendError if one holds another Redis type.

        If that read fails, the refusal stands: nothing was written either way.
        """
        with contextlib.suppress(BackendUnavailable):
            await self._refuse_foreign("SET NX", keys)

    async def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        """``add`` for each pair, in order, pipelined per node; a later pair sees earlier ones.

        Never resent once sent, like ``add``.

        Raises:
            BatchWriteError: a node failed part-way.
        """
        pairs = _as_items(items)
        ms = ops.px(ttl)
        return await self._write_many("NX", pairs, () if ms is None else ("PX", ms), False)

    async def replace(self, key: str, value: bytes, /, ttl: BackendTTL = None) -> bool:
        """Store only if ``key`` holds a string value (``SET XX GET``); True if stored.

        Raises:
            BackendError: the key holds another Redis type (a hash, a list...).
        """
        data = _as_bytes(_check_key(key), value)
        command = ops.write_many_commands("XX", [(key, data)], ("GET", *ops.expiry(ttl)))[0]
        return await self._one("SET XX", key, command) is not None

    async def replace_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: BackendTTL = None
    ) -> list[bool]:
        """``replace`` for each pair, in order, pipelined per node (``KEEP_TTL`` too).

        Raises:
            BatchWriteError: a node failed part-way, or a key holds another
                Redis type while other pairs were written.
            BackendError: a key holds another Redis type (nothing written).
        """
        pairs = _as_items(items)
        return await self._write_many("XX", pairs, ("GET", *ops.expiry(ttl)), True)

    async def _write_many(
        self,
        condition: str,
        pairs: list[tuple[str, bytes]],
        options: tuple[Any, ...],
        idempotent: bool,
    ) -> list[bool]:
        """``SET key value NX|XX [options]`` for each pair; which pairs were stored."""
        if not pairs:
            return []
        op = f"SET {condition}"
        keys = [key for key, _ in pairs]
        commands = ops.write_many_commands(condition, pairs, options)
        route = await self._batch(op, keys, commands, self._slots(op, keys), idempotent)
        if route.failures:
            error = self._batch_error(op, [[key] for key in keys], route, conditional=True)
            raise error from route.failures[0][1]
        stored, errors = ops.stored_of(route.outcome)
        if errors:
            reply = route.outcome[errors[0]]
            assert isinstance(reply, ReplyError)
            exc = self._fail(op, keys[errors[0]], reply)
            raise ops.partly_written(op, keys, stored, exc) from reply
        if condition == "NX" and not all(stored):
            try:
                await self._refused_add_check(
                    [key for key, ok in zip(keys, stored, strict=True) if not ok]
                )
            except BackendError as exc:
                raise ops.partly_written(op, keys, stored, exc) from None
        return stored

    async def delete(self, key: str, /) -> bool:
        """Remove ``key`` (DEL); True if it existed."""
        _check_key(key)
        removed: int = await self._one("DEL", key, ("DEL", key))
        return removed > 0

    async def delete_many(self, keys: Sequence[str], /) -> int:
        """Remove ``keys`` (a DEL per slot, pipelined per node); the number that existed.

        Raises:
            BatchWriteError: a node failed part-way; ``written`` lists the keys
                confirmed removed (or absent).
        """
        keys = ops.key_list(keys)
        if not keys:
            return 0
        groups = list(by_slot(self._slots("DEL", keys)).items())
        commands = [("DEL", *[keys[i] for i in ix]) for _, ix in groups]
        route = await self._batch("DEL", keys, commands, [slot for slot, _ in groups], True)
        self._check_write("DEL", [[keys[i] for i in ix] for _, ix in groups], route)
        return sum(cast("list[int]", route.outcome))

    async def exists(self, key: str, /) -> bool:
        """True if ``key`` holds a live value (TYPE).

        Raises:
            BackendError: the key holds another Redis type (a hash, a list...).
        """
        _check_key(key)
        kind = ops.type_name(await self._one("TYPE", key, ("TYPE", key)))
        ops.first_foreign("TYPE", [key], [kind], self._node_of)
        return kind == "string"

    async def incr(self, key: str, delta: int = 1, /) -> int:
        """Add ``delta`` to the counter under ``key`` (INCRBY), from 0; the new value.

        Never resent once sent.

        Raises:
            TypeError: ``delta`` is not an int.
            BackendError: the stored value is not an integer Redis accepts.
            OutcomeUnknown: the command was sent and its reply lost.
        """
        _check_key(key)
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"incr delta must be an int, not {type(delta).__name__}")
        result: int = await self._once("INCRBY", key, ("INCRBY", key, delta))
        return result

    async def gets(self, key: str, /) -> tuple[bytes, CasToken] | None:
        """The value (GET) and a token for :meth:`cas` (its SHA-1), or None if absent."""
        _check_key(key)
        value: bytes | None = await self._one("GET", key, ("GET", key))
        if value is None:
            return None
        return value, ops.token_of(value)

    async def cas(self, key: str, value: bytes, token: CasToken, /, ttl: BackendTTL = None) -> bool:
        """Store ``value`` only if ``key`` still holds what ``gets`` read; True if stored.

        One Lua script on the key's node (EVALSHA, EVAL on NOSCRIPT). Never resent.

        Raises:
            BackendError: the key holds another Redis type.
            OutcomeUnknown: the script was sent and its reply lost.
        """
        data = _as_bytes(_check_key(key), value)
        commands = ops.cas_commands(key, data, token, ttl)
        if commands is None:
            return False
        return bool(await self._once("CAS script", key, *commands) == 1)

    # -- optional capabilities ------------------------------------------------------------

    async def _each_key(
        self,
        op: str,
        commands: list[tuple[Any, ...]],
        keys: list[str],
        fallbacks: list[tuple[Any, ...]],
    ) -> list[Any]:
        """One idempotent script call per key, pipelined per node; NOSCRIPT ones resent as EVAL."""
        route = await self._batch(op, keys, commands, self._slots(op, keys), idempotent=True)
        if route.failures:
            node, exc = route.failures[0]
            raise self._fail(op, keys, exc, node) from exc
        replies = route.outcome
        redo = [i for i, reply in enumerate(replies) if _no_script(reply)]
        if redo and commands is not fallbacks:
            again = [fallbacks[i] for i in redo]
            sent_again = await self._each_key(op, again, [keys[i] for i in redo], again)
            for i, reply in zip(redo, sent_again, strict=True):
                replies[i] = reply
        for key, reply in zip(keys, replies, strict=True):
            if isinstance(reply, ReplyError):
                raise self._fail(op, key, reply) from reply
        return replies

    async def touch(self, key: str, /, ttl: float | None = None) -> bool:
        """Give ``key`` a new TTL (PEXPIRE; PERSIST for None); True if it existed."""
        return (await self.touch_many([key], ttl))[0]

    async def touch_many(self, keys: Sequence[str], /, ttl: float | None = None) -> list[bool]:
        """``touch`` each key: a script per key, pipelined per node, nodes at once."""
        keys = ops.key_list(keys)
        commands, fallbacks = ops.touch_commands(keys, ttl)
        if not keys:
            return []
        return [reply == 1 for reply in await self._each_key("touch", commands, keys, fallbacks)]

    async def ttl_of(self, key: str, /) -> float | None:
        """Seconds ``key`` has left (PTTL, to the ms); ``math.inf`` if none, None if absent."""
        _check_key(key)
        command, fallback = ops.ttl_commands(key)
        left = await self._each_key("PTTL", [command], [key], [fallback])
        return ops.ttl_seconds(left[0])

    async def counter_add(self, key: str, delta: int, /, ttl: float | None = None) -> int:
        """Add ``delta`` to the counter under ``key``, never below 0; the new value.

        One Lua script (the sync backend's). Never resent once sent.
        """
        _check_key(key)
        _check_delta(delta)
        return int(await self._once("counter script", key, *ops.counter_commands(key, delta, ttl)))

    def scan(self, prefix: str, /, batch: int = 500) -> AsyncIterator[list[str]]:
        """The string keys starting with ``prefix``: SCAN (TYPE string) on every primary in turn."""
        _check_key(prefix)
        _check_batch(batch)
        return self._scan(prefix, batch)

    async def _scan(self, prefix: str, batch: int) -> AsyncIterator[list[str]]:
        pattern = ops.scan_pattern(prefix)
        table = await self._slot_table("SCAN", prefix)
        for node in list(table.nodes):
            cursor: Any = 0
            while True:
                command = ops.scan_command(cursor, pattern, batch)
                try:
                    reply = (await self._connection(node).execute([command]))[0]
                except ConnectionLost as exc:
                    raise self._fail("SCAN", prefix, exc, node) from exc
                if isinstance(reply, ReplyError):
                    raise self._fail("SCAN", prefix, reply, node) from reply
                cursor, found = cast("list[Any]", reply)
                keys = ops.scan_keys(found)
                if keys:
                    yield keys
                if int(cursor) == 0:
                    break

    async def aclose(self) -> None:
        """Close every node's connection; the backend is not used after this."""
        self._closed = True
        refreshing = self._refreshing
        if refreshing is not None and not refreshing.done():
            refreshing.cancel()
            await asyncio.wait([refreshing])
        connections = list(self._connections.values())
        self._connections.clear()
        await asyncio.gather(*(connection.aclose() for connection in connections))


def _no_script(reply: object) -> bool:
    """Whether ``reply`` is NOSCRIPT: the script was not run (send it with EVAL)."""
    return isinstance(reply, ReplyError) and reply.code == "NOSCRIPT"


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a background future's failure as seen (it is reported where it matters)."""
    if not future.cancelled():
        future.exception()


def cluster_from_url(url: str, **options: Any) -> AsyncRedisClusterBackend:
    """An :class:`AsyncRedisClusterBackend` on the cluster of the node in ``url``.

    ``redis://[[user]:[password]@]host[:port]`` or ``rediss://...`` (TLS, with
    ``ssl_context`` or a default context that verifies the server); a database
    other than 0 is refused (a cluster has only db 0). User and password in
    the URL are used unless given as options.

    Raises:
        ConfigurationError: not a ``redis://`` / ``rediss://`` URL, or one
            naming a database other than 0 (the message masks the password).
    """
    shown = ops.masked_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 6379
    except ValueError as exc:
        raise ConfigurationError(f"cluster URL {shown!r} cannot be parsed: {exc}") from None
    if parts.scheme.lower() not in ("redis", "rediss") or not parts.hostname:
        raise ConfigurationError(
            f"cluster URL {shown!r}: expected redis://host:port or rediss://host:port"
        )
    if parts.path.strip("/") not in ("", "0"):
        raise ConfigurationError(f"cluster URL {shown!r}: a Redis Cluster has only database 0")
    if parts.username and "username" not in options:
        options["username"] = urllib.parse.unquote(parts.username)
    if parts.password and "password" not in options:
        options["password"] = urllib.parse.unquote(parts.password)
    if parts.scheme.lower() == "rediss" and options.get("ssl_context") is None:
        options["ssl_context"] = _ssl.create_default_context()
    return AsyncRedisClusterBackend([node_name(parts.hostname, port)], **options)
