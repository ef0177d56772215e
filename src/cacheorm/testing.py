"""The backend contract suite: the semantics every cacheorm backend shares, as pytest tests.

cacheorm runs this suite unchanged against its memory, filesystem, Redis and
Memcached backends; a third-party backend proves itself the same way. Subclass
:class:`BackendContract` in a test module (the class name must start with
``Test``) and give it a ``backend`` fixture that yields an *empty* backend::

    import pytest
    from cacheorm.testing import BackendContract

    class TestMyBackend(BackendContract):
        expiry_slack = 0.5  # how late the store may expire a key, in seconds

        @pytest.fixture
        def backend(self):
            store = MyBackend("...")
            store.clear()
            yield store
            store.close()

TTL tests really wait for keys to expire (``short_ttl`` plus ``expiry_slack``
seconds, about three times per run); a backend with an injectable clock can
override :meth:`BackendContract.wait` to move its clock instead.

The optional capabilities (:class:`~cacheorm.TTLBackend`,
:class:`~cacheorm.CounterBackend`, :class:`~cacheorm.ScanBackend`) are tested by
:class:`CapabilityContract`, which :class:`BackendContract` includes. A backend
declares what it has in ``capabilities``; the tests of a capability it lacks
check instead that the repository and :class:`~cacheorm.Counter` refuse it with
a :class:`~cacheorm.ConfigurationError` naming the backend's class (nothing is
skipped).

This module needs pytest, which cacheorm itself does not depend on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import math
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, ClassVar

import pytest

from cacheorm._backend import (
    AsyncBackend,
    AsyncCounterBackend,
    AsyncScanBackend,
    AsyncTTLBackend,
    Backend,
    CounterBackend,
    ScanBackend,
    TTLBackend,
)
from cacheorm._counter import Counter
from cacheorm._errors import BackendError, ConfigurationError, InvalidTTL
from cacheorm._portal import Portal
from cacheorm._schema import Field
from cacheorm._ttl import KEEP_TTL

__all__ = [
    "ASYNC_CAPABILITIES",
    "AWKWARD_KEYS",
    "CAPABILITIES",
    "AsyncBackendContract",
    "BackendContract",
    "CapabilityContract",
    "Portal",
]

#: The optional capabilities, by the name ``capabilities`` uses.
CAPABILITIES: dict[str, type] = {
    "ttl": TTLBackend,
    "counter": CounterBackend,
    "scan": ScanBackend,
}

#: The optional capabilities of an async backend, by the same names.
ASYNC_CAPABILITIES: dict[str, type] = {
    "ttl": AsyncTTLBackend,
    "counter": AsyncCounterBackend,
    "scan": AsyncScanBackend,
}


@dataclasses.dataclass
class _Item:
    """A model for the repository-level capability checks."""

    id: Annotated[int, Field(primary_key=True)]
    name: str


#: Keys that a backend must store and keep apart although they are awkward for
#: some store: empty, spaces, line breaks, NUL, control characters, non-ASCII,
#: path-like, template-like and over 250 bytes (memcached's key limit).
AWKWARD_KEYS: tuple[str, ...] = (
    "",
    " ",
    "a b",
    "tab\tkey",
    "crlf\r\nset injected 0 0 1\r\nx",
    "nul\x00byte",
    "bell\x07del\x7f",
    "ünïcødé ключ 鍵",
    "emoji 🙂",
    "../../etc/passwd",
    "a/b\\c",
    "{hash}:tag",
    "%s %d %%",
    "user:1",
    "user:1 ",
    "k" * 250,
    "k" * 251,
    "é" * 200,
    "x" * 300,
    "x" * 300 + "y",
)


class CapabilityContract:
    """The optional capabilities: TTLs, counters, key scans (see ``capabilities``).

    Attributes:
        capabilities: the capabilities the backend declares, a subset of
            ``{"ttl", "counter", "scan"}``; None (the default) takes what the
            backend implements. A declared capability must be implemented, and
            an undeclared one must not be.
        ttl_precision: how far ``ttl_of`` may be above the TTL given, in
            seconds (memcached counts whole seconds and adds one).
    """

    capabilities: ClassVar[frozenset[str] | None] = None
    ttl_precision: ClassVar[float] = 0.01
    short_ttl: ClassVar[float] = 1.0
    expiry_slack: ClassVar[float] = 0.25
    threads: ClassVar[int] = 8

    @pytest.fixture
    def backend(self) -> Backend:
        """An empty backend; every subclass must override this fixture."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `backend` fixture yielding an empty backend"
        )

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass for the backend's TTLs (a real sleep by default)."""
        time.sleep(seconds)

    def _has(self, backend: Backend, name: str) -> bool:
        has = isinstance(backend, CAPABILITIES[name])
        if self.capabilities is not None:
            assert has == (name in self.capabilities), (
                f"{type(backend).__name__} declares capabilities {sorted(self.capabilities)} "
                f"but {'implements' if has else 'lacks'} {CAPABILITIES[name].__name__}"
            )
        return has

    def _refused(self, backend: Backend, call: Callable[[], object]) -> None:
        with pytest.raises(ConfigurationError) as info:
            call()
        assert type(backend).__name__ in str(info.value)

    def test_declared_capabilities_are_known(self, backend: Backend) -> None:
        """``capabilities`` names only known capabilities."""
        if self.capabilities is not None:
            assert self.capabilities <= set(CAPABILITIES)
        for name in CAPABILITIES:
            self._has(backend, name)

    # -- TTLBackend ----------------------------------------------------------------

    def _repo(self, backend: Backend) -> Any:
        from cacheorm._repository import Repository

        return Repository(_Item, backend=backend)

    def test_touch_sets_a_new_ttl_and_ttl_of_reports_it(self, backend: Backend) -> None:
        """touch gives a live key a TTL (or none); ttl_of reads it back; missing keys are
        False / None; touch_many reports each key in order."""
        if not self._has(backend, "ttl"):
            repo = self._repo(backend)
            self._refused(backend, lambda: repo.touch(1, ttl=5))
            self._refused(backend, lambda: repo.touch_many([1], ttl=5))
            self._refused(backend, lambda: repo.ttl_of(1))
            return
        assert isinstance(backend, TTLBackend)
        backend.set("k", b"v")
        assert backend.ttl_of("k") == math.inf
        assert backend.ttl_of("missing") is None
        assert backend.touch("k", 100) is True
        left = backend.ttl_of("k")
        assert left is not None
        assert 99 < left <= 100 + self.ttl_precision
        assert backend.touch("k", None) is True
        assert backend.ttl_of("k") == math.inf
        assert backend.touch("missing", 100) is False
        assert backend.get("missing") is None  # touch never creates
        backend.set("j", b"w", 50)
        assert backend.touch_many(["k", "missing", "j"], 200) == [True, False, True]
        for key in ("k", "j"):
            left = backend.ttl_of(key)
            assert left is not None
            assert 199 < left <= 200 + self.ttl_precision
        assert backend.get("k") == b"v"
        assert backend.get("j") == b"w"
        assert backend.touch_many([], 5) == []
        token = backend.gets("k")
        assert token is not None
        assert backend.touch("k", 300) is True
        assert backend.cas("k", b"v2", token[1]) is True  # a touch is not a write of the value

    def test_a_touched_key_expires_and_persist_keeps_one(self, backend: Backend) -> None:
        """A key touched with a short TTL expires; one touched with None outlives its TTL;
        an expired key cannot be touched back."""
        if not self._has(backend, "ttl"):
            return  # refusals: test_touch_sets_a_new_ttl_and_ttl_of_reports_it
        assert isinstance(backend, TTLBackend)
        backend.set("short", b"1")
        backend.set("kept", b"2", self.short_ttl)
        assert backend.touch_many(["short", "kept"], None) == [True, True]
        assert backend.touch("short", self.short_ttl) is True
        self.wait(self.short_ttl + self.expiry_slack)
        assert backend.get("short") is None
        assert backend.ttl_of("short") is None
        assert backend.touch("short", 100) is False
        assert backend.get("short") is None
        assert backend.get("kept") == b"2"

    @pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "5"])
    def test_touch_with_a_bad_ttl_raises(self, backend: Backend, bad: Any) -> None:
        """touch refuses a TTL that is not a finite positive number and changes nothing."""
        if not self._has(backend, "ttl"):
            return
        assert isinstance(backend, TTLBackend)
        backend.set("k", b"v")
        with pytest.raises((InvalidTTL, TypeError)):
            backend.touch("k", bad)
        with pytest.raises((InvalidTTL, TypeError)):
            backend.touch_many(["k"], bad)
        assert backend.ttl_of("k") == math.inf

    # -- CounterBackend ----------------------------------------------------------

    def test_counter_add_creates_with_a_ttl_and_never_goes_negative(self, backend: Backend) -> None:
        """counter_add starts an absent counter at 0 with its TTL, keeps the TTL later,
        and clamps at 0."""
        if not self._has(backend, "counter"):
            self._refused(backend, lambda: Counter(backend, "hits"))
            return
        assert isinstance(backend, CounterBackend)
        assert backend.counter_add("c", 5, 100) == 5
        assert backend.counter_add("c", 2, 1000) == 7
        assert backend.counter_add("c", -3) == 4
        assert backend.counter_add("c", -10) == 0
        assert backend.counter_add("c", 0) == 0
        assert backend.counter_add("c", 1) == 1
        assert backend.get("c") is not None
        assert int(backend.get("c") or b"") == 1
        if isinstance(backend, TTLBackend):
            left = backend.ttl_of("c")  # the creating call's TTL, kept
            assert left is not None
            assert 99 < left <= 100 + self.ttl_precision
        assert backend.counter_add("d", -4) == 0
        assert backend.counter_add("e", 3) == 3
        if isinstance(backend, TTLBackend):
            assert backend.ttl_of("e") == math.inf

    def test_a_counter_expires_after_the_ttl_of_its_creation(self, backend: Backend) -> None:
        """A counter created with a short TTL expires on time although counted since."""
        if not self._has(backend, "counter"):
            return
        assert isinstance(backend, CounterBackend)
        assert backend.counter_add("c", 1, self.short_ttl) == 1
        assert backend.counter_add("c", 1, 1000) == 2
        self.wait(self.short_ttl + self.expiry_slack)
        assert backend.get("c") is None
        assert backend.counter_add("c", 1) == 1

    def test_counter_add_refuses_bad_input_and_non_counters(self, backend: Backend) -> None:
        """A non-int delta is a TypeError, a bad TTL InvalidTTL, a non-integer value a
        BackendError; none changes the stored value."""
        if not self._has(backend, "counter"):
            return
        assert isinstance(backend, CounterBackend)
        with pytest.raises(TypeError):
            backend.counter_add("c", 1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            backend.counter_add("c", True)
        with pytest.raises(InvalidTTL):
            backend.counter_add("c", 1, -1)
        assert backend.get("c") is None
        backend.set("text", b"abc")
        with pytest.raises(BackendError):
            backend.counter_add("text", 1)
        assert backend.get("text") == b"abc"

    def test_concurrent_counter_adds_lose_nothing(self, backend: Backend) -> None:
        """Threads incrementing one absent counter (and decrementing it, never below 0)
        count every call exactly once."""
        if not self._has(backend, "counter"):
            return
        assert isinstance(backend, CounterBackend)
        store = backend
        per_thread = 50

        def work(_: int) -> None:
            for _ in range(per_thread):
                store.counter_add("n", 2, 100)
                store.counter_add("n", -1, 100)

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(work, range(self.threads)))
        assert store.counter_add("n", 0) == self.threads * per_thread

    # -- ScanBackend ----------------------------------------------------------------

    def test_scan_lists_exactly_the_live_keys_under_a_prefix(self, backend: Backend) -> None:
        """scan lists every key under the prefix, in batches, and no other key; glob
        characters in the prefix are literal."""
        if not self._has(backend, "scan"):
            repo = self._repo(backend)
            self._refused(backend, repo.clear)
            self._refused(backend, repo.count)
            self._refused(backend, lambda: list(repo.scan()))
            return
        assert isinstance(backend, ScanBackend)
        mine = [f"ns:{i}" for i in range(25)] + ["ns:", "ns:ünï", "ns:a b"]
        backend.set_many([(key, b"v") for key in mine])
        others = ["ns", "nsx:1", "other:ns:1", "Ns:1", "n*:1", "ns?1"]
        backend.set_many([(key, b"v") for key in others])
        batches = list(backend.scan("ns:", 4))
        assert all(batches)
        found = [key for keys in batches for key in keys]
        assert set(found) == set(mine)
        assert len(batches) > 1
        glob = ["a*[b]?\\:1", "a*[b]?\\:2"]
        backend.set_many([(key, b"g") for key in [*glob, "aX[b]?\\:3", "a*b?\\:4"]])
        assert {k for keys in backend.scan("a*[b]?\\:") for k in keys} == set(glob)
        assert list(backend.scan("nothing-here:")) == []
        with pytest.raises((TypeError, ValueError)):
            list(backend.scan("ns:", 0))

    def test_scan_leaves_out_expired_keys(self, backend: Backend) -> None:
        """A key whose TTL has passed is not listed."""
        if not self._has(backend, "scan"):
            return
        assert isinstance(backend, ScanBackend)
        backend.set("t:gone", b"1", self.short_ttl)
        backend.set("t:kept", b"2")
        self.wait(self.short_ttl + self.expiry_slack)
        assert [key for keys in backend.scan("t:") for key in keys] == ["t:kept"]

    def test_repository_namespace_operations(self, backend: Backend) -> None:
        """clear, count and scan of a repository cover its records only."""
        if not self._has(backend, "scan"):
            return
        from cacheorm._repository import Repository

        items = Repository(_Item, backend=backend, namespace="item")
        neighbours = Repository(_Item, backend=backend, namespace="items")
        items.save_many([_Item(i, f"n{i}") for i in range(30)])
        neighbours.save(_Item(1, "other"))
        assert items.count(batch=7) == 30
        assert sorted(item.id for item in items.scan(batch=7)) == list(range(30))
        assert items.clear(batch=7) == 30
        assert items.count() == 0
        assert neighbours.get(1).name == "other"


