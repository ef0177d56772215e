"""Hostile input on every backend: key parts, TTLs and payloads written by someone else.

Every test here runs on each backend of the ``backend`` fixture (memory,
filesystem and real redis-server / memcached processes) and pins one promise
of docs/security.md:

* key parts cannot inject a command or make two records share a key;
* a bad TTL raises :class:`cacheorm.InvalidTTL` before the backend is called;
* bytes planted under one of our keys raise :class:`cacheorm.DeserializationError`
  naming the key, and no code in them runs (pickle included, signed or not).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import hashlib
import hmac
import math
import os
import pickle
import re
import shlex
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import pytest

import cacheorm as co
from cacheorm._serializers import _SIGNED_HEADER

PK = co.Field(primary_key=True)
SIGNING_KEY = b"hostile-tests-signing-key-0123456789"
OTHER_KEY = b"another-signing-key-of-enough-length"


@dataclasses.dataclass
class Doc:
    id: Annotated[str, PK]
    text: str = ""
    data: bytes = b""
    n: int = 0


@dataclasses.dataclass
class Pair:
    a: Annotated[str, PK]
    b: Annotated[str, PK]
    note: str = ""


@dataclasses.dataclass
class Tagged:
    user: Annotated[str, co.Field(primary_key=True, hash_tag=True)]
    name: Annotated[str, PK]


@dataclasses.dataclass
class Ticket:
    id: Annotated[int | None, co.Field(primary_key=True, auto=True)] = None
    text: str = ""


# -- helpers ------------------------------------------------------------------------


def _memcached_live_keys(address: str) -> list[bytes]:
    """The live keys of one memcached server, from ``lru_crawler metadump hash``.

    The crawler skips expired and flushed items, so this is exactly what a
    ``get`` could return. It walks the hash table, not the LRUs (whose
    maintainer moves items mid-crawl, so a crawl of the LRUs can miss some).
    The crawler answers BUSY while another crawl runs.
    """
    host, _, port = address.rpartition(":")
    ends = (b"BUSY", b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")
    for _ in range(200):
        with socket.create_connection((host, int(port)), timeout=5.0) as sock:
            sock.sendall(b"lru_crawler metadump hash\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                if data.startswith(ends) and data.endswith(b"\r\n"):
                    break
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        if data.startswith(b"BUSY"):
            time.sleep(0.005)  # another crawl is running: ask again
            continue
        assert data.endswith(b"END\r\n"), f"memcached metadump failed: {data[:200]!r}"
        return [
            urllib.parse.unquote_to_bytes(line.split(b" ", 1)[0][4:])
            for line in data.split(b"\n")
            if line.startswith(b"key=")
        ]
    raise AssertionError(f"memcached at {address}: lru_crawler stayed busy")


_FS_ENTRY = re.compile(r"[0-9a-f]{64}")


def stored_count(backend: co.Backend, expected: int) -> int:
    """How many keys the backend's store holds, asked of the store itself.

    memcached's crawler may miss items its LRU maintainer moves during the
    crawl, so it never counts more than are live but may count fewer: its
    distinct keys are counted again until they number ``expected`` (a store
    that holds more or fewer never gets there).
    """
    if isinstance(backend, co.MemoryBackend):
        return len(backend)
    if isinstance(backend, co.FileSystemBackend):
        return sum(
            1
            for shard in backend.directory.iterdir()
            if shard.is_dir()
            for entry in shard.iterdir()
            if _FS_ENTRY.fullmatch(entry.name)
        )
    if isinstance(backend, co.RedisBackend):
        client: Any = backend.client
        if hasattr(client, "get_primaries"):  # a cluster: every primary's keys
            return sum(int(node.redis_connection.dbsize()) for node in client.get_primaries())
        return int(client.dbsize())
    assert isinstance(backend, co.MemcachedBackend)
    count = -1
    for _ in range(100):
        count = sum(len(set(_memcached_live_keys(address))) for address in backend.servers)
        if count == expected:
            break
    return count


class CountingBackend:
    """A real backend behind a wrapper that counts every call made to it."""

    def __init__(self, inner: co.Backend) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def _count(self, name: str) -> None:
        self.calls.append(name)

    def get(self, key: str, /) -> bytes | None:
        self._count("get")
        return self.inner.get(key)

    def get_many(self, keys: Sequence[str], /) -> list[bytes | None]:
        self._count("get_many")
        return self.inner.get_many(keys)

    def set(self, key: str, value: bytes, /, ttl: float | None = None) -> None:
        self._count("set")
        self.inner.set(key, value, ttl)

    def set_many(self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None) -> None:
        self._count("set_many")
        self.inner.set_many(items, ttl)

    def add(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        self._count("add")
        return self.inner.add(key, value, ttl)

    def add_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        self._count("add_many")
        return self.inner.add_many(items, ttl)

    def replace(self, key: str, value: bytes, /, ttl: float | None = None) -> bool:
        self._count("replace")
        return self.inner.replace(key, value, ttl)

    def replace_many(
        self, items: Sequence[tuple[str, bytes]], /, ttl: float | None = None
    ) -> list[bool]:
        self._count("replace_many")
        return self.inner.replace_many(items, ttl)

    def delete(self, key: str, /) -> bool:
        self._count("delete")
        return self.inner.delete(key)

    def delete_many(self, keys: Sequence[str], /) -> int:
        self._count("delete_many")
        return self.inner.delete_many(keys)

    def exists(self, key: str, /) -> bool:
        self._count("exists")
        return self.inner.exists(key)

    def incr(self, key: str, delta: int = 1, /) -> int:
        self._count("incr")
        return self.inner.incr(key, delta)

    def gets(self, key: str, /) -> tuple[bytes, co.CasToken] | None:
        self._count("gets")
        return self.inner.gets(key)

    def cas(self, key: str, value: bytes, token: co.CasToken, /, ttl: float | None = None) -> bool:
        self._count("cas")
        return self.inner.cas(key, value, token, ttl)

    def close(self) -> None:
        self._count("close")

    def __getattr__(self, name: str) -> Any:
        # Methods added to the Backend protocol later are counted too.
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self._count(name)
            return attr(*args, **kwargs)

        return counted


# -- hostile key parts ----------------------------------------------------------------

HOSTILE_PARTS = [
    "\r\n",
    "\r",
    "\n",
    "\r\nflush_all\r\n",
    "\r\nFLUSHALL\r\n",
    "x\r\nset doc:owned 0 0 1\r\nX\r\n",
    "*1\r\n$8\r\nFLUSHALL\r\n",
    "\x00",
    "a\x00b",
    "a\x00",
    " ",
    "a b",
    "\t",
    "\x0b\x0c\x1b\x7f",
    "\x85\u2028\u00a0",
    "{",
    "}",
    "{tag}",
    "x{tag}y",
    "}{",
    ":",
    "::",
    "a:b",
    "a:b:",
    ":a:b",
    "%",
    "%%",
    "%3A",
    "%3a",
    "a%3Ab",
    "a%b",
    "%25",
    "%7Btag%7D",
    "",
    ".",
    "..",
    "../../etc/passwd",
    "/",
    "\\",
    "*",
    "?",
    "\"'",
    "a" * 300,
    "a" * 301,
    "a" * 299 + "b",
    "x" * 246,  # "doc:" + 246 bytes: exactly memcached's 250-byte limit
    "x" * 247,  # one byte over: mapped
    "é" * 150,  # 300 bytes of two-byte UTF-8
    "日本" * 50,  # 300 bytes of three-byte UTF-8
    "🙂" * 75,  # 300 bytes of four-byte UTF-8
    "%" * 100,  # escapes to 300 characters
    "\r\n" * 150,
    "key",
    "KEY",
]

PAIR_PARTS = ["", "a", "b", ":", "a:b", "b:", ":b", "%3A", "a%3Ab", "{", "}", "\r\n", " "]


def _assert_isolated(
    backend: co.Backend, repo: co.Repository[Any], pks: list[Any], records: list[Any], before: int
) -> None:
    """Each pk has its own key and record, and the store holds exactly those (plus before)."""
    keys = [repo.key_for(pk) for pk in pks]
    assert len(set(keys)) == len(pks), "two primary keys share a key"
    for pk, record in zip(pks, records, strict=True):
        assert repo.get(pk) == record, f"get({pk!r}) returned another record"
    assert repo.get_many(pks) == records
    assert stored_count(backend, before + len(pks)) == before + len(pks)


def test_hostile_str_key_parts_are_isolated(backend: co.Backend) -> None:
    """Key parts with CRLF, NUL, spaces, braces, ':' / '%' or 300 bytes never inject or collide."""
    canary_repo = co.Repository(Doc, backend=backend, namespace="canary")
    canary = Doc(id="alive", text="written before the hostile keys")
    canary_repo.create(canary)
    repo = co.Repository(Doc, backend=backend)
    records = [Doc(id=part, text=f"record {i}", n=i) for i, part in enumerate(HOSTILE_PARTS)]
    for record in records:
        repo.create(record)  # an insert-if-absent: a shared key would raise AlreadyExists
    _assert_isolated(backend, repo, [r.id for r in records], records, before=1)
    assert canary_repo.get("alive") == canary, "the record written before was lost"
    for key in (repo.key_for(p) for p in HOSTILE_PARTS):
        assert "\r" not in key
        assert "\n" not in key
        assert "\x00" not in key
        assert " " not in key
        assert "{" not in key
        assert "}" not in key
    assert repo.delete_many([r.id for r in records]) == len(records)
    assert stored_count(backend, 1) == 1
    assert canary_repo.get("alive") == canary


def test_hostile_composite_key_parts_are_isolated(backend: co.Backend) -> None:
    """("a:b", "") and ("a", "b:") and every other pair of hostile parts get distinct keys."""
    repo = co.Repository(Pair, backend=backend)
    pks = [(a, b) for a in PAIR_PARTS for b in PAIR_PARTS]
    records = [Pair(a=a, b=b, note=f"{i}") for i, (a, b) in enumerate(pks)]
    repo.create_many(records)
    _assert_isolated(backend, repo, pks, records, before=0)
    assert repo.key_for(("a:b", "")) != repo.key_for(("a", "b:"))
    assert repo.key_for(("a%3Ab", "")) != repo.key_for(("a:b", ""))


def test_hostile_parts_in_templates_and_hash_tags_are_isolated(backend: co.Backend) -> None:
    """A brace template and a Redis hash-tag key keep hostile parts apart too."""
    templated = co.Repository(Pair, backend=backend, key="pair.{a}.{b}")
    pks = [(a, b) for a in [*PAIR_PARTS, ".", "a.b"] for b in [*PAIR_PARTS, ".", "b."]]
    records = [Pair(a=a, b=b) for a, b in pks]
    templated.create_many(records)
    _assert_isolated(backend, templated, pks, records, before=0)
    tagged = co.Repository(Tagged, backend=backend)
    tag_pks = [(u, n) for u in ["{", "}", "{x}", "a", "a}:{b", ""] for n in ["", "{", "n"]]
    tag_records = [Tagged(user=u, name=n) for u, n in tag_pks]
    tagged.create_many(tag_records)
    _assert_isolated(backend, tagged, tag_pks, tag_records, before=len(pks))
    for u, n in tag_pks:
        key = tagged.key_for((u, n))
        assert key.count("{") == 1
        assert key.count("}") == 1  # one hash tag, and it is cacheorm's


def test_raw_hostile_keys_reach_the_backend_safely(backend: co.Backend) -> None:
    """With a key callable, unescaped hostile keys still neither inject nor collide."""
    canary_repo = co.Repository(Doc, backend=backend, namespace="canary")
    canary_repo.create(Doc(id="alive"))
    repo = co.Repository(Doc, backend=backend, key=lambda pk: f"raw{pk}")
    records = [Doc(id=part, n=i) for i, part in enumerate(HOSTILE_PARTS)]
    for record in records:
        repo.create(record)
    assert repo.key_for("\r\nflush_all\r\n") == "raw\r\nflush_all\r\n"  # really unescaped
    _assert_isolated(backend, repo, [r.id for r in records], records, before=1)
    assert canary_repo.get("alive") == Doc(id="alive")


def test_lone_surrogate_key_part_is_refused(backend: co.Backend) -> None:
    """A str key part holding a lone surrogate is refused with a ValidationError naming the
    field before anything is written (not every serializer can store it); look-alikes work."""
    repo = co.Repository(Doc, backend=backend, serializer="pickle")
    for part in ["\ud800", "\udfff", "a\ud800b"]:
        with pytest.raises(co.ValidationError, match="lone surrogate") as info:
            repo.create(Doc(id=part))
        assert info.value.path == "$.id"  # the record check runs too and names the path
    parts = ["?", "\ufffd", "%ED%A0%80"]
    records = [Doc(id=p, n=i) for i, p in enumerate(parts)]
    for record in records:
        repo.create(record)
    _assert_isolated(backend, repo, parts, records, before=0)


# -- bad TTLs ---------------------------------------------------------------------------

BAD_TTLS = [
    pytest.param(-1, id="-1"),
    pytest.param(-0.001, id="-0.001"),
    pytest.param(dt.timedelta(seconds=-1), id="negative-timedelta"),
    pytest.param(math.nan, id="nan"),
    pytest.param(math.inf, id="inf"),
    pytest.param(-math.inf, id="-inf"),
    pytest.param(True, id="True"),
    pytest.param(False, id="False"),
    pytest.param("10", id="str"),
    pytest.param(b"10", id="bytes"),
    pytest.param(decimal.Decimal("10"), id="Decimal"),
    pytest.param([10], id="list"),
    pytest.param(object(), id="object"),
    pytest.param(10**400, id="10**400"),
    pytest.param(-(10**400), id="-10**400"),
    pytest.param(2**1024, id="2**1024"),
]


def _never_load(*args: Any) -> Any:
    raise AssertionError("the loader ran: the TTL was not checked first")


WRITES: dict[str, Callable[[co.Repository[Doc], Any], object]] = {
    "create": lambda repo, ttl: repo.create(Doc(id="new"), ttl=ttl),
    "save": lambda repo, ttl: repo.save(Doc(id="old", n=99), ttl=ttl),
    "update": lambda repo, ttl: repo.update(Doc(id="old", n=99), ttl=ttl),
    "get_or_create": lambda repo, ttl: repo.get_or_create(Doc(id="new"), ttl=ttl),
    "get_or_create-existing": lambda repo, ttl: repo.get_or_create(Doc(id="old"), ttl=ttl),
    "create_many": lambda repo, ttl: repo.create_many([Doc(id="new")], ttl=ttl),
    "create_many-empty": lambda repo, ttl: repo.create_many([], ttl=ttl),
    "save_many": lambda repo, ttl: repo.save_many([Doc(id="old", n=99)], ttl=ttl),
    "save_many-empty": lambda repo, ttl: repo.save_many([], ttl=ttl),
    "update_many": lambda repo, ttl: repo.update_many([Doc(id="old", n=99)], ttl=ttl),
    "update_many-empty": lambda repo, ttl: repo.update_many([], ttl=ttl),
    "update_with": lambda repo, ttl: repo.update_with("old", lambda r: r, ttl=ttl),
    "patch": lambda repo, ttl: repo.patch("old", n=99, ttl=ttl),
    "get_or_load": lambda repo, ttl: repo.get_or_load("new", _never_load, ttl=ttl),
    "get_or_load-cached": lambda repo, ttl: repo.get_or_load("old", _never_load, ttl=ttl),
    "get_or_load_many": lambda repo, ttl: repo.get_or_load_many(["new"], _never_load, ttl=ttl),
    "get_or_load_many-empty": lambda repo, ttl: repo.get_or_load_many([], _never_load, ttl=ttl),
    "touch": lambda repo, ttl: repo.touch("old", ttl=ttl),
    "touch_many": lambda repo, ttl: repo.touch_many(["old"], ttl=ttl),
    "touch_many-empty": lambda repo, ttl: repo.touch_many([], ttl=ttl),
}


@pytest.mark.parametrize("ttl", BAD_TTLS)
def test_bad_ttl_raises_before_any_backend_call(backend: co.Backend, ttl: Any) -> None:
    """Every write method and the constructor raise InvalidTTL without calling the backend."""
    co.Repository(Doc, backend=backend).create(Doc(id="old", n=1))
    counting = CountingBackend(backend)
    repo = co.Repository(Doc, backend=counting)
    for name, write in WRITES.items():
        with pytest.raises(co.InvalidTTL) as info:
            write(repo, ttl)
        assert isinstance(info.value, ValueError), name
        assert counting.calls == [], f"{name} called the backend: {counting.calls}"
    with pytest.raises(co.InvalidTTL):
        co.Repository(Doc, backend=counting, ttl=ttl)
    tickets = co.Repository(Ticket, backend=counting)
    with pytest.raises(co.InvalidTTL):
        tickets.create(Ticket(text="auto id"), ttl=ttl)  # not even the id counter moves
    with pytest.raises(co.InvalidTTL):
        tickets.create_many([Ticket(), Ticket()], ttl=ttl)
    assert counting.calls == []
    assert stored_count(backend, 1) == 1
    assert co.Repository(Doc, backend=backend).get("old") == Doc(id="old", n=1)


def test_ttl_too_long_for_the_backend_writes_nothing(backend: co.Backend) -> None:
    """A finite TTL beyond what Redis/memcached can express raises InvalidTTL; nothing is stored."""
    repo = co.Repository(Doc, backend=backend)
    ttl = 10**17  # about 3 billion years
    if isinstance(backend, (co.RedisBackend, co.MemcachedBackend)):
        with pytest.raises(co.InvalidTTL):
            repo.save(Doc(id="far"), ttl=ttl)
        with pytest.raises(co.InvalidTTL):
            repo.create_many([Doc(id="far")], ttl=ttl)
        assert repo.get_or_none("far") is None
        assert stored_count(backend, 0) == 0
    else:  # memory and filesystem keep the deadline as a float: it is just far away
        repo.save(Doc(id="far"), ttl=ttl)
        assert repo.get("far") == Doc(id="far")


def test_every_ttl_taking_write_is_covered() -> None:
    """Every public Repository method with a ``ttl`` parameter is in the bad-TTL test."""
    import inspect

    covered = {name.split("-")[0] for name in WRITES}
    taking_ttl = {
        name
        for name, member in inspect.getmembers(co.Repository, inspect.isfunction)
        if not name.startswith("_") and "ttl" in inspect.signature(member).parameters
    }
    assert taking_ttl <= covered, f"add these to WRITES: {sorted(taking_ttl - covered)}"


def test_counting_backend_counts(backend: co.Backend) -> None:
    """The counting wrapper sees the repository's calls (so zero calls above means none)."""
    counting = CountingBackend(backend)
    repo = co.Repository(Doc, backend=counting)
    repo.create(Doc(id="x"), ttl=30)
    repo.get("x")
    assert counting.calls == ["add", "get"]


