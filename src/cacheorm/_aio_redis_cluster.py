"""An asyncio Redis Cluster backend on cacheorm's own auto-pipelined connections.

One :class:`~cacheorm._aio_redis.RedisConnection` per primary, shared by
every task; the slot map comes from ``CLUSTER SHARDS`` (``CLUSTER SLOTS``
before Redis 7) on first use, and the routing decisions (slots, grouping,
``MOVED`` / ``ASK`` / ``TRYAGAIN``) are the sans-I/O ones of
:mod:`cacheorm._slots`. A batch goes to every node at once. The operations
themselves are :class:`~cacheorm.AsyncRedisBackend`'s: this class overrides
only its transport hooks (``_call``, ``_one``, ``_write_batch``, error naming)
and the operations whose commands span slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl as _ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

from cacheorm import _redis_ops as ops
from cacheorm._aio_redis import (
    AsyncRedisBackend,
    ConnectionLost,
    RedisConnection,
    RequestTimeout,
    _seconds,  # pyright: ignore[reportPrivateUsage]
)
from cacheorm._checks import as_items as _as_items
from cacheorm._checks import check_batch as _check_batch
from cacheorm._checks import check_key as _check_key
from cacheorm._errors import ConfigurationError
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

__all__ = ["AsyncRedisClusterBackend", "cluster_from_url"]

#: How many MOVED / ASK / TRYAGAIN rounds one batch follows before giving up.
_MAX_REDIRECTS = 5
#: How long to wait before resending after TRYAGAIN (a slot being migrated).
_TRYAGAIN_DELAY = 0.05

#: get_many on one node: GET every key (ARGV, whatever its slot; the node must serve them
#: all, else the script fails and the caller reads by slot). A key of another type
#: reads as nil, as in MGET (the caller then checks the misses); any other error fails
#: the script. Redis 7.0+ (the shebang flags).
_GET_SCRIPT = """#!lua flags=no-writes,allow-cross-slot-keys
local values = {}
for i, key in ipairs(ARGV) do
  local value = redis.pcall('GET', key)
  if type(value) == 'table' and value.err then
    if string.sub(value.err, 1, 9) ~= 'WRONGTYPE' then
      return value
    end
    value = false
  end
  values[i] = value