class BackendContract(CapabilityContract):
    """The shared backend semantics; subclass it and provide a ``backend`` fixture.

    Attributes:
        short_ttl: the TTL, in seconds, of keys that a test waits to see expire.
        expiry_slack: how long after its TTL a key may still be visible, in seconds
            (memcached's clock ticks in whole seconds).
        large_value_size: the size of the "large value" test, in bytes; it must be
            within the store's item size limit.
        threads: how many threads the concurrency tests use.
    """

    # short_ttl, expiry_slack, threads, the `backend` fixture and wait() come
    # from CapabilityContract.
    large_value_size: ClassVar[int] = 1_000_000

    def wait_for_expiry(self) -> None:
        """Wait until a key written with ``short_ttl`` must have expired."""
        self.wait(self.short_ttl + self.expiry_slack)

    # -- the protocol ---------------------------------------------------------

    def test_is_a_backend(self, backend: Backend) -> None:
        """The backend satisfies the runtime-checkable Backend protocol."""
        assert isinstance(backend, Backend)

    # -- get / set ------------------------------------------------------------

    def test_get_of_a_missing_key_is_none(self, backend: Backend) -> None:
        """get, gets and exists report a key that was never written as absent."""
        assert backend.get("missing") is None
        assert backend.gets("missing") is None
        assert backend.exists("missing") is False

    def test_set_then_get_round_trips(self, backend: Backend) -> None:
        """A value set under a key reads back byte for byte, and set overwrites."""
        backend.set("k", b"v1")
        assert backend.get("k") == b"v1"
        assert backend.exists("k") is True
        backend.set("k", b"v2")
        assert backend.get("k") == b"v2"

    def test_binary_and_empty_values_round_trip(self, backend: Backend) -> None:
        """Every byte value (NUL, CR LF, 0xff) and the empty value are stored exactly."""
        every_byte = bytes(range(256)) * 4
        backend.set("bin", every_byte)
        backend.set("crlf", b"\r\nEND\r\n")
        backend.set("empty", b"")
        assert backend.get("bin") == every_byte
        assert backend.get("crlf") == b"\r\nEND\r\n"
        assert backend.get("empty") == b""
        assert backend.exists("empty") is True

    def test_large_value_round_trips(self, backend: Backend) -> None:
        """A value of ``large_value_size`` bytes is stored and read back whole."""
        big = bytes(i % 251 for i in range(self.large_value_size))
        backend.set("big", big)
        assert backend.get("big") == big
        assert backend.get_many(["big", "none"]) == [big, None]

    def test_bytearray_and_memoryview_values(self, backend: Backend) -> None:
        """bytearray and memoryview values are accepted and read back as bytes."""
        ba: Any = bytearray(b"from bytearray")
        mv: Any = memoryview(b"from memoryview")
        backend.set("ba", ba)
        backend.set("mv", mv)
        assert backend.get("ba") == b"from bytearray"
        assert backend.get("mv") == b"from memoryview"
        assert type(backend.get("ba")) is bytes

    @pytest.mark.parametrize("bad", ["text", 42, None, ["b"]])
    def test_a_value_that_is_not_bytes_raises_and_stores_nothing(
        self, backend: Backend, bad: Any
    ) -> None:
        """A value that is not bytes raises TypeError naming the key, before any write."""
        with pytest.raises(TypeError, match="'the-key'"):
            backend.set("the-key", bad)
        with pytest.raises(TypeError, match="'the-key'"):
            backend.add("the-key", bad)
        assert backend.get("the-key") is None

    def test_a_batch_with_one_bad_value_stores_nothing(self, backend: Backend) -> None:
        """set_many and add_many check every pair before writing any."""
        items: Any = [("a", b"1"), ("b", "not bytes"), ("c", b"3")]
        with pytest.raises(TypeError, match="'b'"):
            backend.set_many(items)
        with pytest.raises(TypeError, match="'b'"):
            backend.add_many(items)
        with pytest.raises(TypeError, match="'b'"):
            backend.replace_many(items)
        assert backend.get_many(["a", "b", "c"]) == [None, None, None]

    def test_a_key_that_is_not_str_raises_type_error(self, backend: Backend) -> None:
        """bytes or int keys raise TypeError rather than being coerced."""
        bad: Any
        for bad in (b"k", 1):
            with pytest.raises(TypeError, match="keys must be str"):
                backend.get(bad)
            with pytest.raises(TypeError, match="keys must be str"):
                backend.set(bad, b"v")
            with pytest.raises(TypeError, match="keys must be str"):
                backend.get_many(["ok", bad])

    @pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf"), True, "10"])
    def test_a_bad_ttl_raises_before_any_write(self, backend: Backend, bad: Any) -> None:
        """A zero, negative, NaN, infinite, bool or non-numeric TTL raises ValueError."""
        writes: list[Callable[[], object]] = [
            lambda: backend.set("k", b"v", ttl=bad),
            lambda: backend.add("k", b"v", ttl=bad),
            lambda: backend.set_many([("k", b"v")], ttl=bad),
            lambda: backend.add_many([("k", b"v")], ttl=bad),
        ]
        for write in writes:
            with pytest.raises(ValueError, match="ttl"):
                write()
        assert backend.get("k") is None

    def test_awkward_keys_round_trip_and_stay_apart(self, backend: Backend) -> None:
        """Keys with spaces, CR LF, NUL, unicode or over 250 bytes are stored and kept distinct."""
        values = {key: f"value {i}".encode() for i, key in enumerate(AWKWARD_KEYS)}
        for key, value in values.items():
            backend.set(key, value)
        for key, value in values.items():
            assert backend.get(key) == value, key
            assert backend.exists(key) is True, key
        assert backend.get_many(list(values)) == list(values.values())
        assert backend.get("injected") is None
        assert backend.add(AWKWARD_KEYS[-1], b"again") is False
        assert backend.replace(AWKWARD_KEYS[-2], b"replaced") is True
        assert backend.get(AWKWARD_KEYS[-2]) == b"replaced"
        assert backend.get(AWKWARD_KEYS[-1]) == values[AWKWARD_KEYS[-1]]
        assert backend.delete_many(list(values)) == len(values)
        assert backend.get_many(list(values)) == [None] * len(values)

    def test_awkward_keys_work_in_batches_and_counters(self, backend: Backend) -> None:
        """Batch writes, counters and compare-and-set accept the awkward keys too."""
        keys = list(AWKWARD_KEYS)
        assert backend.add_many([(k, b"1") for k in keys]) == [True] * len(keys)
        assert backend.replace_many([(k, k.encode()) for k in keys]) == [True] * len(keys)
        assert backend.get_many(keys) == [k.encode() for k in keys]
        for key in keys:
            backend.delete(key)
            assert backend.incr(key, 2) == 2, key
            got = backend.gets(key)
            assert got is not None
            assert backend.cas(key, b"done", got[1]) is True, key
        assert backend.get_many(keys) == [b"done"] * len(keys)

    # -- batches ---------------------------------------------------------------

    def test_get_many_keeps_order_and_none_for_misses(self, backend: Backend) -> None:
        """get_many answers in input order, None where absent, duplicates answered twice."""
        backend.set("a", b"1")
        backend.set("c", b"3")
        assert backend.get_many(["c", "b", "a", "c"]) == [b"3", None, b"1", b"3"]
        assert backend.get_many([]) == []

    def test_get_many_of_a_thousand_keys(self, backend: Backend) -> None:
        """A batch of 1,000 keys is written and read back in order."""
        items = [(f"key:{i}", f"value {i}".encode()) for i in range(1000)]
        backend.set_many(items)
        keys = [k for k, _ in items] + ["key:missing"]
        assert backend.get_many(keys) == [v for _, v in items] + [None]

    def test_set_many_stores_every_pair_and_the_last_duplicate_wins(self, backend: Backend) -> None:
        """set_many stores each pair; a key given twice keeps the later value."""
        backend.set_many([("a", b"1"), ("b", b"2"), ("a", b"3")])
        assert backend.get_many(["a", "b"]) == [b"3", b"2"]
        backend.set_many([])

    def test_add_stores_only_when_absent(self, backend: Backend) -> None:
        """add writes a new key, refuses an existing one and leaves its value alone."""
        assert backend.add("k", b"first") is True
        assert backend.add("k", b"second") is False
        assert backend.get("k") == b"first"

    def test_replace_stores_only_when_present(self, backend: Backend) -> None:
        """replace refuses a missing key (creating nothing) and overwrites an existing one."""
        assert backend.replace("k", b"v") is False
        assert backend.exists("k") is False
        backend.set("k", b"old")
        assert backend.replace("k", b"new") is True
        assert backend.get("k") == b"new"

    def test_add_many_reports_each_pair_and_later_pairs_see_earlier_ones(
        self, backend: Backend
    ) -> None:
        """add_many answers per pair in order; a key repeated in the batch is added once."""
        backend.set("taken", b"old")
        result = backend.add_many([("new", b"1"), ("taken", b"2"), ("new", b"3"), ("n2", b"4")])
        assert result == [True, False, False, True]
        assert backend.get_many(["new", "taken", "n2"]) == [b"1", b"old", b"4"]
        assert backend.add_many([]) == []

    def test_replace_many_reports_each_pair_in_order(self, backend: Backend) -> None:
        """replace_many writes the present keys only and says which."""
        backend.set_many([("a", b"1"), ("c", b"3")])
        assert backend.replace_many([("a", b"A"), ("b", b"B"), ("c", b"C"), ("a", b"A2")]) == [
            True,
            False,
            True,
            True,
        ]
        assert backend.get_many(["a", "b", "c"]) == [b"A2", None, b"C"]
        assert backend.replace_many([]) == []

    # -- delete / exists -----------------------------------------------------

    def test_delete_reports_whether_the_key_existed(self, backend: Backend) -> None:
        """delete is True once for a stored key, then False."""
        backend.set("k", b"v")
        assert backend.delete("k") is True
        assert backend.delete("k") is False
        assert backend.get("k") is None
        assert backend.exists("k") is False

    def test_delete_many_counts_the_keys_that_existed(self, backend: Backend) -> None:
        """delete_many removes every key and counts each existing one once."""
        backend.set_many([("a", b"1"), ("b", b"2")])
        assert backend.delete_many(["a", "missing", "b", "a"]) == 2
        assert backend.get_many(["a", "b"]) == [None, None]
        assert backend.delete_many([]) == 0

    # -- counters --------------------------------------------------------------

    def test_incr_creates_a_counter_at_zero(self, backend: Backend) -> None:
        """incr on a missing key starts from 0 and stores ASCII digits."""
        assert backend.incr("n") == 1
        assert backend.get("n") == b"1"
        assert backend.incr("m", 5) == 5

    def test_incr_adds_to_the_stored_value(self, backend: Backend) -> None:
        """incr adds its delta to digits written by set, and to large values."""
        backend.set("n", b"41")
        assert backend.incr("n") == 42
        assert backend.incr("n", 1000) == 1042
        backend.set("big", str(2**40).encode())
        assert backend.incr("big", 2**40) == 2**41
        assert backend.get("big") == str(2**41).encode()

    def test_incr_with_a_negative_delta(self, backend: Backend) -> None:
        """A negative delta counts down, below zero too."""
        backend.set("n", b"10")
        assert backend.incr("n", -3) == 7
        assert backend.incr("n", -10) == -3
        assert backend.incr("fresh", -2) == -2
        assert backend.incr("fresh", 5) == 3
        assert backend.get("fresh") == b"3"

    @pytest.mark.parametrize("stored", [b"abc", b"1.5", b"", b"\xff", b"0x10"])
    def test_incr_of_a_non_integer_raises_backend_error(
        self, backend: Backend, stored: bytes
    ) -> None:
        """incr refuses a value that is not an ASCII integer, naming the key, and keeps it."""
        backend.set("the-key", stored)
        with pytest.raises(BackendError, match="'the-key'") as info:
            backend.incr("the-key")
        assert info.value.key == "the-key"
        assert backend.get("the-key") == stored

    # -- compare-and-set ----------------------------------------------------

    def test_cas_with_a_fresh_token_writes_once(self, backend: Backend) -> None:
        """cas with the token from gets writes; the same token then no longer works."""
        backend.set("k", b"v1")
        got = backend.gets("k")
        assert got is not None
        value, token = got
        assert value == b"v1"
        assert backend.cas("k", b"v2", token) is True
        assert backend.get("k") == b"v2"
        assert backend.cas("k", b"v3", token) is False
        assert backend.get("k") == b"v2"

    def test_reads_do_not_change_the_token(self, backend: Backend) -> None:
        """Reading a key (get, gets, get_many, exists) leaves its token valid."""
        backend.set("k", b"v")
        got = backend.gets("k")
        assert got is not None
        backend.get("k")
        backend.gets("k")
        backend.get_many(["k"])
        backend.exists("k")
        assert backend.cas("k", b"w", got[1]) is True

    def test_cas_with_a_stale_token_fails(self, backend: Backend) -> None:
        """cas refuses after another write changed the value, keeping that write."""
        backend.set("k", b"v1")
        got = backend.gets("k")
        assert got is not None
        backend.set("k", b"theirs")
        assert backend.cas("k", b"mine", got[1]) is False
        assert backend.get("k") == b"theirs"

    @pytest.mark.parametrize("writer", ["set", "replace", "incr"])
    def test_every_kind_of_write_invalidates_a_token(self, backend: Backend, writer: str) -> None:
        """set, replace and incr each make an earlier token stale."""
        backend.set("k", b"1")
        got = backend.gets("k")
        assert got is not None
        if writer == "set":
            backend.set("k", b"2")
        elif writer == "replace":
            assert backend.replace("k", b"2") is True
        else:
            assert backend.incr("k") == 2
        assert backend.cas("k", b"mine", got[1]) is False
        assert backend.get("k") == b"2"

    def test_cas_on_a_deleted_key_fails_and_recreates_nothing(self, backend: Backend) -> None:
        """cas never brings back a deleted key, nor accepts an old token once it is set again."""
        backend.set("k", b"v")
        got = backend.gets("k")
        assert got is not None
        backend.delete("k")
        assert backend.cas("k", b"new", got[1]) is False
        assert backend.exists("k") is False
        backend.set("k", b"other")
        assert backend.cas("k", b"new", got[1]) is False
        assert backend.get("k") == b"other"

    def test_cas_with_a_foreign_token_fails(self, backend: Backend) -> None:
        """A token gets did not hand out never lets cas write, and does not raise."""
        backend.set("k", b"v")
        for bogus in [object(), None, "not a token", b"\x00" * 8, 1.5]:
            assert backend.cas("k", b"new", bogus) is False
        assert backend.get("k") == b"v"

    def test_cas_on_a_missing_key_fails(self, backend: Backend) -> None:
        """cas on a key that never existed writes nothing."""
        backend.set("other", b"v")
        got = backend.gets("other")
        assert got is not None
        assert backend.cas("missing", b"v", got[1]) is False
        assert backend.exists("missing") is False

    # -- TTL (real waits) -----------------------------------------------------

    def test_keys_expire_after_their_ttl(self, backend: Backend) -> None:
        """Every kind of write applies its TTL; an expired key is absent to every read."""
        short = self.short_ttl
        backend.set("set", b"1", ttl=short)
        assert backend.add("add", b"1", ttl=short) is True
        backend.set("replace", b"0")
        assert backend.replace("replace", b"1", ttl=short) is True
        backend.set_many([("many1", b"1"), ("many2", b"1")], ttl=short)
        assert backend.add_many([("addmany", b"1")], ttl=short) == [True]
        backend.set("replmany", b"0")
        assert backend.replace_many([("replmany", b"1")], ttl=short) == [True]
        backend.set("cas", b"0")
        got = backend.gets("cas")
        assert got is not None
        assert backend.cas("cas", b"1", got[1], ttl=short) is True
        backend.set("counter", b"5", ttl=short)
        assert backend.incr("counter") == 6  # incr keeps the TTL
        backend.set("long", b"1", ttl=3600)
        backend.set("forever", b"1")
        backend.set("cleared", b"1", ttl=short)
        backend.set("cleared", b"2")  # a write without a TTL clears the old one
        backend.set("extended", b"1", ttl=short)
        backend.set("extended", b"2", ttl=3600)
        short_keys = ["set", "add", "replace", "many1", "many2", "addmany", "replmany", "cas"]
        short_keys.append("counter")
        kept = ["long", "forever", "cleared", "extended"]
        assert backend.get_many(short_keys + kept) == [b"1"] * 8 + [b"6", b"1", b"1", b"2", b"2"]

        self.wait_for_expiry()

        assert backend.get_many(short_keys + kept) == [None] * 9 + [b"1", b"1", b"2", b"2"]
        for key in short_keys:
            assert backend.get(key) is None, key
            assert backend.gets(key) is None, key
            assert backend.exists(key) is False, key

    def test_an_expired_key_is_absent_to_writes(self, backend: Backend) -> None:
        """After expiry add succeeds, replace/cas/delete fail, incr restarts at zero."""
        short = self.short_ttl
        for key in ["add", "replace", "cas", "delete", "delete_many", "incr", "add_many"]:
            backend.set(key, b"7", ttl=short)
        got = backend.gets("cas")
        assert got is not None

        self.wait_for_expiry()

        assert backend.add("add", b"new") is True
        assert backend.replace("replace", b"new") is False
        assert backend.cas("cas", b"new", got[1]) is False
        assert backend.delete("delete") is False
        assert backend.delete_many(["delete_many"]) == 0
        assert backend.incr("incr") == 1
        assert backend.add_many([("add_many", b"new")]) == [True]
        assert backend.get_many(["add", "replace", "cas", "incr", "add_many"]) == [
            b"new",
            None,
            None,
            b"1",
            b"new",
        ]

    def _keep_ttl_writes(self, backend: Backend, keys: dict[str, str]) -> None:
        """Rewrite each of ``keys`` (``{key: method}``) with ``ttl=KEEP_TTL`` by its method."""
        for key, method in keys.items():
            if method == "replace":
                assert backend.replace(key, b"new", ttl=KEEP_TTL) is True, key
            elif method == "replace_many":
                assert backend.replace_many([(key, b"new")], ttl=KEEP_TTL) == [True], key
            else:
                got = backend.gets(key)
                assert got is not None, key
                assert backend.cas(key, b"new", got[1], ttl=KEEP_TTL) is True, key

    def test_keep_ttl_keeps_a_finite_ttl(self, backend: Backend) -> None:
        """replace, replace_many and cas with ttl=KEEP_TTL keep the key's TTL: the new
        value expires when the old one would have, a longer TTL is not cut short."""
        keys = {"replace": "replace", "replace_many": "replace_many", "cas": "cas"}
        long_keys = {f"long {key}": method for key, method in keys.items()}
        backend.set_many([(key, b"old") for key in keys], ttl=self.short_ttl)
        backend.set_many([(key, b"old") for key in long_keys], ttl=3600)
        self._keep_ttl_writes(backend, keys)
        self._keep_ttl_writes(backend, long_keys)
        assert backend.replace("absent", b"new", ttl=KEEP_TTL) is False
        assert backend.replace_many([("absent", b"new")], ttl=KEEP_TTL) == [False]
        assert backend.get_many([*keys, *long_keys, "absent"]) == [b"new"] * 6 + [None]

        self.wait_for_expiry()

        assert backend.get_many([*keys, *long_keys]) == [None] * 3 + [b"new"] * 3

    def test_keep_ttl_keeps_no_expiry(self, backend: Backend) -> None:
        """A key without a TTL rewritten with ttl=KEEP_TTL still never expires."""
        keys = {"replace": "replace", "replace_many": "replace_many", "cas": "cas"}
        backend.set_many([(key, b"old") for key in keys])
        self._keep_ttl_writes(backend, keys)

        self.wait_for_expiry()

        assert backend.get_many(list(keys)) == [b"new"] * 3

    def test_a_fractional_ttl_is_honoured(self, backend: Backend) -> None:
        """A TTL below one second keeps the key until it has passed, then drops it."""
        backend.set("k", b"v", ttl=0.5)
        assert backend.get("k") == b"v"
        self.wait(0.5 + self.expiry_slack)
        assert backend.get("k") is None

    # -- threads -----------------------------------------------------------------

    def _race(self, work: Callable[[int], Any]) -> list[Any]:
        start = threading.Barrier(self.threads, timeout=30)

        def run(i: int) -> Any:
            start.wait()
            return work(i)

        previous = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)  # switch threads often, so that races show up
        try:
            with ThreadPoolExecutor(self.threads) as pool:
                return list(pool.map(run, range(self.threads)))
        finally:
            sys.setswitchinterval(previous)

    def test_concurrent_cas_increments_lose_nothing(self, backend: Backend) -> None:
        """Threads doing gets/cas-retry increments of one key lose no increment."""
        per_thread = 100
        backend.set("n", b"0")

        def work(_: int) -> None:
            for _ in range(per_thread):
                while True:
                    got = backend.gets("n")
                    assert got is not None
                    if backend.cas("n", str(int(got[0]) + 1).encode(), got[1]):
                        break

        self._race(work)
        assert backend.get("n") == str(self.threads * per_thread).encode()

    def test_concurrent_incr_loses_nothing(self, backend: Backend) -> None:
        """Threads calling incr on one missing key count every call exactly once."""
        per_thread = 100

        def work(_: int) -> None:
            for _ in range(per_thread):
                backend.incr("n")

        self._race(work)
        assert backend.get("n") == str(self.threads * per_thread).encode()

    def test_concurrent_add_has_exactly_one_winner(self, backend: Backend) -> None:
        """Threads racing add on one key: exactly one succeeds, and its value is stored."""
        results = self._race(lambda i: backend.add("k", str(i).encode()))
        assert results.count(True) == 1
        assert backend.get("k") == str(results.index(True)).encode()

    def test_close_can_be_called(self, backend: Backend) -> None:
        """close() returns normally."""
        backend.close()

    def test_a_backend_is_a_context_manager(
        self, backend: Backend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``with backend as b:`` gives the backend and closes it on the way out, also when
        the block raises (the exception goes on)."""
        closed: list[bool] = []
        close = backend.close

        def counting_close() -> None:
            closed.append(True)
            close()

        monkeypatch.setattr(backend, "close", counting_close)
        managed: Any = backend  # the Backend protocol itself does not require __enter__
        with managed as entered:
            assert entered is backend
            assert closed == []
        assert closed == [True]
        with pytest.raises(KeyError), managed:
            raise KeyError("raised in the block")
        assert closed == [True, True]


async def _made(make: Callable[[], Any]) -> Any:
    """Call ``make`` on the portal's loop, awaiting what it returns if it is awaitable."""
    made = make()
    if inspect.isawaitable(made):
        made = await made
    return made


class AsyncBackendContract(BackendContract):
    """The same contract for an async backend: every test of :class:`BackendContract`, unchanged.

    Subclass it (the class name must start with ``Test``) and give it a
    ``make_backend`` fixture that returns a zero-argument callable, plain or
    ``async``, which builds an *empty* async backend; the suite calls it on its
    event loop, so the backend may open connections there::

        class TestMyAsyncBackend(AsyncBackendContract):
            @pytest.fixture
            def make_backend(self, server):
                async def make():
                    store = MyAsyncBackend(server.url)
                    await store.clear()
                    return store

                return make

    The suite runs one asyncio event loop in a background thread (a
    :class:`Portal`, the ``portal`` fixture) and hands every inherited test a
    blocking proxy of the backend (:meth:`Portal.wrap`): each call is awaited on
    that loop, from whichever thread the test calls it, so the threaded tests
    become concurrent tasks on one loop. ``close()`` is ``aclose()`` and the
    backend's ``aclose()`` runs again at teardown: it must be idempotent. Then
    come the async-only checks: every method is a coroutine function, the
    capabilities are the async protocols, ``async with`` closes it, and calls
    cancelled at random points never see another call's reply.

    To run on another loop (uvloop), override the ``portal`` fixture to yield
    ``Portal(loop_factory=uvloop.new_event_loop)``.

    Attributes:
        cancel_rounds: rounds of the cancellation test.
        cancel_tasks: tasks per round; about two thirds are cancelled, half of
            them before they start and half after a random delay.
    """

    cancel_rounds: ClassVar[int] = 10
    cancel_tasks: ClassVar[int] = 100

    portal: Portal
    async_backend: AsyncBackend

    @pytest.fixture(name="portal")
    def portal_fixture(self) -> Iterator[Portal]:
        """The event loop thread the backend lives on."""
        with Portal() as portal:
            yield portal

    @pytest.fixture
    def make_backend(self) -> Callable[[], Any]:
        """A callable that builds an empty async backend; every subclass must override this."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `make_backend` fixture returning a callable "
            "that builds an empty async backend"
        )

    @pytest.fixture
    def backend(self, portal: Portal, make_backend: Callable[[], Any]) -> Iterator[Backend]:
        """The blocking proxy of the backend ``make_backend`` builds on the portal's loop."""
        store = portal.call(_made(make_backend))
        if not isinstance(store, AsyncBackend):
            raise TypeError(
                f"{type(self).__name__}.make_backend built a {type(store).__name__}, "
                "which is not an AsyncBackend"
            )
        self.portal = portal
        self.async_backend = store
        try:
            yield portal.wrap(store)
        finally:
            portal.call(store.aclose())

    # -- async only ------------------------------------------------------------

    def test_every_method_is_awaited(self, backend: Backend) -> None:
        """The methods of AsyncBackend and of each capability the backend has are
        coroutine functions (``scan`` returns an async iterator), and the sync
        capabilities the suite sees are exactly the async ones."""
        store = self.async_backend
        methods = ["get", "get_many", "set", "set_many", "add", "add_many", "replace"]
        methods += ["replace_many", "delete", "delete_many", "exists", "incr", "gets", "cas"]
        methods.append("aclose")
        for name, protocol in ASYNC_CAPABILITIES.items():
            has = isinstance(store, protocol)
            assert has == self._has(backend, name), name
            if has and name == "ttl":
                methods += ["touch", "touch_many", "ttl_of"]
            elif has and name == "counter":
                methods.append("counter_add")
        for name in methods:
            assert inspect.iscoroutinefunction(getattr(store, name)), name
        if isinstance(store, AsyncScanBackend):
            batches = store.scan("prefix:")
            assert hasattr(batches, "__anext__")
            assert list(self.portal.iterate(batches)) == []

    def test_async_with_closes_the_backend(
        self, backend: Backend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``async with backend as b:`` gives the backend and awaits ``aclose()`` on the way
        out, also when the block raises."""
        store = self.async_backend
        closed: list[bool] = []
        aclose = store.aclose

        async def counting_aclose() -> None:
            closed.append(True)
            await aclose()

        monkeypatch.setattr(store, "aclose", counting_aclose)

        async def use() -> None:
            managed: Any = store  # the AsyncBackend protocol itself does not require __aenter__
            async with managed as entered:
                assert entered is store
                assert closed == []
            assert closed == [True]
            with pytest.raises(KeyError):
                async with managed:
                    raise KeyError("raised in the block")
            assert closed == [True, True]

        self.portal.call(use())

    def test_cancelled_calls_never_see_another_calls_reply(self, backend: Backend) -> None:
        """Tasks writing and reading their own keys, many cancelled before they start or
        at a random point: every task that finishes reads its own values, every key holds
        its own value or none, and the backend keeps working."""
        early, cancelled, finished = self.portal.call(self._cancel_storm(self.async_backend))
        assert cancelled + finished == self.cancel_rounds * self.cancel_tasks
        assert cancelled >= early > 0  # a task cancelled before it starts never runs

    async def _cancel_storm(self, store: AsyncBackend) -> tuple[int, int, int]:
        rng = random.Random(1212)
        wrong: list[tuple[str, object]] = []
        early = cancelled = finished = 0
        loop = asyncio.get_running_loop()

        async def work(key: str, value: bytes) -> None:
            await store.set(key, value)
            got = await store.get(key)
            if got != value:
                wrong.append((key, got))
            many = await store.get_many([key, f"{key}:absent"])
            if many != [value, None]:
                wrong.append((key, many))

        for round_ in range(self.cancel_rounds):
            tasks: list[asyncio.Task[None]] = []
            for i in range(self.cancel_tasks):
                task = loop.create_task(work(f"cancel:{i}", f"round {round_} key {i}".encode()))
                tasks.append(task)
                fate = rng.random()
                if fate < 1 / 3:
                    task.cancel()
                    early += 1
                elif fate < 2 / 3:
                    loop.call_later(rng.uniform(0, 0.004), task.cancel)
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, asyncio.CancelledError):
                    cancelled += 1
                elif isinstance(result, BaseException):
                    raise result
                else:
                    finished += 1
        assert wrong == []
        keys = [f"cancel:{i}" for i in range(self.cancel_tasks)]
        for i, value in enumerate(await store.get_many(keys)):
            assert value is None or value.endswith(f" key {i}".encode()), (i, value)
        await store.set("after", b"still works")
        assert await store.get("after") == b"still works"
        return early, cancelled, finished
