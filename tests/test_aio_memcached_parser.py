"""The incremental reply parser: replies fed a byte at a time read as when fed whole."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("pymemcache")

from cacheorm._mcproto import (
    NEED_MORE,
    ReplyParser,
    WrongKey,
    read_cas_value,
    read_meta,
    read_metas,
    read_stats,
    read_touches,
    read_value,
    read_values,
    read_write_replies,
)

CASES: list[tuple[str, Callable[[Any], Any], Any, bytes, Any]] = [
    ("value", read_value, b"k", b"VALUE k 0 5\r\nab\r\nc\r\nEND\r\n", b"ab\r\nc"),
    ("miss", read_value, b"k", b"END\r\n", None),
    ("cas value", read_cas_value, b"k", b"VALUE k 0 1 77\r\nx\r\nEND\r\n", (b"x", b"77")),
    (
        "values",
        read_values,
        [b"a", b"b", b"a"],
        b"VALUE a 0 1\r\n1\r\nVALUE a 0 1\r\n1\r\nEND\r\n",
        {b"a": b"1"},
    ),
    ("meta", read_meta, b"k", b"HD t12 c99 kk\r\n", (b"99", 12)),
    ("metas", read_metas, [b"a", b"b"], b"HD t-1 c1 ka\r\nEN\r\n", [(b"1", -1), None]),
    ("stats", read_stats, None, b"STAT item_size_max 1024\r\nEND\r\n", {b"item_size_max": b"1024"}),
    ("touches", read_touches, 2, b"TOUCHED\r\nNOT_FOUND\r\n", [True, False]),
    (
        "writes",
        read_write_replies,
        3,
        b"STORED\r\nSERVER_ERROR out of memory\r\nNOT_STORED\r\n",
        [b"STORED", b"SERVER_ERROR out of memory", b"NOT_STORED"],
    ),
]


@pytest.mark.parametrize(
    ("read", "expect", "reply", "result"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_reply_fed_a_byte_at_a_time(
    read: Callable[[Any], Any], expect: Any, reply: bytes, result: Any
) -> None:
    """Incomplete until its last byte, then the reply; the next one starts right after it."""
    parser = ReplyParser()
    for byte in range(len(reply) - 1):
        parser.feed(reply[byte : byte + 1])
        assert parser.next_reply(read, expect) is NEED_MORE
    parser.feed(reply[-1:] + b"END\r\n")
    assert parser.next_reply(read, expect) == result
    assert parser.next_reply(read_value, b"k") is None
    assert parser.pending == 0
    assert NEED_MORE.__traceback__ is None  # never raised, so it holds no frames


def test_partial_says_which_replies_of_a_batch_came() -> None:
    """A batch cut part-way: partial() gives the replies that came, consuming nothing."""
    parser = ReplyParser()
    parser.feed(b"STORED\r\nNOT_STO")
    assert parser.partial(read_write_replies, 3) == [b"STORED"]
    assert parser.partial(read_value, b"k") == []
    assert parser.pending == len(b"STORED\r\nNOT_STO")


def test_a_reply_for_another_key_raises() -> None:
    """VALUE naming a key not asked for: WrongKey (the connection is then dropped)."""
    parser = ReplyParser()
    parser.feed(b"VALUE other 0 1\r\nx\r\nEND\r\n")
    with pytest.raises(WrongKey, match="other"):
        parser.next_reply(read_value, b"mine")
