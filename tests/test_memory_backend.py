"""Tests for the in-process MemoryBackend."""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import pytest

from cacheorm._backend import Backend
from cacheorm._errors import BackendError
from cacheorm._memory import MemoryBackend


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


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Make the interpreter switch threads very often, so races show up."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


# -- protocol and construction ------------------------------------------------


def test_is_a_backend() -> None:
    """MemoryBackend satisfies the runtime-checkable Backend protocol."""
    assert isinstance(MemoryBackend(), Backend)


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


def test_set_then_get_round_trips(backend: MemoryBackend) -> None:
    """A value set under a key comes back unchanged and other keys stay absent."""
    backend.set("k", b"hello")
    assert backend.get("k") == b"hello"
    assert backend.get("other") is None


def test_binary_values_with_nul_bytes_round_trip(backend: MemoryBackend) -> None:
    """Every byte value, NUL included, survives a round trip, also an empty value."""
    value = bytes(range(256)) + b"\x00\x00tail\x00"
    backend.set("bin", value)
    backend.set("empty", b"")
    assert backend.get("bin") == value
    assert backend.get("empty") == b""


def test_large_value_round_trips(backend: MemoryBackend) -> None:
    """A 1 MiB value comes back whole through get, get_many and gets."""
    value = bytes(range(256)) * 4096
    assert len(value) == 1024 * 1024
    backend.set("big", value)
    assert backend.get("big") == value
    assert backend.get_many(["big"]) == [value]
    got = backend.gets("big")
    assert got is not None
    assert got[0] == value


def test_bytearray_and_memoryview_are_stored_as_bytes(backend: MemoryBackend) -> None:
    """bytearray and memoryview values are copied into bytes, so later mutation is not seen."""
    buf = bytearray(b"abc")
    backend.set("ba", buf)  # type: ignore[arg-type]
    backend.set("mv", memoryview(b"xyz"))  # type: ignore[arg-type]
    buf[0] = ord("Z")
    got_ba, got_mv = backend.get("ba"), backend.get("mv")
    assert (type(got_ba), got_ba) == (bytes, b"abc")
    assert (type(got_mv), got_mv) == (bytes, b"xyz")


