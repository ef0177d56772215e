"""MemoryBackend specifics: construction, exact TTL boundaries, LRU, locking.

The semantics every backend shares are in the contract suite (tests/test_contract.py).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pytest

from cacheorm._errors import InvalidTTL
from cacheorm._memory import MemoryBackend
from cacheorm._ttl import KEEP_TTL


class FakeClock:
    """A clock that only moves when a test advances ``now``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(clock: FakeClock) -> MemoryBackend:
    return MemoryBackend(clock=clock)


# -- protocol and construction ------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_max_entries_must_be_positive_int(bad: object) -> None:
    """A max_entries that is not a positive int is refused with a ValueError naming it."""
    with pytest.raises(ValueError, match="max_entries must be a positive int"):
        MemoryBackend(max_entries=bad)  # type: ignore[arg-type]


def test_max_entries_one_and_none_are_accepted() -> None:
    """max_entries=1 keeps one entry and None keeps everything."""
    one = MemoryBackend(max_entries=1)
    one.set("a", b"1")
    one.set("b", b"2")
    assert (one.get("a"), one.get("b"), len(one)) == (None, b"2", 1)
    unbounded = MemoryBackend()
    unbounded.set_many([(f"k{i}", b"v") for i in range(1000)])
    assert len(unbounded) == 1000
    assert (one.max_entries, unbounded.max_entries) == (1, None)


def test_default_clock_is_real_time() -> None:
    """Without an injected clock a TTL is measured in real seconds."""
    b = MemoryBackend()
    b.set("short", b"v", ttl=0.02)
    b.set("long", b"v", ttl=60)
    threading.Event().wait(0.05)
    assert (b.get("short"), b.get("long")) == (None, b"v")


# -- round trips and value types -----------------------------------------------


@pytest.mark.parametrize("bad", [0, -5, math.nan, math.inf, 10**400])
def test_non_positive_ttl_is_refused(backend: MemoryBackend, bad: float) -> None:
    """A TTL that is zero, negative, NaN or infinite raises ValueError and stores nothing."""
    with pytest.raises(ValueError, match="ttl must be a finite, positive number"):
        backend.set("k", b"v", ttl=bad)
    assert backend.get("k") is None


# -- batch forms ---------------------------------------------------------------


def test_batch_calls_take_the_lock_once(backend: MemoryBackend) -> None:
    """Each batch method is one locked operation, not a loop of separately locked calls."""

    class CountingLock:
        def __init__(self) -> None:
            self.inner = threading.Lock()
            self.count = 0

        def __enter__(self) -> None:
            self.inner.acquire()
            self.count += 1

        def __exit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None:
            self.inner.release()

    lock = CountingLock()
    backend._lock = lock  # type: ignore[assignment]
    items = [("a", b"1"), ("b", b"2"), ("c", b"3")]
    calls: list[Callable[[], object]] = [
        lambda: backend.set_many(items),
        lambda: backend.get_many(["a", "b", "c"]),
        lambda: backend.add_many(items),
        lambda: backend.replace_many(items),
        lambda: backend.delete_many(["a", "b", "c"]),
    ]
    for expected, call in enumerate(calls, start=1):
        call()
        assert lock.count == expected


# -- TTL -----------------------------------------------------------------------


def test_get_sees_value_until_ttl_passes(backend: MemoryBackend, clock: FakeClock) -> None:
    """A value with a TTL is readable before it elapses and gone after."""
    backend.set("k", b"v", ttl=10)
    clock.now += 9.9
    assert backend.get("k") == b"v"
    clock.now += 0.2
    assert backend.get("k") is None


def test_fractional_ttl(backend: MemoryBackend, clock: FakeClock) -> None:
    """A float TTL below one second is honoured against the clock."""
    backend.set("k", b"v", ttl=0.25)
    clock.now += 0.2
    assert backend.exists("k")
    clock.now += 0.1
    assert not backend.exists("k")