# -- hostile payloads ----------------------------------------------------------------------

SERIALIZERS: dict[str, Callable[[], co.Serializer]] = {
    "json": co.JSONSerializer,
    "msgpack": co.MsgpackSerializer,
    "pickle": co.PickleSerializer,
    "pickle-signed": lambda: co.PickleSerializer(signing_key=SIGNING_KEY),
}

RECORD = Doc(id="victim", text="AAAA", data=b"\x01\x02\x03", n=7)

#: Set by _set_flag: proof that code in a payload ran.
FLAG: list[str] = []


def _set_flag(*args: Any) -> None:
    FLAG.append("code from a payload ran")


class _SetsFlag:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_set_flag, ())


class _RunsCommand:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.path))}",))


class _Evals:
    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, ("__import__('tests.test_hostile').test_hostile._set_flag()",))


def _valid(serializer: str) -> bytes:
    """``RECORD`` as ``serializer`` stores it."""
    store = co.MemoryBackend()
    repo = co.Repository(Doc, backend=store, serializer=SERIALIZERS[serializer]())
    repo.save(RECORD)
    payload = store.get(repo.key_for(RECORD.id))
    assert payload is not None
    return payload


def _sign(body: bytes, key: bytes = SIGNING_KEY) -> bytes:
    """``body`` in the signed-pickle format, signed with ``key``."""
    mac = hmac.new(key, _SIGNED_HEADER + body, hashlib.sha256).digest()
    return _SIGNED_HEADER + mac + body


