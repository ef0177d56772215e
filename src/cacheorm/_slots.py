"""Redis Cluster routing without I/O: key slots, the slot map, redirections, batch rounds.

Everything here takes replies and gives decisions; nothing reads a socket. A
cluster client (:mod:`cacheorm._aio_redis_cluster`) computes each key's hash
slot (:func:`key_slot`, hash tags included), builds a :class:`SlotTable` from
``CLUSTER SHARDS`` (Redis 7+) or ``CLUSTER SLOTS``, and runs a batch as a
:class:`Route`: each round groups the commands still to send by the node that
should get them (:meth:`Route.plan`), the client sends every group at once,
and :meth:`Route.settle` files each group's replies, following ``MOVED`` and
``ASK`` and noting ``TRYAGAIN`` for the next round.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Sequence
from typing import NamedTuple, cast

from cacheorm._redis_ops import Outcome

__all__ = [
    "SLOT_COUNT",
    "Ask",
    "ClusterDown",
    "Job",
    "Moved",
    "Outcome",
    "Route",
    "RoutingError",
    "SlotTable",
    "TryAgain",
    "by_slot",
    "cluster_error",
    "key_slot",
    "node_name",
    "parse_shards",
    "parse_slots",
    "slots_of",
    "split_node",
]

#: The number of hash slots of a Redis Cluster.
SLOT_COUNT = 16384


def key_slot(key: bytes) -> int:
    """The hash slot of ``key``: CRC16 (XMODEM) of the key, or of its hash tag, mod 16384.

    The hash tag is what stands between the first ``{`` and the first ``}``
    after it, when that is not empty (the Redis Cluster specification).
    ``binascii.crc_hqx`` is that CRC16, computed in C.
    """
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) & (SLOT_COUNT - 1)


def slots_of(keys: Sequence[str]) -> list[int]:
    """The hash slot of each key, encoded as UTF-8.

    Raises:
        UnicodeEncodeError: a key is not valid UTF-8 (a lone surrogate).
    """
    crc = binascii.crc_hqx
    slots: list[int] = []
    append = slots.append
    for key in keys:
        if "{" in key:
            append(key_slot(key.encode()))
        else:
            append(crc(key.encode(), 0) & (SLOT_COUNT - 1))
    return slots


def by_slot(slots: Sequence[int]) -> dict[int, list[int]]:
    """The indices of ``slots`` grouped by slot, slots in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for i, slot in enumerate(slots):
        group = groups.get(slot)
        if group is None:
            groups[slot] = [i]
        else:
            group.append(i)
    return groups