def test_expired_entry_is_invisible_to_reads(backend: MemoryBackend, clock: FakeClock) -> None:
    """After expiry get, get_many, exists, gets and len all report the key as absent."""
    backend.set("k", b"v", ttl=5)
    backend.set("keep", b"w")
    clock.now += 6
    assert backend.get("k") is None
    assert backend.get_many(["k", "keep"]) == [None, b"w"]
    assert backend.exists("k") is False
    assert backend.gets("k") is None
    assert len(backend) == 1


def test_batch_ttl_applies_to_every_pair(backend: MemoryBackend, clock: FakeClock) -> None:
    """set_many, add_many and replace_many give every pair they write the TTL."""
    backend.set_many([("s1", b"1"), ("s2", b"2")], ttl=5)
    backend.add_many([("a1", b"1")], ttl=5)
    backend.set("r1", b"old")
    backend.replace_many([("r1", b"new")], ttl=5)
    clock.now += 4
    assert backend.get_many(["s1", "s2", "a1", "r1"]) == [b"1", b"2", b"1", b"new"]
    clock.now += 2
    assert backend.get_many(["s1", "s2", "a1", "r1"]) == [None, None, None, None]


def test_add_treats_expired_key_as_absent(backend: MemoryBackend, clock: FakeClock) -> None:
    """add and add_many succeed on a key whose value has expired."""
    backend.set_many([("k", b"old"), ("m", b"old")], ttl=5)
    clock.now += 6
    assert backend.add("k", b"new") is True
    assert backend.add_many([("m", b"new")]) == [True]
    assert backend.get_many(["k", "m"]) == [b"new", b"new"]


def test_replace_treats_expired_key_as_absent(backend: MemoryBackend, clock: FakeClock) -> None:
    """replace and replace_many refuse a key whose value has expired and do not revive it."""
    backend.set_many([("k", b"old"), ("m", b"old")], ttl=5)
    clock.now += 6
    assert backend.replace("k", b"new") is False
    assert backend.replace_many([("m", b"new")]) == [False]
    assert backend.get_many(["k", "m"]) == [None, None]


def test_delete_of_expired_key_reports_false(backend: MemoryBackend, clock: FakeClock) -> None:
    """delete and delete_many do not count a key whose value has expired."""
    backend.set_many([("k", b"v"), ("m", b"v")], ttl=5)
    backend.set("live", b"v")
    clock.now += 6
    assert backend.delete("k") is False
    assert backend.delete_many(["m", "live"]) == 1


def test_incr_of_expired_key_starts_from_zero(backend: MemoryBackend, clock: FakeClock) -> None:
    """incr on an expired counter starts again at 0 and the new counter has no TTL."""
    backend.set("n", b"41", ttl=5)
    clock.now += 6
    assert backend.incr("n", 3) == 3
    clock.now += 1000
    assert backend.get("n") == b"3"


def test_cas_on_expired_key_fails(backend: MemoryBackend, clock: FakeClock) -> None:
    """A token taken before expiry no longer lets cas write once the value has expired."""
    backend.set("k", b"v", ttl=5)
    got = backend.gets("k")
    assert got is not None
    clock.now += 6
    assert backend.cas("k", b"new", got[1]) is False
    assert backend.get("k") is None


@pytest.mark.parametrize("writer", ["set", "set_many", "add", "replace", "cas"])
def test_write_without_ttl_clears_old_ttl(
    backend: MemoryBackend, clock: FakeClock, writer: str
) -> None:
    """Rewriting a key with ttl=None makes it non-expiring, whatever TTL it had."""
    backend.set("k", b"old", ttl=5)
    if writer == "set":
        backend.set("k", b"new")
    elif writer == "set_many":
        backend.set_many([("k", b"new")])
    elif writer == "add":
        clock.now += 6  # add only writes once the old value has expired
        assert backend.add("k", b"new") is True
    elif writer == "replace":
        assert backend.replace("k", b"new") is True
    else:
        got = backend.gets("k")
        assert got is not None
        assert backend.cas("k", b"new", got[1]) is True
    clock.now += 1_000_000
    assert backend.get("k") == b"new"