end
return values
"""
_GET_SHA = hashlib.sha1(_GET_SCRIPT.encode(), usedforsecurity=False).hexdigest()

#: The command that gives the slot map (CLUSTER SLOTS is asked where it is unknown).
_SHARDS = ("CLUSTER", "SHARDS")

_UNKNOWN = ops.UNKNOWN


#: The keys an operation concerns, for its messages: one key or several.
_Keys = str | Sequence[str]


def _message(reply: object) -> str | None:
    """The message of an error reply, None for any other reply."""
    return reply.message if isinstance(reply, ReplyError) else None


class AsyncRedisClusterBackend(AsyncRedisBackend):
    """Stores bytes in a Redis Cluster, from asyncio.

    An :class:`~cacheorm.AsyncRedisBackend` whose requests are routed: the
    operations, their commands, TTL rules (``KEEP_TTL`` included), retries
    and errors are that class's (and so :class:`~cacheorm.RedisBackend`'s on
    a cluster); this class only decides where each command goes. Keys are
    routed by hash slot (``{tags}`` included); a batch groups its keys by node
    (an MSET / DEL per slot, or a command per key) and sends one pipeline to
    every node at once, so it costs about one round trip. Each node gets one
    connection, shared by every task and pipelined automatically.

    **get_many** sends each node one read-only Lua script (Redis 7's
    ``allow-cross-slot-keys``) that GETs all of that node's keys, instead of
    an MGET per slot: three nodes, three commands. Keys a script cannot read
    (a slot that moved or is migrating, a server before Redis 7) are read
    with a GET / MGET per slot, which follows the redirections below.

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
        ConfigurationError: a timeout that is not a positive number.
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
        self._startup = list(dict.fromkeys(startup))
        self._server = "cluster " + ",".join(self._startup)
        self._options: dict[str, Any] = {
            "connect_timeout": _seconds("connect_timeout", connect_timeout),
            "timeout": _seconds("timeout", timeout),
            "username": username,
            "password": password,
            "ssl": ssl_context,
        }
        self._password = password or None
        self._db = 0
        self._remap = address_remap
        self._table: SlotTable | None = None
        self._connections: dict[str, RedisConnection] = {}
        self._refreshing: asyncio.Task[SlotTable] | None = None
        self._suspects: set[str] = set()
        #: Whether get_many reads a node's keys with one script (False on Redis < 7).
        self._node_scripts = True
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
            ConfigurationError: an unknown option (``db`` included: a cluster
                has only database 0), or a bad timeout.
        """
        _check_options("AsyncRedisClusterBackend.from_cluster", options)
        return cls(nodes, **options)

    @classmethod
    def from_url(
        cls, url: str, *, cluster: bool = True, **options: Any
    ) -> AsyncRedisClusterBackend:
        """A backend on the cluster of the node in ``url``: see :func:`cluster_from_url`.

        ``cluster`` is accepted for symmetry with ``AsyncRedisBackend.from_url``;
        the backend is a cluster backend either way.
        """
        return cluster_from_url(url, **options)

    @property
    def server(self) -> str:
        """``"cluster "`` and the startup nodes' ``host:port``, comma-separated."""
        return self._server

    def __repr__(self) -> str:
        """The class and the startup nodes; never a password."""
        return f"AsyncRedisClusterBackend(cluster={self._server.removeprefix('cluster ')!r})"

    # -- topology --------------------------------------------------------------------

    def _node_connection(self, node: str) -> RedisConnection:
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
        connection = self._node_connection(node)
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
            connection = self._node_connection(job.node)
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
                    known = result.replies[1::2] if job.asking else result.replies
                    route.settle(job, known, result, result.sent, resend=resend)
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

    def _slots(self, op: str, keys: Sequence[str]) -> list[int]:
        """Each key's hash slot; BackendError for a key that is not UTF-8."""
        try:
            return slots_of(keys)
        except UnicodeEncodeError as exc:
            raise ops.failed(op, keys, self._detail(exc), self._server) from exc

    # -- the transport hooks of AsyncRedisBackend -------------------------------------

    async def _call(
        self, op: str, keys: _Keys, commands: Sequence[tuple[Any, ...]], idempotent: bool = True
    ) -> list[Any]:
        """Send each command to the node of its key; their replies (error replies as values).

        Raises:
            BackendUnavailable: a node failed or a slot could not be routed.
            OutcomeUnknown: a command that must not be resent was sent and its
                reply lost.
        """
        slots = self._slots(op, [_key_of(command) for command in commands])
        route = await self._batch(op, keys, commands, slots, idempotent)
        if route.failures:
            node, exc = route.failures[0]
            if not idempotent and _UNKNOWN in route.outcome:
                key = keys if isinstance(keys, str) else ops.describe(keys)[1] or ""
                raise ops.unknown(op, key, self._detail(exc), node, type(exc).__name__) from exc
            raise self._fail(op, keys, exc, node) from exc
        return route.outcome

    async def _one(
        self, op: str, key: str, command: tuple[Any, ...], idempotent: bool = True
    ) -> Any:
        """One command: straight to its key's node when the slot map and the connection are
        there, the routed path (redirections, resends) on anything but a plain reply."""
        table = self._table
        if table is not None and idempotent:
            try:
                node = table.owners[slots_of((key,))[0]] or ""
            except UnicodeEncodeError:
                node = ""  # the routed path reports it
            connection = self._connections.get(node)
            if connection is not None:
                try:
                    (reply,) = await connection.execute((command,))
                except RequestTimeout as exc:  # never resent after a timeout
                    raise self._fail(op, key, exc, node) from exc
                except ConnectionLost:
                    pass  # resent on the routed path
                else:
                    if not isinstance(reply, ReplyError):
                        return reply
                    if cluster_error(reply.message, node) is None:
                        raise self._refused(op, key, reply) from reply
        return await super()._one(op, key, command, idempotent)

    async def _write_batch(
        self,
        op: str,
        commands: list[tuple[Any, ...]],
        command_keys: Sequence[Sequence[str]],
        idempotent: bool,
        conditional: bool = False,
    ) -> list[Any]:
        """Run write ``commands`` (command i writes ``command_keys[i]``, all in one slot):
        a pipeline per node, at once; their replies, or BatchWriteError saying what was
        written."""
        slots = self._slots(op, [keys[0] for keys in command_keys])
        every = [key for keys in command_keys for key in keys]
        route = await self._batch(op, every, commands, slots, idempotent)
        if route.failures:
            failures = [(node, self._detail(exc)) for node, exc in route.failures]
            raise ops.batch_error(
                op, command_keys, route.outcome, failures, self._server, conditional
            ) from route.failures[0][1]
        return route.outcome

    # -- errors --------------------------------------------------------------------------

    def _node_of(self, key: str | None) -> str:
        """The node that serves ``key`` per the slot map, else the cluster's name."""
        table = self._table
        if key is None or table is None:
            return self._server
        with contextlib.suppress(UnicodeEncodeError):
            node = table.owners[slots_of((key,))[0]]
            if node is not None:
                return node
        return self._server

    def _refused(self, op: str, keys: str | Sequence[str], reply: BaseException) -> Exception:
        """The cacheorm exception for an error reply, naming the node of the key."""
        return self._fail(op, keys, reply)

    def _fail(
        self, op: str, keys: str | Sequence[str], exc: BaseException, server: str | None = None
    ) -> Exception:
        """The cacheorm exception for ``exc`` during ``op`` on ``keys`` (on ``server``).

        A connection failure, a routing failure and the error replies that
        refuse a command unapplied (CLUSTERDOWN, LOADING) are
        BackendUnavailable; any other error reply is what ``ops.refused``
        makes of it.
        """
        detail = self._detail(exc)
        if server is None:
            server = self._node_of(ops.describe(keys)[1])
        if isinstance(exc, ReplyError) and exc.code not in ("CLUSTERDOWN", "LOADING"):
            return ops.refused(op, keys, detail, server)
        return ops.unavailable(op, keys, detail, server, type(exc).__name__)

    # -- the operations whose commands span slots ---------------------------------------

    async def get(self, key: str, /) -> bytes | None:
        """The value under ``key`` (GET), or None if absent or expired."""
        value: bytes | None = await self._one("GET", key, ("GET", _check_key(key)))
        return value

    async def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        """The values under ``keys``: one script per node (Redis 7+), nodes at once.

        Each node that holds two keys or more of the batch gets one read-only
        script (EVALSHA, EVAL on NOSCRIPT) that GETs them all, whatever their
        slots (``allow-cross-slot-keys``): three nodes cost three commands,
        not one per slot. The keys a script could not read (a slot that moved
        or is migrating, Redis < 7) and the nodes with one key get a GET or
        MGET per slot, which follows MOVED / ASK / TRYAGAIN. Misses are then
        checked with EXISTS, as on one server.
        """
        keys = ops.key_list(keys)
        if not keys:
            return []
        slots = self._slots("MGET", keys)
        values: list[bytes | None] = [None] * len(keys)
        rest = await self._get_by_node(keys, slots, values)
        if rest:
            await self._get_by_slot(keys, [slots[i] for i in rest], rest, values)
        if None in values:
            await self._foreign_misses([k for k, v in zip(keys, values, strict=True) if v is None])
        return values

    async def _get_by_node(
        self, keys: list[str], slots: list[int], values: list[bytes | None]
    ) -> list[int]:
        """Read the keys with one script per node into ``values``; the indices left to read."""
        table = await self._slot_table("MGET", keys)
        groups: dict[str | None, list[int]] = {}
        owners = table.owners
        for i, slot in enumerate(slots):
            node = owners[slot]
            group = groups.get(node)
            if group is None:
                groups[node] = [i]
            else:
                group.append(i)
        scripted = [ix for node, ix in groups.items() if node is not None and len(ix) > 1]
        if not scripted or not self._node_scripts:
            return list(range(len(keys)))
        rest = [i for node, ix in groups.items() if node is None or len(ix) == 1 for i in ix]
        commands = [("EVALSHA", _GET_SHA, 0, *[keys[i] for i in ix]) for ix in scripted]
        replies = await self._call("MGET", keys, commands)
        redo = [
            n
            for n, reply in enumerate(replies)
            if isinstance(reply, ReplyError) and reply.code == "NOSCRIPT"
        ]
        if redo:
            again = [("EVAL", _GET_SCRIPT, *commands[n][2:]) for n in redo]
            for n, reply in zip(redo, await self._call("MGET", keys, again), strict=True):
                replies[n] = reply
        for indices, reply in zip(scripted, replies, strict=True):
            if isinstance(reply, ReplyError):
                if "compil" in reply.message or "shebang" in reply.message:  # Redis < 7
                    self._node_scripts = False
                rest.extend(indices)  # read by slot, following redirections
                continue
            for i, value in zip(indices, cast("list[bytes | None]", reply), strict=True):
                values[i] = value
        return rest

    async def _get_by_slot(
        self, keys: list[str], slots: list[int], indices: list[int], values: list[bytes | None]
    ) -> None:
        """Read ``keys[i]`` for ``i`` in ``indices`` (``slots[n]`` is the slot of the n-th)
        into ``values``: a GET or MGET per slot, routed, redirections followed."""
        groups = [[indices[n] for n in ix] for ix in by_slot(slots).values()]
        # A slot with one key (most of them, in a big batch) gets a GET, whose
        # reply is cheaper to parse than a one-element MGET array.
        commands = [
            ("GET", keys[ix[0]]) if len(ix) == 1 else ("MGET", *[keys[i] for i in ix])
            for ix in groups
        ]
        replies = await self._call("MGET", keys, commands)
        self._first_error("MGET", replies, [keys[ix[0]] for ix in groups])
        for group, reply in zip(groups, replies, strict=True):
            if len(group) == 1:
                values[group[0]] = reply
            else:
                for i, value in zip(group, reply, strict=True):
                    values[i] = value

    async def _foreign_misses(self, keys: list[str]) -> None:
        """Raise BackendError if a key MGET answered nil for holds another Redis type.

        One EXISTS per slot of the misses (one more round trip, only for a
        batch with misses); only if some exists are their types read.
        """
        keys = list(dict.fromkeys(keys))
        groups = list(by_slot(self._slots("EXISTS", keys)).values())
        replies = await self._call("EXISTS", keys, [_per_slot("EXISTS", keys, ix) for ix in groups])
        self._first_error("EXISTS", replies, [keys[ix[0]] for ix in groups])
        if sum(replies):
            await self._refuse_foreign("TYPE", keys)

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
        if ms is None:  # an MSET per slot
            keys = [key for key, _ in pairs]
            groups = list(by_slot(self._slots("MSET", keys)).values())
            op = "MSET"
            commands = [("MSET", *[part for i in ix for part in pairs[i]]) for ix in groups]
            command_keys = [[keys[i] for i in ix] for ix in groups]
        else:
            op, commands, command_keys = ops.set_many_commands(pairs, ms)
        replies = await self._write_batch(op, commands, command_keys, idempotent=True)
        self._first_error(op, replies, [keys[0] for keys in command_keys])

    async def delete_many(self, keys: Sequence[str], /) -> int:
        """Remove ``keys`` (a DEL per slot, pipelined per node); the number that existed.

        Raises:
            BatchWriteError: a node failed part-way; ``written`` lists the keys
                confirmed removed (or absent).
        """
        keys = ops.key_list(keys)
        if not keys:
            return 0
        groups = list(by_slot(self._slots("DEL", keys)).values())
        commands = [_per_slot("DEL", keys, ix) for ix in groups]
        command_keys = [[keys[i] for i in ix] for ix in groups]
        replies = await self._write_batch("DEL", commands, command_keys, idempotent=True)
        self._first_error("DEL", replies, [keys[ix[0]] for ix in groups])
        return sum(cast("list[int]", replies))

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
                    (reply,) = await self._node_connection(node).execute([command])
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
        """Close every node's connection; calls in flight fail, and the backend is not used
        after this. A reload of the slot map under way fails with them."""
        self._closed = True
        connections = list(self._connections.values())
        self._connections.clear()
        await asyncio.gather(*(connection.aclose() for connection in connections))
        refreshing = self._refreshing
        if refreshing is not None:
            await asyncio.wait([refreshing])


