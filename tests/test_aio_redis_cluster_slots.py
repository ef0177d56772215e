"""Cluster routing without I/O (cacheorm._slots): key slots, slot tables, redirections, rounds."""

from __future__ import annotations

import random
import string

import pytest

from cacheorm._slots import (
    SLOT_COUNT,
    Ask,
    ClusterDown,
    Job,
    Moved,
    Outcome,
    Route,
    RoutingError,
    SlotTable,
    TryAgain,
    by_slot,
    cluster_error,
    key_slot,
    node_name,
    parse_shards,
    parse_slots,
    slots_of,
    split_node,
)


def reference_crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), table-driven, as in the Redis Cluster specification's crc16.c."""
    table: list[int] = []
    for byte in range(256):
        entry = byte << 8
        for _ in range(8):
            entry = ((entry << 1) ^ 0x1021) if entry & 0x8000 else entry << 1
        table.append(entry & 0xFFFF)
    crc: int = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ byte) & 0xFF]
    return crc


def reference_slot(key: bytes) -> int:
    """The slot rule of the specification, written out plainly."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end != -1 and end != start + 1:
            key = key[start + 1 : end]
    return reference_crc16(key) % SLOT_COUNT


def random_keys(count: int, seed: int = 12) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "{}:_ é€"
    return ["".join(rng.choices(alphabet, k=rng.randint(0, 24))) for _ in range(count)]


# -- key slots ---------------------------------------------------------------------------


def test_crc16_matches_the_specification_vector_and_a_table_driven_crc() -> None:
    """The specification's check value (0x31C3 for "123456789"), and 4,000 random keys
    hashed to the same slot as a table-driven CRC16 and the specification's tag rule."""
    assert reference_crc16(b"123456789") == 0x31C3
    assert key_slot(b"123456789") == 0x31C3 % SLOT_COUNT
    keys = random_keys(4_000)
    assert slots_of(keys) == [reference_slot(k.encode()) for k in keys]
    assert [key_slot(k.encode()) for k in keys] == [reference_slot(k.encode()) for k in keys]


def test_slots_match_redis_py() -> None:
    """The same slot as redis-py's key_slot for random keys, tags and edge cases."""
    crc = pytest.importorskip("redis.crc")
    keys = [
        *random_keys(5_000, seed=3),
        "",
        "{",
        "}",
        "{}",
        "{}x",
        "a{b}c",
        "a{}{b}",
        "{{a}}",
        "x}{y}",
    ]
    assert slots_of(keys) == [crc.key_slot(k.encode()) for k in keys]


def test_hash_tags_put_keys_in_one_slot() -> None:
    """Keys with the same non-empty tag share a slot; an empty tag hashes the whole key."""
    assert len(set(slots_of(["{user1000}.following", "{user1000}.followers", "user1000"]))) == 1
    assert key_slot(b"foo{}{bar}") == reference_crc16(b"foo{}{bar}") % SLOT_COUNT
    assert key_slot(b"foo{{bar}}zap") == key_slot(b"{bar")
    assert key_slot(b"foo{bar}{zap}") == key_slot(b"bar")


def test_a_key_that_is_not_utf8_is_refused() -> None:
    """A lone surrogate cannot be encoded: UnicodeEncodeError names it."""
    with pytest.raises(UnicodeEncodeError, match="ud800"):
        slots_of(["ok", "a\ud800"])


def test_by_slot_keeps_the_original_indices() -> None:
    """Indices grouped by slot, slots in order of first appearance."""
    assert by_slot([7, 3, 7, 9, 3, 7]) == {7: [0, 2, 5], 3: [1, 4], 9: [3]}
    assert list(by_slot([7, 3, 7, 9])) == [7, 3, 9]
    assert by_slot([]) == {}


def test_node_names() -> None:
    """host:port, IPv6 hosts in brackets, both ways; anything else is a ValueError."""
    assert node_name("127.0.0.1", 7000) == "127.0.0.1:7000"
    assert node_name("::1", 7000) == "[::1]:7000"
    assert split_node("[::1]:7000") == ("::1", 7000)
    assert split_node("redis.example:6379") == ("redis.example", 6379)
    for bad in ("localhost", "host:port", ":6379", "h:0", "h:70000", ""):
        with pytest.raises(ValueError, match="host:port"):
            split_node(bad)