def test_write_with_new_ttl_replaces_old_ttl(backend: MemoryBackend, clock: FakeClock) -> None:
    """A rewrite with a shorter TTL expires at the new deadline, not the old one."""
    backend.set("k", b"v", ttl=100)
    backend.set("k", b"v", ttl=1)
    clock.now += 2
    assert backend.get("k") is None


# -- incr ----------------------------------------------------------------------


def test_incr_keeps_existing_ttl(backend: MemoryBackend, clock: FakeClock) -> None:
    """incr keeps the key's deadline instead of clearing or restarting it."""
    backend.set("n", b"1", ttl=10)
    clock.now += 6
    assert backend.incr("n") == 2
    clock.now += 3
    assert backend.get("n") == b"2"
    clock.now += 2
    assert backend.get("n") is None


# -- KEEP_TTL --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["replace", "replace_many", "cas"])
def test_keep_ttl_keeps_the_exact_deadline(
    backend: MemoryBackend, clock: FakeClock, method: str
) -> None:
    """A KEEP_TTL rewrite 6 s into a 10 s TTL expires at 10 s, neither earlier nor later."""
    backend.set("k", b"old", ttl=10)
    clock.now += 6
    if method == "replace":
        assert backend.replace("k", b"new", ttl=KEEP_TTL) is True
    elif method == "replace_many":
        assert backend.replace_many([("k", b"new"), ("gone", b"x")], ttl=KEEP_TTL) == [True, False]
    else:
        got = backend.gets("k")
        assert got is not None
        assert backend.cas("k", b"new", got[1], ttl=KEEP_TTL) is True
    clock.now += 3.999
    assert backend.get("k") == b"new"
    clock.now += 0.001
    assert backend.get("k") is None
    assert backend.get("gone") is None


def test_keep_ttl_is_refused_by_add_and_set(backend: MemoryBackend) -> None:
    """KEEP_TTL is for replace and cas: add, add_many and set raise InvalidTTL, writing nothing."""
    keep: Any = KEEP_TTL
    for write in (
        lambda: backend.add("k", b"v", ttl=keep),
        lambda: backend.add_many([("k", b"v")], ttl=keep),
        lambda: backend.set("k", b"v", ttl=keep),
    ):
        with pytest.raises(InvalidTTL, match="KEEP_TTL"):
            write()
    assert backend.get("k") is None


def test_is_a_context_manager(clock: FakeClock) -> None:
    """``with MemoryBackend() as store`` gives the backend; close keeps the data readable."""
    with MemoryBackend(clock=clock) as store:
        store.set("k", b"v")
    assert store.get("k") == b"v"


# -- gets / cas ----------------------------------------------------------------


def test_token_changes_on_every_write_only(backend: MemoryBackend) -> None:
    """gets gives the same token until the key is written, even with an identical value."""
    backend.set("k", b"v")
    first, second = backend.gets("k"), backend.gets("k")
    assert first is not None
    assert second is not None
    assert first[1] == second[1]
    backend.set("k", b"v")
    third = backend.gets("k")
    assert third is not None
    assert third[1] != first[1]


def test_cas_with_foreign_token_fails(backend: MemoryBackend) -> None:
    """A token that gets did not hand out (wrong type or value) never lets cas write."""
    backend.set("k", b"v")
    got = backend.gets("k")
    assert got is not None
    token = got[1]
    assert isinstance(token, int)
    for bogus in [str(token), float(token), object(), None]:
        assert backend.cas("k", b"new", bogus) is False
    assert backend.get("k") == b"v"


# -- LRU -----------------------------------------------------------------------