def _unkeyed_mac(body: bytes) -> bytes:
    """``body`` behind a plain SHA-256 where the HMAC belongs: a forgery without the key."""
    return _SIGNED_HEADER + hashlib.sha256(_SIGNED_HEADER + body).digest() + body


def _nested_pickle(depth: int) -> bytes:
    """A protocol-5 pickle of ``depth`` nested lists, written opcode by opcode."""
    return b"\x80\x05" + b"]" * depth + b"a" * (depth - 1) + b"."


def _int_literal_digits() -> int:
    limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    return limit + 1 if limit else 5000


PAYLOADS: dict[str, Callable[[str, Path], bytes]] = {
    "garbage": lambda s, tmp: b"\x00\xff\xfe\r\nnot a payload\x00",
    "empty": lambda s, tmp: b"",
    "truncated-by-1": lambda s, tmp: _valid(s)[:-1],
    "truncated-half": lambda s, tmp: _valid(s)[: len(_valid(s)) // 2],
    "trailing-bytes": lambda s, tmp: _valid(s) + b"x",
    "invalid-utf8": lambda s, tmp: _valid(s).replace(b"AAAA", b"\xff\xfe\xfd\xfc"),
    "other-json": lambda s, tmp: _valid("json"),
    "other-msgpack": lambda s, tmp: _valid("msgpack"),
    "other-pickle": lambda s, tmp: _valid("pickle"),
    "other-pickle-signed": lambda s, tmp: _valid("pickle-signed"),
    "signed-with-another-key": lambda s, tmp: _sign(_valid("pickle"), OTHER_KEY),
    "unkeyed-sha256-mac": lambda s, tmp: _unkeyed_mac(_valid("pickle")),
    "deep-json": lambda s, tmp: b"[" * 100_000 + b"]" * 100_000,
    "deep-json-in-record": lambda s, tmp: (
        b'{"id":"victim","text":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    ),
    "deep-msgpack": lambda s, tmp: b"\x91" * 100_000 + b"\xc0",
    "deep-pickle": lambda s, tmp: _nested_pickle(100_000),
    "json-huge-int-literal": lambda s, tmp: (
        b'{"id":"victim","n":' + b"9" * _int_literal_digits() + b"}"
    ),
    "json-list": lambda s, tmp: b"[]",
    "json-wrong-type": lambda s, tmp: b'{"id":"victim","n":"7"}',
    "evil-pickle-system-p0": lambda s, tmp: pickle.dumps(_RunsCommand(tmp / "pwned"), protocol=0),
    "evil-pickle-system-p2": lambda s, tmp: pickle.dumps(_RunsCommand(tmp / "pwned"), protocol=2),
    "evil-pickle-system-p5": lambda s, tmp: pickle.dumps(_RunsCommand(tmp / "pwned"), protocol=5),
    "evil-pickle-flag": lambda s, tmp: pickle.dumps(_SetsFlag(), protocol=5),
    "evil-pickle-eval": lambda s, tmp: pickle.dumps(_Evals(), protocol=4),
    "evil-pickle-in-record": lambda s, tmp: pickle.dumps(
        {"id": "victim", "text": _SetsFlag(), "data": b"", "n": 7}, protocol=5
    ),
    "evil-pickle-signed-with-the-key": lambda s, tmp: _sign(
        pickle.dumps(_RunsCommand(tmp / "pwned"), protocol=5)
    ),
    "evil-pickle-signed-flag": lambda s, tmp: _sign(pickle.dumps(_SetsFlag(), protocol=5)),
}

PAYLOAD_CASES = [
    pytest.param(serializer, case, id=f"{serializer}-{case}")
    for serializer in SERIALIZERS
    for case in PAYLOADS
    if case != f"other-{serializer}"
]


@pytest.fixture
def no_code_ran(tmp_path: Path) -> Iterator[Path]:
    """A directory for evil payloads' marker file; asserts after the test that no code ran."""
    FLAG.clear()
    yield tmp_path
    assert FLAG == [], "code in a payload ran"
    assert not (tmp_path / "pwned").exists(), "a payload ran a shell command"


@pytest.mark.parametrize(("serializer", "case"), PAYLOAD_CASES)
def test_hostile_payload_is_a_deserialization_error(
    backend: co.Backend, no_code_ran: Path, serializer: str, case: str
) -> None:
    """Bytes planted under our key raise DeserializationError naming the key; nothing runs."""
    repo = co.Repository(Doc, backend=backend, serializer=SERIALIZERS[serializer]())
    key = repo.key_for(RECORD.id)
    payload = PAYLOADS[case](serializer, no_code_ran)
    backend.set(key, payload)
    for read in (repo.get, repo.get_or_none, lambda pk: repo.get_many([pk])):
        with pytest.raises(co.DeserializationError) as info:
            read(RECORD.id)
        error = info.value
        assert type(error) is co.DeserializationError
        assert error.key == key
        assert repr(key) in str(error)
        assert error.serializer == repo.serializer.name
        assert error.model is Doc
        assert not isinstance(error.__cause__, RecursionError)
    assert FLAG == [], "code in the payload ran"
    assert not (no_code_ran / "pwned").exists(), "the payload ran a shell command"
    assert backend.get(key) == payload  # a failed read changes nothing


def test_evil_pickles_are_live(no_code_ran: Path) -> None:
    """Control: the planted pickles do run code under plain pickle.loads (so the test can fail)."""
    pickle.loads(pickle.dumps(_SetsFlag()))  # the point of the test
    assert FLAG == ["code from a payload ran"]
    pickle.loads(pickle.dumps(_RunsCommand(no_code_ran / "pwned"), protocol=0))
    assert (no_code_ran / "pwned").exists()
    (no_code_ran / "pwned").unlink()
    FLAG.clear()


def test_payload_cases_are_hostile_for_the_right_reason() -> None:
    """The fixtures are what they claim: valid payloads read back, truncation really cuts."""
    for name, factory in SERIALIZERS.items():
        serializer = factory()
        valid = _valid(name)
        assert serializer.loads(valid)["text"] == "AAAA"
        assert b"AAAA" in valid, name
    assert _valid("pickle-signed").startswith(_SIGNED_HEADER)
    assert _valid("pickle-signed")[len(_SIGNED_HEADER) + 32 :] == _valid("pickle")


# -- signed pickle ------------------------------------------------------------------------------


def test_signed_pickle_round_trips(backend: co.Backend) -> None:
    """A signed-pickle repository writes signed payloads and reads them back on every backend."""
    repo = co.Repository(Doc, backend=backend, serializer=SERIALIZERS["pickle-signed"]())
    assert repo.serializer.name == "pickle-signed"
    records = [RECORD, Doc(id="two", text="\r\n\x00", data=bytes(range(256)), n=-(2**70))]
    repo.create_many(records)
    for record in records:
        payload = backend.get(repo.key_for(record.id))
        assert payload is not None
        assert payload.startswith(_SIGNED_HEADER)
        assert repo.get(record.id) == record
    reader = co.Repository(Doc, backend=backend, serializer="pickle")
    with pytest.raises(co.DeserializationError, match="signing_key"):
        reader.get(RECORD.id)


def _flip(payload: bytes, index: int, bit: int = 0) -> bytes:
    return payload[:index] + bytes([payload[index] ^ (1 << bit)]) + payload[index + 1 :]


def test_signed_pickle_refuses_tampering(backend: co.Backend, no_code_ran: Path) -> None:
    """Wrong key, flipped bits, truncation, unsigned bytes and forged MACs all raise; none run."""
    repo = co.Repository(Doc, backend=backend, serializer=SERIALIZERS["pickle-signed"]())
    key = repo.key_for(RECORD.id)
    repo.save(RECORD)
    good = backend.get(key)
    assert good is not None
    header = len(_SIGNED_HEADER)
    evil = pickle.dumps(_SetsFlag(), protocol=5)
    tampered = {
        "wrong-key": _sign(_valid("pickle"), OTHER_KEY),
        "flip-header": _flip(good, 1),
        "flip-mac-first": _flip(good, header),
        "flip-mac-last": _flip(good, header + 31, 7),
        "flip-body": _flip(good, header + 40),
        "flip-last": _flip(good, len(good) - 1),
        "truncated-in-mac": good[: header + 10],
        "truncated-header": good[:3],
        "truncated-body": good[:-1],
        "mac-only": good[: header + 32],
        "unsigned": _valid("pickle"),
        "unsigned-evil": evil,
        "mac-of-another-record": good[: header + 32] + evil,
        "zero-mac": _SIGNED_HEADER + bytes(32) + evil,
        "mac-from-wrong-key-on-evil": _sign(evil, OTHER_KEY),
        "extended": good + pickle.dumps(_SetsFlag(), protocol=5),
    }
    for name, payload in tampered.items():
        backend.set(key, payload)
        with pytest.raises(co.DeserializationError) as info:
            repo.get(RECORD.id)
        assert info.value.key == key, name
        assert repr(key) in str(info.value), name
    backend.set(key, good)
    assert repo.get(RECORD.id) == RECORD