# -- slot tables ---------------------------------------------------------------------------


def shard(slots: list[object], *nodes: list[object]) -> list[object]:
    return [b"slots", slots, b"nodes", list(nodes)]


def node(
    port: int, role: bytes = b"master", endpoint: bytes = b"127.0.0.1", **more: object
) -> list[object]:
    fields: list[object] = [
        b"id",
        b"x" * 40,
        b"port",
        port,
        b"ip",
        b"127.0.0.1",
        b"endpoint",
        endpoint,
    ]
    fields += [b"role", role, b"replication-offset", 0]
    for name, value in more.items():
        fields += [name.replace("_", "-").encode(), value]
    if "health" not in more:
        fields += [b"health", b"online"]
    return fields


def test_parse_shards() -> None:
    """Each shard's ranges go to its primary; replicas, shards without slots and primaries
    with an unknown endpoint serve nothing; an empty endpoint is the host asked; TLS ports."""
    reply = [
        shard([0, 100, 200, 300], node(7001, b"replica"), node(7000)),
        shard([b"101", b"199"], node(7002, endpoint=b"")),
        shard([301, 400], node(7003, endpoint=b"?")),
        shard([], node(7004)),
        shard(
            [401, 16383], node(7005, health=b"failed"), node(7006, health=b"online", tls_port=7106)
        ),
    ]
    table = parse_shards(reply, "10.0.0.1")
    assert table.nodes == ["127.0.0.1:7000", "10.0.0.1:7002", "127.0.0.1:7006"]
    assert table.node_of(0) == table.node_of(100) == table.node_of(250) == "127.0.0.1:7000"
    assert table.node_of(150) == "10.0.0.1:7002"
    assert table.node_of(350) is None
    assert table.node_of(16383) == "127.0.0.1:7006"
    assert parse_shards(reply, "h", tls=True).node_of(500) == "127.0.0.1:7106"
    assert repr(table) == "SlotTable(3 nodes, 16284 slots served)"


def test_parse_shards_refuses_a_reply_of_another_shape() -> None:
    """Not an array, slots without a primary or a port, odd slot lists: ValueError."""
    bad: list[object] = [
        b"OK",
        [[b"slots", b"0"]],
        [shard([0, 1], node(7001, b"replica"))],
        [shard([0], node(7000))],
        [shard([0, 1], [b"role", b"master", b"ip", b"h"])],
        [shard([0, 16384], node(7000))],
    ]
    for reply in bad:
        with pytest.raises(ValueError, match=r"CLUSTER SHARDS|array|slot range"):
            parse_shards(reply, "h")


def test_parse_slots() -> None:
    """Ranges go to the first node listed (the primary); "" is the host asked, "?" unknown."""
    reply: list[object] = [
        [0, 5460, [b"127.0.0.1", 7000, b"id1", []], [b"127.0.0.1", 7003, b"id4", []]],
        [5461, 10922, [b"", 7001, b"id2"]],
        [10923, 16383, [b"?", 7002, b"id3"]],
    ]
    table = parse_slots(reply, "10.0.0.1")
    assert table.nodes == ["127.0.0.1:7000", "10.0.0.1:7001"]
    assert table.node_of(5460) == "127.0.0.1:7000"
    assert table.node_of(5461) == "10.0.0.1:7001"
    assert table.node_of(16383) is None
    for bad in (b"OK", [[0, 10]], [[0, 10, b"h"]]):
        with pytest.raises(ValueError, match=r"array|no primary"):
            parse_slots(bad, "h")


def test_a_moved_reply_updates_the_table() -> None:
    """moved() gives the slot to the node, adding the node if it is new."""
    table = SlotTable([(0, SLOT_COUNT - 1, "a:1")])
    table.moved(5, "b:2")
    assert (table.node_of(4), table.node_of(5), table.nodes) == ("a:1", "b:2", ["a:1", "b:2"])
    table.moved(6, "b:2")
    assert table.nodes == ["a:1", "b:2"]