def _lru(clock: FakeClock) -> MemoryBackend:
    """A backend limited to 3 entries holding a=1, b=2, c=3, least recently used first."""
    b = MemoryBackend(max_entries=3, clock=clock)
    for number, key in enumerate("abc", start=1):
        b.set(key, str(number).encode())
    return b


def test_lru_evicts_least_recently_used(clock: FakeClock) -> None:
    """Inserting a new key into a full backend evicts the oldest entries first."""
    b = _lru(clock)
    b.set("d", b"d")
    assert b.get_many(["a", "b", "c", "d"]) == [None, b"2", b"3", b"d"]
    b.set("e", b"e")
    assert b.exists("b") is False
    assert len(b) == 3


@pytest.mark.parametrize("reader", ["get", "get_many", "gets"])
def test_reads_refresh_recency(clock: FakeClock, reader: str) -> None:
    """Reading an entry with get, get_many or gets protects it from the next eviction."""
    b = _lru(clock)
    if reader == "get":
        b.get("a")
    elif reader == "get_many":
        b.get_many(["a"])
    else:
        b.gets("a")
    b.set("d", b"d")
    assert (b.exists("a"), b.exists("b")) == (True, False)


@pytest.mark.parametrize("writer", ["set", "replace", "incr", "cas"])
def test_writes_refresh_recency(clock: FakeClock, writer: str) -> None:
    """Writing an existing entry moves it to the most recently used end."""
    b = _lru(clock)
    if writer == "set":
        b.set("a", b"9")
    elif writer == "replace":
        b.replace("a", b"9")
    elif writer == "incr":
        b.incr("a")
    else:
        got = b.gets("a")
        assert got is not None
        b.get_many(["b", "c"])  # gets refreshed "a"; make it the oldest again
        assert b.cas("a", b"9", got[1]) is True
    b.set("d", b"d")
    assert b.exists("a") is True
    assert b.exists("b") is False


def test_exists_does_not_refresh_recency(clock: FakeClock) -> None:
    """exists is a probe: it leaves the entry's place in the eviction order alone."""
    b = _lru(clock)
    assert b.exists("a")
    b.set("d", b"d")
    assert b.exists("a") is False


def test_overwrite_or_failed_add_when_full_evicts_nothing(clock: FakeClock) -> None:
    """Overwriting a key, or an add that fails, does not push another entry out."""
    b = _lru(clock)
    b.set("b", b"B")
    assert b.add("c", b"C") is False
    assert b.get_many(["a", "b", "c"]) == [b"1", b"B", b"3"]


def test_full_backend_drops_expired_entry_before_live_one(clock: FakeClock) -> None:
    """When full, an expired entry is dropped in preference to the least recently used live one."""
    b = MemoryBackend(max_entries=3, clock=clock)
    b.set("a", b"a")
    b.set("b", b"b", ttl=5)
    b.set("c", b"c")
    clock.now += 6
    b.set("d", b"d")
    assert b.get_many(["a", "b", "c", "d"]) == [b"a", None, b"c", b"d"]


# -- extras --------------------------------------------------------------------


def test_len_clear_close_and_repr(backend: MemoryBackend) -> None:
    """len counts entries, clear empties the backend, close keeps it usable, repr shows limits."""
    backend.set_many([("a", b"1"), ("b", b"2")])
    assert len(backend) == 2
    assert repr(backend) == "MemoryBackend(max_entries=None, stored=2)"
    backend.clear()
    assert len(backend) == 0
    assert backend.get("a") is None
    backend.close()
    backend.set("c", b"3")
    assert backend.get("c") == b"3"


def test_clear_invalidates_old_tokens(backend: MemoryBackend) -> None:
    """A token taken before clear does not match the key written again afterwards."""
    backend.set("k", b"v")
    got = backend.gets("k")
    assert got is not None
    backend.clear()
    backend.set("k", b"v")
    assert backend.cas("k", b"new", got[1]) is False


# -- threads -------------------------------------------------------------------