def node_name(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def split_node(name: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port`` (``[v6]:port`` too).

    Raises:
        ValueError: ``name`` is not ``host:port`` with a numeric port.
    """
    host, sep, port = str(name).rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"cluster nodes are 'host:port', not {name!r}")
    return host, int(port)


# -- the slot map ---------------------------------------------------------------------


class SlotTable:
    """Which primary serves each hash slot, as ``host:port``.

    Attributes:
        owners: 16384 entries, the node name of each slot or None where no
            node serves it.
        nodes: every primary's name, in the order the reply listed them.
    """

    __slots__ = ("nodes", "owners")

    def __init__(self, ranges: Sequence[tuple[int, int, str]]) -> None:
        owners: list[str | None] = [None] * SLOT_COUNT
        nodes: dict[str, None] = {}
        for start, end, node in ranges:
            if not 0 <= start <= end < SLOT_COUNT:
                raise ValueError(f"slot range {start}-{end} is outside 0-{SLOT_COUNT - 1}")
            owners[start : end + 1] = [node] * (end - start + 1)
            nodes[node] = None
        self.owners = owners
        self.nodes = list(nodes)

    def node_of(self, slot: int) -> str | None:
        """The node serving ``slot``, or None."""
        return self.owners[slot]

    def moved(self, slot: int, node: str) -> None:
        """Record a MOVED reply: ``node`` serves ``slot`` now."""
        self.owners[slot] = node
        if node not in self.nodes:
            self.nodes.append(node)

    def __repr__(self) -> str:
        """The number of nodes and of slots served."""
        served = sum(owner is not None for owner in self.owners)
        return f"SlotTable({len(self.nodes)} nodes, {served} slots served)"


def _text(value: object) -> str:
    """A reply element (bytes or str) as str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _endpoint(host: str, fallback: str) -> str | None:
    """The host to connect to: ``fallback`` for an empty one, None for ``?`` (unknown)."""
    if host == "?":
        return None
    return host or fallback


def parse_shards(reply: object, origin: str, *, tls: bool = False) -> SlotTable:
    """The slot table in a ``CLUSTER SHARDS`` reply (Redis 7.0+, RESP2 flat maps).

    Each shard's slots go to its primary (``role master``; an online one when
    there are several); its address is the ``endpoint`` (``ip`` if none), an
    empty endpoint meaning ``origin``, the host that was asked; its port the
    ``tls-port`` when ``tls`` and listed, else ``port``. A ``?`` endpoint
    (unknown) leaves the shard's slots unserved.

    Raises:
        ValueError: the reply does not have the shape Redis documents.
    """
    ranges: list[tuple[int, int, str]] = []
    if not isinstance(reply, list):
        raise ValueError(f"CLUSTER SHARDS answered {type(reply).__name__}, not an array")
    for shard in cast("list[object]", reply):
        fields = _pairs(shard)
        slots = [int(_text(slot)) for slot in _array(fields.get("slots"))]
        primary = None
        for node in _array(fields.get("nodes")):
            info = _pairs(node)
            if _text(info.get("role", "")) != "master":
                continue
            primary = info
            if _text(info.get("health", "online")) == "online":
                break
        if primary is None or len(slots) % 2:
            if not slots:
                continue  # a shard without slots (or primary) serves nothing
            raise ValueError("a CLUSTER SHARDS shard lists slots but no primary")
        endpoint = primary.get("endpoint", primary.get("ip", ""))
        host = _endpoint(_text(endpoint), origin)
        if host is None:
            continue  # the primary's address is unknown: its slots stay unserved
        port = primary.get("tls-port") if tls and "tls-port" in primary else primary.get("port")
        if port is None:
            raise ValueError("a CLUSTER SHARDS primary has no port")
        name = node_name(host, int(_text(port)))
        ranges.extend((slots[i], slots[i + 1], name) for i in range(0, len(slots), 2))
    return SlotTable(ranges)


def _array(value: object) -> list[object]:
    if not isinstance(value, list):
        raise ValueError(f"expected an array in a cluster reply, not {type(value).__name__}")
    return cast("list[object]", value)


def _pairs(value: object) -> dict[str, object]:
    """A RESP2 flat map ``[name, value, name, value...]`` (or a RESP3 map) as a dict."""
    if isinstance(value, dict):
        mapping = cast("dict[object, object]", value)
        return {_text(name): item for name, item in mapping.items()}
    items = _array(value)
    return {_text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def parse_slots(reply: object, origin: str) -> SlotTable:
    """The slot table in a ``CLUSTER SLOTS`` reply: ``[start, end, [host, port, id...], ...]``.

    An empty host means ``origin`` (the host that was asked); a ``?`` host,
    an unknown address, leaves the range unserved.

    Raises:
        ValueError: the reply does not have the shape Redis documents.
    """
    ranges: list[tuple[int, int, str]] = []
    for entry in _array(reply):
        parts = _array(entry)
        if len(parts) < 3:
            raise ValueError("a CLUSTER SLOTS entry has no primary")
        primary = _array(parts[2])
        host = _endpoint(_text(primary[0]), origin)
        if host is None:
            continue
        ranges.append(
            (int(_text(parts[0])), int(_text(parts[1])), node_name(host, int(_text(primary[1]))))
        )
    return SlotTable(ranges)


# -- error replies that route -----------------------------------------------------------


class Moved(NamedTuple):
    """``MOVED slot host:port``: the slot is served elsewhere now; the command did not run."""

    slot: int
    node: str


class Ask(NamedTuple):
    """``ASK slot host:port``: send this command (after ASKING) to ``node``; it did not run."""

    slot: int
    node: str


class TryAgain(NamedTuple):
    """``TRYAGAIN``: a multi-key command over a slot being migrated; it did not run."""


class ClusterDown(NamedTuple):
    """``CLUSTERDOWN``: the cluster (or this slot) is not served now; the command did not run."""


def cluster_error(message: str, origin: str) -> Moved | Ask | TryAgain | ClusterDown | None:
    """What an error reply means for routing, or None for any other error.

    ``origin`` is the name of the node that answered: a redirection with an
    empty host (``MOVED 3999 :6380``) means that node's host.
    """
    head, _, rest = message.partition(" ")
    if head in ("MOVED", "ASK"):
        slot, _, address = rest.strip().partition(" ")
        host, _, port = address.rpartition(":")
        if not slot.isdigit() or not port.isdigit():
            return None
        if host.startswith("["):
            host = host[1:-1]
        node = node_name(host or split_node(origin)[0], int(port))
        return Moved(int(slot), node) if head == "MOVED" else Ask(int(slot), node)
    if head == "TRYAGAIN":
        return TryAgain()
    if head == "CLUSTERDOWN":
        return ClusterDown()
    return None


# -- one batch, round by round ----------------------------------------------------------


class RoutingError(Exception):
    """The cluster could not route a command: no slot map, no node for its slot, or
    redirections without end. Nothing was applied."""


class Job(NamedTuple):
    """Commands of one round for one node: their indices, and whether each goes after ASKING."""

    node: str
    asking: bool
    indices: list[int]


class Route:
    """The routing of one cluster batch: which node gets which command, until all are answered.

    Build it with each command's slot, a function giving the message of an
    error reply (None for any other reply) and the cluster's name (for
    failures that concern no one node), then repeat: :meth:`plan` (the jobs of
    this round, grouped by node), send each job's commands (each after an
    ``ASKING`` when ``job.asking``), :meth:`settle` each job with its replies
    or its failure, and :meth:`advance`, which says whether another round is
    due (and what to do first: :attr:`refresh` the slot table, :attr:`wait`
    before resending). At most ``max_redirects`` rounds follow the first.

    Attributes:
        outcome: each command's reply (an error reply as the value the
            connection gave), or :class:`Outcome` where it got none.
        failures: ``(node, error)`` of every node that failed, and of routing
            that gave up.
        refresh: a MOVED reply or a failed node calls for a new slot table.
        wait: a TRYAGAIN reply calls for a short pause before the next round.
    """

    __slots__ = (
        "_asks",
        "_cluster",
        "_error_message",
        "_max",
        "_pending",
        "_resent",
        "_round",
        "_slots",
        "failures",
        "outcome",
        "refresh",
        "wait",
    )

    def __init__(
        self,
        slots: Sequence[int],
        error_message: Callable[[object], str | None],
        cluster: str = "cluster",
        max_redirects: int = 5,
    ) -> None:
        self._slots = slots
        self._cluster = cluster
        self._error_message = error_message
        self._max = max_redirects
        self._round = 0
        self._pending: list[int] = list(range(len(slots)))
        self._asks: dict[int, str] = {}
        self._resent: set[int] = set()
        self.outcome: list[object] = [Outcome.NOT_SENT] * len(slots)
        self.failures: list[tuple[str, BaseException]] = []
        self.refresh = False
        self.wait = False

    def plan(self, table: SlotTable, unserved: Callable[[int], BaseException]) -> list[Job]:
        """This round's jobs: the pending commands grouped by node (ASK targets apart).

        A command whose slot no node serves stays ``NOT_SENT`` and adds the
        failure ``unserved(slot)``.
        """
        groups: dict[tuple[str, bool], Job] = {}
        owners = table.owners
        asks = self._asks
        for i in self._pending:
            node = asks.get(i) if asks else None
            asking = node is not None
            if node is None:
                node = owners[self._slots[i]]
                if node is None:
                    self.failures.append((self._cluster, unserved(self._slots[i])))
                    continue
            job = groups.get((node, asking))
            if job is None:
                job = groups[(node, asking)] = Job(node, asking, [])
            job.indices.append(i)
        self._pending = []
        self.refresh = self.wait = False
        return list(groups.values())

    def settle(
        self,
        job: Job,
        replies: Sequence[object] | None,
        error: BaseException | None = None,
        sent: bool = True,
        table: SlotTable | None = None,
        resend: bool = False,
    ) -> None:
        """File ``job``'s replies (in order, without ASKING's), or its failure.

        With ``error`` (the node failed), ``replies`` are those that arrived
        before it (None or a prefix) and are filed as usual; for the others
        ``sent`` says whether they may have reached the node (UNKNOWN) or
        certainly did not (NOT_SENT), and with ``resend`` (the caller knows
        resending is safe) they are planned again instead, once. A MOVED
        reply updates ``table``, if given, and the command is planned again;
        so is an ASK (to its target) and a TRYAGAIN.
        """
        if error is None:
            assert replies is not None
            self._file(job, job.indices, replies, table)
            return
        known = list(replies or ())
        self._file(job, job.indices[: len(known)], known, table)
        rest = job.indices[len(known) :]
        self.refresh = True  # a failover may have moved the node's slots
        if resend and self._resent.isdisjoint(rest):
            self._resent.update(rest)
            self._pending.extend(rest)
            return
        self.failures.append((job.node, error))
        lost = Outcome.UNKNOWN if sent else Outcome.NOT_SENT
        for i in rest:
            self.outcome[i] = lost

    def _file(
        self, job: Job, indices: Sequence[int], replies: Sequence[object], table: SlotTable | None
    ) -> None:
        """Record the replies of ``job``'s commands ``indices``; plan redirected ones again."""
        message_of = self._error_message
        outcome = self.outcome
        for i, reply in zip(indices, replies, strict=True):
            message = message_of(reply)
            if message is None:
                outcome[i] = reply
                continue
            route = cluster_error(message, job.node)
            if route is None:
                outcome[i] = reply
            elif isinstance(route, ClusterDown):
                outcome[i] = Outcome.NOT_SENT
                self.failures.append((job.node, _as_exception(reply, message)))
            else:
                outcome[i] = Outcome.NOT_SENT
                self._pending.append(i)
                self._asks.pop(i, None)
                if isinstance(route, Moved):
                    self.refresh = True
                    if table is not None:
                        table.moved(route.slot, route.node)
                elif isinstance(route, Ask):
                    self._asks[i] = route.node
                else:
                    self.wait = True
                    if job.asking:  # TRYAGAIN from the importing node: ask it again
                        self._asks[i] = job.node

    def advance(self) -> bool:
        """Whether another round is due; when the redirections are used up, a failure instead."""
        if not self._pending:
            return False
        if self._round >= self._max:
            error = RoutingError(f"still redirected after {self._max} redirections")
            self.failures.append((self._cluster, error))
            self._pending = []
            return False
        self._round += 1
        return True

    @property
    def pending(self) -> list[int]:
        """The commands the next round sends."""
        return self._pending


def _as_exception(reply: object, message: str) -> BaseException:
    """``reply`` if it is an exception, else one with its message."""
    if isinstance(reply, BaseException):
        return reply
    return RoutingError(message)