# -- error replies ----------------------------------------------------------------------------


def test_cluster_errors() -> None:
    """MOVED and ASK name the slot and node (an empty host is the answering node's);
    TRYAGAIN and CLUSTERDOWN are recognised; any other error is not routing's."""
    assert cluster_error("MOVED 3999 127.0.0.1:6381", "x:1") == Moved(3999, "127.0.0.1:6381")
    assert cluster_error("ASK 3999 127.0.0.1:6381", "x:1") == Ask(3999, "127.0.0.1:6381")
    assert cluster_error("MOVED 3999 :6381", "10.1.1.1:7000") == Moved(3999, "10.1.1.1:6381")
    assert cluster_error("MOVED 1 [::1]:6381", "x:1") == Moved(1, "[::1]:6381")
    assert cluster_error("MOVED 1 ::1:6381", "x:1") == Moved(1, "[::1]:6381")
    assert (
        cluster_error("TRYAGAIN Multiple keys request during rehashing of slot", "x:1")
        == TryAgain()
    )
    assert cluster_error("CLUSTERDOWN Hash slot not served", "x:1") == ClusterDown()
    for other in ("ERR wrong number", "MOVED", "MOVED x y", "MOVED 1 host", "WRONGTYPE Operation"):
        assert cluster_error(other, "x:1") is None


# -- routing rounds ------------------------------------------------------------------------------


class Err(Exception):
    """An error reply, as a connection hands it back."""


def message(reply: object) -> str | None:
    return str(reply) if isinstance(reply, Err) else None


def two_nodes() -> SlotTable:
    return SlotTable([(0, 99, "a:1"), (100, SLOT_COUNT - 1, "b:1")])


def test_a_round_groups_by_node_and_files_replies_in_order() -> None:
    """One job per node, indices in input order; replies land at their indices."""
    route = Route([5, 150, 6, 200], message)
    jobs = route.plan(two_nodes(), KeyError)
    assert jobs == [Job("a:1", False, [0, 2]), Job("b:1", False, [1, 3])]
    route.settle(jobs[0], [b"x", None])
    error = Err("WRONGTYPE Operation against a key")
    route.settle(jobs[1], [error, 1])
    assert route.outcome == [b"x", error, None, 1]
    assert route.advance() is False
    assert route.failures == []


def test_moved_ask_and_tryagain_send_the_command_again() -> None:
    """MOVED re-plans to the new owner (and updates the table, asking for a refresh); ASK
    sends to the target with ASKING, once; TRYAGAIN waits and resends where it was sent."""
    table = two_nodes()
    route = Route([5, 6, 7, 150], message)
    jobs = route.plan(table, KeyError)
    route.settle(jobs[0], [Err("MOVED 5 b:1"), Err("ASK 6 c:1"), Err("TRYAGAIN x")], table=table)
    route.settle(jobs[1], [b"ok"])
    assert route.outcome == [Outcome.NOT_SENT, Outcome.NOT_SENT, Outcome.NOT_SENT, b"ok"]
    assert (route.refresh, route.wait) == (True, True)
    assert route.pending == [0, 1, 2]
    assert route.advance() is True
    assert table.node_of(5) == "b:1"
    jobs = route.plan(table, KeyError)
    assert (route.refresh, route.wait) == (False, False)
    assert jobs == [Job("b:1", False, [0]), Job("c:1", True, [1]), Job("a:1", False, [2])]
    route.settle(jobs[1], [Err("TRYAGAIN x")])  # the importing node: ask it again
    route.settle(jobs[0], [b"m"])
    route.settle(jobs[2], [b"t"])
    assert route.advance() is True
    assert route.plan(table, KeyError) == [Job("c:1", True, [1])]