def _key_of(command: tuple[Any, ...]) -> str:
    """The (first) key of a command: EVAL / EVALSHA's first KEYS, else its first argument."""
    return str(command[3] if command[0] in ("EVALSHA", "EVAL") else command[1])


def _per_slot(name: str, keys: Sequence[str], indices: Sequence[int]) -> tuple[Any, ...]:
    """The multi-key command ``name`` over the keys at ``indices`` (all in one slot)."""
    return (name, *[keys[i] for i in indices])


#: What from_cluster and from_url accept.
_OPTIONS = frozenset(
    {"connect_timeout", "timeout", "username", "password", "ssl_context", "address_remap"}
)


def _check_options(where: str, options: dict[str, Any]) -> None:
    """ConfigurationError naming the first option ``where`` does not know."""
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        hint = "; a Redis Cluster has only database 0" if "db" in unknown else ""
        raise ConfigurationError(
            f"{where}: unknown option {unknown[0]!r}; the options are "
            f"{', '.join(sorted(_OPTIONS))}{hint}"
        )


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

    Args:
        url: the URL of any node of the cluster.
        **options: as for :meth:`AsyncRedisClusterBackend.from_cluster`.

    Raises:
        ConfigurationError: not a ``redis://`` / ``rediss://`` URL, one naming
            a database other than 0, or an unknown option (the message masks
            the password).
    """
    shown = ops.masked_url(url)
    _check_options(f"AsyncRedisClusterBackend.from_url({shown!r})", options)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 6379
    except ValueError as exc:
        detail = ops.mask(str(exc), ops.url_password(url))
        raise ConfigurationError(f"cluster URL {shown!r} cannot be parsed: {detail}") from None
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