@pytest.mark.parametrize("bad", ["text", 42, None, [1, 2]])
def test_non_bytes_value_raises_type_error_naming_key(backend: MemoryBackend, bad: object) -> None:
    """A non-bytes-like value is refused with a TypeError naming the key, storing nothing."""
    with pytest.raises(TypeError, match="'the-key'"):
        backend.set("the-key", bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'the-key'"):
        backend.add("the-key", bad)  # type: ignore[arg-type]
    assert not backend.exists("the-key")


def test_batch_with_one_bad_value_stores_nothing(backend: MemoryBackend) -> None:
    """set_many and add_many check every value before writing any of them."""
    items = [("a", b"1"), ("b", "not bytes"), ("c", b"3")]
    with pytest.raises(TypeError, match="'b'"):
        backend.set_many(items)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'b'"):
        backend.add_many(items)  # type: ignore[arg-type]
    assert backend.get_many(["a", "b", "c"]) == [None, None, None]


def test_non_str_key_raises_type_error(backend: MemoryBackend) -> None:
    """Keys must be str: bytes keys are refused by reads and writes alike."""
    with pytest.raises(TypeError, match="keys must be str"):
        backend.set(b"k", b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="keys must be str"):
        backend.get(b"k")  # type: ignore[arg-type]
    assert len(backend) == 0


@pytest.mark.parametrize("bad", [0, -5, math.nan, math.inf, 10**400])
def test_non_positive_ttl_is_refused(backend: MemoryBackend, bad: float) -> None:
    """A TTL that is zero, negative, NaN or infinite raises ValueError and stores nothing."""
    with pytest.raises(ValueError, match="ttl must be a finite, positive number"):
        backend.set("k", b"v", ttl=bad)
    assert backend.get("k") is None


# -- batch forms ---------------------------------------------------------------


def test_get_many_preserves_order_and_none_for_misses(backend: MemoryBackend) -> None:
    """get_many answers in the order asked, with None for each missing key and repeats honoured."""
    backend.set_many([("a", b"1"), ("c", b"3")])
    assert backend.get_many(["c", "missing", "a", "c"]) == [b"3", None, b"1", b"3"]
    assert backend.get_many([]) == []


def test_set_many_stores_every_pair_and_last_duplicate_wins(backend: MemoryBackend) -> None:
    """set_many stores all pairs in order, so a repeated key ends with its last value."""
    backend.set_many([("a", b"1"), ("b", b"2"), ("a", b"3")])
    assert backend.get_many(["a", "b"]) == [b"3", b"2"]


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


# -- add / replace -------------------------------------------------------------


def test_add_stores_only_when_absent(backend: MemoryBackend) -> None:
    """add writes a missing key and refuses, leaving the value alone, when it exists."""
    assert backend.add("k", b"first") is True
    assert backend.add("k", b"second") is False
    assert backend.get("k") == b"first"


def test_replace_stores_only_when_present(backend: MemoryBackend) -> None:
    """replace refuses a missing key without creating it and overwrites an existing one."""
    assert backend.replace("k", b"v") is False
    assert backend.exists("k") is False
    backend.set("k", b"old")
    assert backend.replace("k", b"new") is True
    assert backend.get("k") == b"new"


def test_add_many_later_pairs_see_earlier_ones(backend: MemoryBackend) -> None:
    """add_many works in order: an existing key fails, and a repeat of a key just added fails."""
    backend.set("existing", b"x")
    result = backend.add_many([("a", b"1"), ("existing", b"2"), ("a", b"3"), ("b", b"4")])
    assert result == [True, False, False, True]
    assert backend.get_many(["a", "existing", "b"]) == [b"1", b"x", b"4"]


def test_replace_many_reports_each_pair_in_order(backend: MemoryBackend) -> None:
    """replace_many replaces present keys only, and a repeated key ends with its last value."""
    backend.set_many([("a", b"1"), ("b", b"2")])
    result = backend.replace_many([("a", b"A"), ("missing", b"M"), ("b", b"B"), ("a", b"AA")])
    assert result == [True, False, True, True]
    assert backend.get_many(["a", "b", "missing"]) == [b"AA", b"B", None]


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


# -- delete / exists -----------------------------------------------------------


def test_delete_reports_whether_key_existed(backend: MemoryBackend) -> None:
    """delete removes a key and returns True once, then False."""
    backend.set("k", b"v")
    assert backend.delete("k") is True
    assert backend.get("k") is None
    assert backend.delete("k") is False


def test_delete_many_counts_existing_keys(backend: MemoryBackend) -> None:
    """delete_many returns how many keys it removed, counting a repeated key once."""
    backend.set_many([("a", b"1"), ("b", b"2"), ("c", b"3")])
    assert backend.delete_many(["a", "missing", "b", "a"]) == 2
    assert backend.get_many(["a", "b", "c"]) == [None, None, b"3"]
    assert backend.delete_many([]) == 0


def test_exists_tracks_presence(backend: MemoryBackend) -> None:
    """exists is False before a write, True after, and False after delete."""
    assert backend.exists("k") is False
    backend.set("k", b"")
    assert backend.exists("k") is True
    backend.delete("k")
    assert backend.exists("k") is False


# -- incr ----------------------------------------------------------------------


def test_incr_creates_counter_at_zero(backend: MemoryBackend) -> None:
    """incr on a missing key starts from 0 and stores ASCII decimal bytes."""
    assert backend.incr("n") == 1
    assert backend.incr("m", 5) == 5
    assert backend.get_many(["n", "m"]) == [b"1", b"5"]


def test_incr_adds_to_existing_value(backend: MemoryBackend) -> None:
    """incr adds delta to a stored ASCII integer, leading zeros allowed."""
    backend.set("n", b"0041")
    assert backend.incr("n") == 42
    assert backend.get("n") == b"42"


def test_incr_with_negative_delta(backend: MemoryBackend) -> None:
    """A negative delta decrements, and the counter may go below zero."""
    backend.set("n", b"2")
    assert backend.incr("n", -5) == -3
    assert backend.get("n") == b"-3"
    assert backend.incr("n", 10) == 7


def test_incr_keeps_existing_ttl(backend: MemoryBackend, clock: FakeClock) -> None:
    """incr keeps the key's deadline instead of clearing or restarting it."""
    backend.set("n", b"1", ttl=10)
    clock.now += 6
    assert backend.incr("n") == 2
    clock.now += 3
    assert backend.get("n") == b"2"
    clock.now += 2
    assert backend.get("n") is None


@pytest.mark.parametrize(
    "stored",
    [b"abc", b"1.5", b"", b" 1", b"1_000", b"+1", "\u0663".encode(), b"\xff", b"9" * 5000],
)
def test_incr_of_non_integer_raises_backend_error(backend: MemoryBackend, stored: bytes) -> None:
    """incr refuses a value that is not an ASCII integer with a BackendError naming the key."""
    backend.set("the-key", stored)
    with pytest.raises(BackendError, match="'the-key'") as info:
        backend.incr("the-key")
    assert info.value.key == "the-key"
    assert backend.get("the-key") == stored


# -- gets / cas ----------------------------------------------------------------


def test_cas_with_fresh_token_writes(backend: MemoryBackend) -> None:
    """cas with the token gets returned writes, and that token cannot be used again."""
    backend.set("k", b"v1")
    got = backend.gets("k")
    assert got is not None
    value, token = got
    assert value == b"v1"
    assert backend.cas("k", b"v2", token) is True
    assert backend.get("k") == b"v2"
    assert backend.cas("k", b"v3", token) is False
    assert backend.get("k") == b"v2"


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


def test_cas_with_stale_token_fails(backend: MemoryBackend) -> None:
    """cas refuses when another write happened after gets, leaving that write in place."""
    backend.set("k", b"v1")
    got = backend.gets("k")
    assert got is not None
    backend.incr("other")
    backend.set("k", b"theirs")
    assert backend.cas("k", b"mine", got[1]) is False
    assert backend.get("k") == b"theirs"


def test_cas_on_deleted_key_fails(backend: MemoryBackend) -> None:
    """cas neither recreates a deleted key nor accepts an old token once it is set again."""
    backend.set("k", b"v")
    got = backend.gets("k")
    assert got is not None
    backend.delete("k")
    assert backend.cas("k", b"new", got[1]) is False
    assert backend.exists("k") is False
    backend.set("k", b"v")
    assert backend.cas("k", b"new", got[1]) is False
    assert backend.get("k") == b"v"


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


def test_cas_applies_its_ttl(backend: MemoryBackend, clock: FakeClock) -> None:
    """A successful cas sets the TTL it is given."""
    backend.set("k", b"v")
    got = backend.gets("k")
    assert got is not None
    assert backend.cas("k", b"new", got[1], ttl=5) is True
    clock.now += 6
    assert backend.get("k") is None


def test_gets_on_missing_key_is_none(backend: MemoryBackend) -> None:
    """gets returns None for a key that was never written."""
    assert backend.gets("nope") is None


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


@pytest.mark.usefixtures("fast_switching")
def test_concurrent_cas_increments_lose_nothing() -> None:
    """8 threads doing 500 gets/cas-retry increments each leave the counter at exactly 4000."""
    b = MemoryBackend()
    b.set("n", b"0")
    threads, per_thread = 8, 500
    start = threading.Barrier(threads, timeout=10)

    def work() -> int:
        start.wait()
        retries = 0
        for _ in range(per_thread):
            while True:
                got = b.gets("n")
                assert got is not None
                value, token = got
                if b.cas("n", str(int(value) + 1).encode(), token):
                    break
                retries += 1
        return retries

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(work) for _ in range(threads)]
        for future in futures:
            future.result()
    assert b.get("n") == str(threads * per_thread).encode()


@pytest.mark.usefixtures("fast_switching")
def test_concurrent_incr_loses_nothing() -> None:
    """8 threads doing 500 incr calls each leave the counter at exactly 4000."""
    b = MemoryBackend()
    start = threading.Barrier(8, timeout=10)

    def work() -> None:
        start.wait()
        for _ in range(500):
            b.incr("n")

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(work) for _ in range(8)]:
            future.result()
    assert b.get("n") == b"4000"


@pytest.mark.usefixtures("fast_switching")
def test_concurrent_add_has_one_winner() -> None:
    """16 threads racing add on one key produce exactly one True, whose value is stored."""
    b = MemoryBackend()
    start = threading.Barrier(16, timeout=10)

    def work(i: int) -> bool:
        start.wait()
        return b.add("k", str(i).encode())

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(work, range(16)))
    assert results.count(True) == 1
    assert b.get("k") == str(results.index(True)).encode()