def test_redirections_are_bounded() -> None:
    """After max_redirects rounds the remaining commands stay NOT_SENT with a failure."""
    route = Route([5], message, cluster="cluster a:1", max_redirects=2)
    rounds = 0
    while True:
        jobs = route.plan(two_nodes(), KeyError)
        rounds += 1
        route.settle(jobs[0], [Err("TRYAGAIN x")])
        if not route.advance():
            break
    assert rounds == 3
    assert route.outcome == [Outcome.NOT_SENT]
    assert route.failures[0][0] == "cluster a:1"
    assert "still redirected after 2 redirections" in str(route.failures[0][1])


def test_failed_nodes_and_unserved_slots() -> None:
    """A failed job's commands are UNKNOWN if sent, else NOT_SENT, and ask for a refresh;
    an unserved slot is a failure from ``unserved``; CLUSTERDOWN is NOT_SENT and a failure."""
    table = SlotTable([(0, 99, "a:1"), (100, 199, "b:1"), (300, 399, "c:1")])
    route = Route([5, 150, 250, 350], message, cluster="the cluster")
    jobs = route.plan(table, lambda slot: LookupError(f"slot {slot}"))
    assert [job.node for job in jobs] == ["a:1", "b:1", "c:1"]
    lost, refused = OSError("lost"), OSError("refused")
    route.settle(jobs[0], None, lost, sent=True)
    route.settle(jobs[1], None, refused, sent=False)
    route.settle(jobs[2], ["CLUSTERDOWN is a plain string here"])
    assert route.outcome == [
        Outcome.UNKNOWN,
        Outcome.NOT_SENT,
        Outcome.NOT_SENT,
        "CLUSTERDOWN is a plain string here",
    ]
    down = Route([350], message)
    down.settle(down.plan(table, KeyError)[0], [Err("CLUSTERDOWN Hash slot not served")])
    assert down.outcome == [Outcome.NOT_SENT]
    assert isinstance(down.failures[0][1], Err)
    assert [name for name, _ in route.failures] == ["the cluster", "a:1", "b:1"]
    assert str(route.failures[0][1]) == "'slot 250'" or "slot 250" in str(route.failures[0][1])
    assert route.refresh is True
    assert route.advance() is False
    plain = Route([350], lambda reply: reply if isinstance(reply, str) else None)
    plain.settle(plain.plan(table, KeyError)[0], ["CLUSTERDOWN down"])
    assert isinstance(plain.failures[0][1], RoutingError)


def test_a_failed_job_is_resent_once_when_the_caller_allows() -> None:
    """With resend=True a failed job's commands are planned again, once; failing again
    they end as a failure like any other."""
    route = Route([5, 150], message)
    jobs = route.plan(two_nodes(), KeyError)
    lost = OSError("lost")
    route.settle(jobs[0], None, lost, sent=False, resend=True)
    route.settle(jobs[1], [b"ok"])
    assert (route.failures, route.pending, route.refresh) == ([], [0], True)
    assert route.advance() is True
    jobs = route.plan(two_nodes(), KeyError)
    assert jobs == [Job("a:1", False, [0])]
    route.settle(jobs[0], None, lost, sent=True, resend=True)
    assert route.failures == [("a:1", lost)]
    assert route.outcome == [Outcome.UNKNOWN, b"ok"]
    assert route.advance() is False


def test_the_replies_before_a_failure_count() -> None:
    """A job that failed after some replies: those are filed (and followed, for a MOVED),
    the rest are lost, or planned again when resending is safe."""
    table = two_nodes()
    route = Route([5, 6, 7, 8], message)
    (job,) = route.plan(table, KeyError)
    lost = OSError("lost")
    route.settle(job, [b"a", Err("MOVED 6 b:1")], lost, sent=True, table=table)
    assert route.outcome == [b"a", Outcome.NOT_SENT, Outcome.UNKNOWN, Outcome.UNKNOWN]
    assert route.failures == [("a:1", lost)]
    assert route.pending == [1]
    again = Route([5, 6, 7], message)
    (job,) = again.plan(two_nodes(), KeyError)
    again.settle(job, [b"a"], lost, sent=True, resend=True)
    assert (again.outcome[0], again.pending, again.failures) == (b"a", [1, 2], [])
