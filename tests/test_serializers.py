"""Tests for serializers and the serializer registry."""

import copyreg
import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import hmac
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Any

import pytest

import cacheorm as co

PK = co.Field(primary_key=True)
SRC = Path(__file__).resolve().parent.parent / "src"


@dataclasses.dataclass
class Note:
    id: Annotated[int, PK]
    text: str = ""
    data: bytes = b""
    score: float = 0.0
    count: int = 0


@dataclasses.dataclass
class Ticket:
    id: Annotated[int | None, co.Field(primary_key=True, auto=True)] = None
    text: str = ""


class HeaderJSON:
    """A tiny custom serializer: JSON text behind a fixed header line."""

    name = "hjson"
    binary = False
    HEADER = b"HJSON/1\n"

    def dumps(self, data: Any, /) -> bytes:
        return self.HEADER + json.dumps(data, sort_keys=True).encode("utf-8")

    def loads(self, payload: bytes, /) -> Any:
        if not payload.startswith(self.HEADER):
            raise ValueError("missing HJSON header")
        return json.loads(payload[len(self.HEADER) :].decode("utf-8"))


class ExplodingDumps(HeaderJSON):
    """A serializer whose dumps always fails."""

    name = "boom"

    def dumps(self, data: Any, /) -> bytes:
        raise RuntimeError("cannot write this")


class ExplodingLoads(HeaderJSON):
    """A serializer whose loads always fails."""

    name = "bust"

    def loads(self, payload: bytes, /) -> Any:
        raise RuntimeError("cannot read this")


class CountingFactory:
    """A serializer factory that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> HeaderJSON:
        self.calls += 1
        return HeaderJSON()


# -- the registry -------------------------------------------------------------------


def test_default_registry_has_the_builtins() -> None:
    """cacheorm.registry holds json, msgpack and pickle."""
    assert isinstance(co.registry, co.SerializerRegistry)
    for name in ("json", "msgpack", "pickle"):
        assert name in co.registry
        assert name in co.registry.names()
    assert isinstance(co.registry.get("json"), co.JSONSerializer)
    assert isinstance(co.registry.get("msgpack"), co.MsgpackSerializer)
    assert isinstance(co.registry.get("pickle"), co.PickleSerializer)


def test_builtin_instances_are_cached() -> None:
    """Getting a built-in twice returns the same instance."""
    assert co.registry.get("json") is co.registry.get("json")


def test_new_registry_is_independent_of_the_default() -> None:
    """Registering in a new SerializerRegistry does not touch cacheorm.registry, and vice versa."""
    mine = co.SerializerRegistry()
    before = co.registry.names()
    mine.register("only-mine", HeaderJSON())
    assert "only-mine" in mine
    assert "only-mine" not in co.registry
    assert co.registry.names() == before
    co.registry.register("only-default", HeaderJSON())
    try:
        assert "only-default" not in mine
    finally:
        co.registry.unregister("only-default")
    assert co.registry.names() == before


def test_register_get_unregister_names_contains_len_iter() -> None:
    """A registry supports register, get, names (sorted), in, len, iter and unregister."""
    reg = co.SerializerRegistry()
    start = len(reg)
    first, second = HeaderJSON(), HeaderJSON()
    reg.register("zeta", first)
    reg.register("alpha", second)
    assert len(reg) == start + 2
    assert reg.get("zeta") is first
    assert reg.get("alpha") is second
    assert "zeta" in reg
    assert "alpha" in reg
    assert "beta" not in reg
    assert reg.names() == sorted(reg.names())
    assert {"alpha", "zeta"} <= set(reg.names())
    assert list(reg) == reg.names()
    reg.unregister("zeta")
    assert "zeta" not in reg
    assert "zeta" not in reg.names()
    assert len(reg) == start + 1
    with pytest.raises(co.SerializerNotFound):
        reg.get("zeta")


def test_initial_entries_are_registered() -> None:
    """SerializerRegistry({...}) registers its initial entries (instances and factories)."""
    instance = HeaderJSON()
    reg = co.SerializerRegistry({"h": instance, "j": co.JSONSerializer})
    assert reg.names() == ["h", "j"]
    assert reg.get("h") is instance
    assert isinstance(reg.get("j"), co.JSONSerializer)


def test_duplicate_name_is_a_configuration_error_and_keeps_the_first() -> None:
    """Registering a taken name raises ConfigurationError and leaves the first entry in place."""
    reg = co.SerializerRegistry()
    first = HeaderJSON()
    reg.register("h", first)
    with pytest.raises(co.ConfigurationError, match="already registered as 'h'"):
        reg.register("h", HeaderJSON())
    assert reg.get("h") is first


def test_builtin_name_cannot_be_registered_again_in_default_registry() -> None:
    """cacheorm.registry refuses a second "json"."""
    with pytest.raises(co.ConfigurationError, match="already registered"):
        co.registry.register("json", HeaderJSON())
    assert isinstance(co.registry.get("json"), co.JSONSerializer)


@pytest.mark.parametrize("name", ["", None, 3], ids=["empty", "none", "int"])
def test_name_must_be_non_empty_str(name: Any) -> None:
    """A serializer name that is empty or not a str raises ConfigurationError."""
    reg = co.SerializerRegistry()
    with pytest.raises(co.ConfigurationError, match="non-empty str"):
        reg.register(name, HeaderJSON())
    assert len(reg) == 0


@pytest.mark.parametrize("thing", [object(), 42, "json", b"json"], ids=repr)
def test_non_serializer_object_is_refused(thing: Any) -> None:
    """Registering an object that is no serializer and no factory raises ConfigurationError."""
    reg = co.SerializerRegistry()
    with pytest.raises(co.ConfigurationError, match="is not a serializer"):
        reg.register("x", thing)
    assert "x" not in reg


def test_unknown_name_lists_known_names() -> None:
    """get() of an unknown name raises SerializerNotFound (a LookupError) naming the known ones."""
    reg = co.SerializerRegistry({"alpha": HeaderJSON(), "beta": HeaderJSON()})
    with pytest.raises(co.SerializerNotFound) as info:
        reg.get("gamma")
    message = str(info.value)
    assert "'gamma'" in message
    assert "alpha" in message
    assert "beta" in message
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, co.ConfigurationError)


def test_unknown_name_in_default_registry_lists_builtins() -> None:
    """The default registry's not-found message names json, msgpack and pickle."""
    with pytest.raises(co.SerializerNotFound, match=r"known: .*json.*msgpack.*pickle"):
        co.registry.get("yaml")


def test_unregister_unknown_name_raises_not_found() -> None:
    """unregister() of an unknown name raises SerializerNotFound."""
    reg = co.SerializerRegistry()
    with pytest.raises(co.SerializerNotFound, match="'nope'"):
        reg.unregister("nope")


def test_protobuf_lookup_hints_at_protobuf_serializer() -> None:
    """get("protobuf") explains that ProtobufSerializer(MyMessage) must be passed or registered."""
    with pytest.raises(co.SerializerNotFound, match="ProtobufSerializer"):
        co.registry.get("protobuf")
    with pytest.raises(co.SerializerNotFound, match="ProtobufSerializer"):
        co.Repository(Note, serializer="protobuf")


def test_factory_is_called_once_lazily_and_cached() -> None:
    """A registered factory is not called on register, then called once and its result cached."""
    reg = co.SerializerRegistry()
    factory = CountingFactory()
    reg.register("lazy", factory)
    assert factory.calls == 0
    first = reg.get("lazy")
    second = reg.get("lazy")
    assert first is second
    assert isinstance(first, HeaderJSON)
    assert factory.calls == 1
    co.Repository(Note, serializer="lazy", registry=reg)
    assert factory.calls == 1


def test_factory_returning_non_serializer_is_a_configuration_error() -> None:
    """A factory whose result is no serializer makes get() raise ConfigurationError."""
    reg = co.SerializerRegistry()
    reg.register("bad", lambda: 42)
    with pytest.raises(co.ConfigurationError, match="factory registered as 'bad' returned 42"):
        reg.get("bad")


# -- custom serializers in a repository --------------------------------------------------


def test_custom_serializer_satisfies_protocol() -> None:
    """An object with name, binary, dumps and loads is a cacheorm.Serializer."""
    assert isinstance(HeaderJSON(), co.Serializer)
    assert not isinstance(object(), co.Serializer)


def test_custom_serializer_by_name_round_trips() -> None:
    """A custom serializer registered in a private registry stores and reads records by name."""
    reg = co.SerializerRegistry()
    reg.register("hjson", HeaderJSON)
    backend = co.MemoryBackend()
    repo = co.Repository(Note, backend=backend, serializer="hjson", registry=reg)
    assert repo.serializer.name == "hjson"
    record = Note(id=1, text="héllo", data=b"\x00\x01\xff", score=1.5, count=3)
    repo.create(record)
    payload = backend.get("note:1")
    assert payload is not None
    assert payload.startswith(HeaderJSON.HEADER)
    assert b"\x00\x01\xff" not in payload  # binary=False: bytes travel as text
    assert repo.get(1) == record


def test_custom_serializer_name_is_unknown_to_default_registry() -> None:
    """A name registered only in a private registry is not found without registry=."""
    reg = co.SerializerRegistry()
    reg.register("hjson-private", HeaderJSON())
    with pytest.raises(co.SerializerNotFound, match="hjson-private"):
        co.Repository(Note, serializer="hjson-private")


def test_custom_serializer_instance_passed_directly() -> None:
    """A serializer instance passed as serializer= is used as is."""
    serializer = HeaderJSON()
    backend = co.MemoryBackend()
    repo = co.Repository(Note, backend=backend, serializer=serializer)
    assert repo.serializer is serializer
    record = Note(id=2, text="x", data=b"\xfe")
    repo.save(record)
    payload = backend.get("note:2")
    assert payload is not None
    assert payload.startswith(HeaderJSON.HEADER)
    assert repo.get(2) == record


def test_serializer_class_is_not_accepted_as_instance() -> None:
    """Passing a serializer class instead of an instance raises ConfigurationError."""
    with pytest.raises(co.ConfigurationError, match="serializer must be"):
        co.Repository(Note, serializer=HeaderJSON)  # type: ignore[arg-type]


def test_serializer_is_resolved_at_construction() -> None:
    """Unregistering a name after a Repository was built does not break that repository."""
    reg = co.SerializerRegistry()
    serializer = HeaderJSON()
    reg.register("hjson", serializer)
    repo = co.Repository(Note, serializer="hjson", registry=reg)
    reg.unregister("hjson")
    assert repo.serializer is serializer
    record = Note(id=3, text="still works")
    repo.create(record)
    assert repo.get(3) == record
    with pytest.raises(co.SerializerNotFound):
        co.Repository(Note, serializer="hjson", registry=reg)


@pytest.mark.parametrize("method", ["create", "save"])
def test_dumps_failure_is_serialization_error_and_writes_nothing(method: str) -> None:
    """A failing dumps raises SerializationError naming key and serializer; nothing is written."""
    backend = co.MemoryBackend()
    repo = co.Repository(Note, backend=backend, serializer=ExplodingDumps())
    with pytest.raises(co.SerializationError) as info:
        getattr(repo, method)(Note(id=7, text="x"))
    error = info.value
    assert error.key == "note:7"
    assert error.serializer == "boom"
    assert error.model is Note
    assert "'note:7'" in str(error)
    assert "'boom'" in str(error)
    assert "cannot write this" in str(error)
    assert isinstance(error.__cause__, RuntimeError)
    assert len(backend) == 0


def test_dumps_failure_in_batch_writes_nothing() -> None:
    """A failing dumps in save_many raises SerializationError before any record is written."""
    backend = co.MemoryBackend()
    repo = co.Repository(Note, backend=backend, serializer=ExplodingDumps())
    with pytest.raises(co.SerializationError):
        repo.save_many([Note(id=1), Note(id=2)])
    assert len(backend) == 0


def test_dumps_failure_on_auto_id_create_writes_no_record() -> None:
    """A failing dumps on an auto-id create raises SerializationError and stores no record."""
    backend = co.MemoryBackend()
    repo = co.Repository(Ticket, backend=backend, serializer=ExplodingDumps())
    with pytest.raises(co.SerializationError, match="'boom'"):
        repo.create(Ticket(text="x"))
    assert backend.get("ticket:1") is None


def test_loads_failure_is_deserialization_error() -> None:
    """A failing loads raises DeserializationError naming the key and the serializer."""
    backend = co.MemoryBackend()
    repo = co.Repository(Note, backend=backend, serializer=ExplodingLoads())
    repo.create(Note(id=4, text="x"))
    with pytest.raises(co.DeserializationError) as info:
        repo.get(4)
    error = info.value
    assert error.key == "note:4"
    assert error.serializer == "bust"
    assert "'note:4'" in str(error)
    assert "bust" in str(error)
    assert "cannot read this" in str(error)


def test_foreign_payload_is_deserialization_error() -> None:
    """Bytes the serializer cannot read (missing header) raise DeserializationError on get."""
    backend = co.MemoryBackend()
    backend.set("note:5", b'{"id": 5}')
    repo = co.Repository(Note, backend=backend, serializer=HeaderJSON())
    with pytest.raises(co.DeserializationError, match="missing HJSON header"):
        repo.get(5)


# -- json ---------------------------------------------------------------------------


def test_json_is_compact() -> None:
    """The JSON serializer writes no spaces after ',' or ':'."""
    serializer = co.JSONSerializer()
    assert serializer.dumps({"a": [1, 2], "b": {"c": "d e"}}) == b'{"a":[1,2],"b":{"c":"d e"}}'
    backend = co.MemoryBackend()
    co.Repository(Note, backend=backend).save(Note(id=1, text="t", count=2))
    payload = backend.get("note:1")
    assert payload is not None
    assert b", " not in payload
    assert b": " not in payload
    assert json.loads(payload)["count"] == 2


def test_json_keeps_non_ascii_literal_utf8() -> None:
    """Non-ASCII text is written as literal UTF-8, not \\u escapes."""
    text = "héllo wörld 😀"
    assert co.JSONSerializer().dumps({"t": text}) == ('{"t":"' + text + '"}').encode("utf-8")
    backend = co.MemoryBackend()
    repo = co.Repository(Note, backend=backend)
    repo.save(Note(id=1, text=text))
    payload = backend.get("note:1")
    assert payload is not None
    assert text.encode("utf-8") in payload
    assert b"\\u" not in payload
    assert repo.get(1).text == text


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_json_round_trips_nan_and_infinity(value: float) -> None:
    """NaN and the infinities survive a JSON save/get."""
    repo = co.Repository(Note)
    repo.save(Note(id=1, score=value))
    score = repo.get(1).score
    if math.isnan(value):
        assert math.isnan(score)
    else:
        assert score == value


def test_json_is_text_and_bytes_travel_as_text() -> None:
    """JSON is not binary: a bytes field does not appear raw in the payload, yet round-trips."""
    assert co.JSONSerializer().binary is False
    backend = co.MemoryBackend()
    repo = co.Repository(Note, backend=backend)
    record = Note(id=1, data=b"\x00\xffraw")
    repo.save(record)
    payload = backend.get("note:1")
    assert payload is not None
    assert b"\x00\xffraw" not in payload
    payload.decode("utf-8")
    assert repo.get(1) == record


# -- msgpack ------------------------------------------------------------------------


def test_msgpack_carries_bytes_natively() -> None:
    """With msgpack, bytes are stored raw in the payload and round-trip."""
    pytest.importorskip("msgpack")
    backend = co.MemoryBackend()
    repo = co.Repository(Note, backend=backend, serializer="msgpack")
    assert repo.serializer.binary is True
    record = Note(id=1, text="é", data=b"\x00\xffraw", score=math.inf, count=-5)
    repo.save(record)
    payload = backend.get("note:1")
    assert payload is not None
    assert b"\x00\xffraw" in payload
    assert repo.get(1) == record


@pytest.mark.parametrize("count", [2**64, 2**100, -(2**63) - 1], ids=["2**64", "2**100", "below"])
def test_msgpack_int_out_of_range_is_serialization_error(count: int) -> None:
    """An int msgpack cannot carry raises SerializationError, not OverflowError; nothing written."""
    pytest.importorskip("msgpack")
    backend = co.MemoryBackend()
    repo = co.Repository(Note, backend=backend, serializer="msgpack")
    with pytest.raises(co.SerializationError) as info:
        repo.save(Note(id=1, count=count))
    assert not isinstance(info.value, OverflowError)
    assert info.value.key == "note:1"
    assert info.value.serializer == "msgpack"
    assert len(backend) == 0


@pytest.mark.parametrize("count", [2**64 - 1, -(2**63)], ids=["max", "min"])
def test_msgpack_int_at_range_edge_round_trips(count: int) -> None:
    """The extreme ints msgpack can carry round-trip."""
    pytest.importorskip("msgpack")
    repo = co.Repository(Note, serializer="msgpack")
    repo.save(Note(id=1, count=count))
    assert repo.get(1).count == count


# -- pickle -------------------------------------------------------------------------


def test_pickle_is_never_the_default() -> None:
    """A Repository without serializer= uses json, not pickle."""
    repo = co.Repository(Note)
    assert repo.serializer.name == "json"
    assert isinstance(repo.serializer, co.JSONSerializer)
    assert not isinstance(repo.serializer, co.PickleSerializer)


def test_pickle_round_trips_when_asked_for() -> None:
    """serializer="pickle" stores binary payloads and reads them back."""
    backend = co.MemoryBackend()
    repo = co.Repository(Note, backend=backend, serializer="pickle")
    assert repo.serializer.binary is True
    record = Note(id=1, text="t", data=b"\x00", score=math.inf, count=2**80)
    repo.save(record)
    payload = backend.get("note:1")
    assert payload is not None
    assert payload[:1] == b"\x80"  # pickle protocol marker
    assert repo.get(1) == record


# -- hostile data: json ----------------------------------------------------------------------


@dataclasses.dataclass
class Blob:
    id: Annotated[int, PK]
    value: Any = None


def _int_str_limit() -> int:
    """Python's int/str digit limit; 0 where there is none (older 3.10, or switched off)."""
    get_limit = getattr(sys, "get_int_max_str_digits", None)
    return int(get_limit()) if get_limit is not None else 0


def _nested_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


STRICT = co.JSONSerializer(allow_nan=False)


def test_json_serializer_options_and_repr() -> None:
    """allow_nan is keyword-only, defaults to True, must be a bool and shows in repr."""
    assert co.JSONSerializer().allow_nan is True
    assert repr(co.JSONSerializer()) == "JSONSerializer()"
    assert STRICT.allow_nan is False
    assert repr(STRICT) == "JSONSerializer(allow_nan=False)"
    assert STRICT.name == "json"
    with pytest.raises(co.ConfigurationError, match="allow_nan must be a bool"):
        co.JSONSerializer(allow_nan=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        co.JSONSerializer(False)  # type: ignore[misc]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_strict_json_refuses_nan_and_infinity_on_write(value: float) -> None:
    """allow_nan=False: NaN/Infinity raise SerializationError naming the key; nothing written."""
    backend = co.MemoryBackend()
    repo = co.Repository(Note, backend=backend, serializer=STRICT)
    with pytest.raises(co.SerializationError) as info:
        repo.save(Note(id=1, score=value))
    assert info.value.key == "note:1"
    assert "'note:1'" in str(info.value)
    assert "allow_nan=False" in str(info.value)
    assert len(backend) == 0


@pytest.mark.parametrize(
    "literal",
    [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"1" + b"0" * 400 + b".5"],
    ids=["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "400-digit-float"],
)
def test_strict_json_refuses_nan_tokens_and_overflowing_floats_on_read(literal: bytes) -> None:
    """allow_nan=False: NaN/Infinity tokens and floats beyond range raise DeserializationError."""
    backend = co.MemoryBackend()
    backend.set("note:1", b'{"id":1,"score":' + literal + b"}")
    repo = co.Repository(Note, backend=backend, serializer=STRICT)
    with pytest.raises(co.DeserializationError) as info:
        repo.get(1)
    assert info.value.key == "note:1"
    assert "'note:1'" in str(info.value)
    with pytest.raises(ValueError, match=r"strict JSON|beyond the float range"):
        STRICT.loads(literal)


@pytest.mark.parametrize("value", [1e308, -1e308, 5e-324, -0.0, 0.1, 2.0**53 + 1])
def test_strict_json_round_trips_finite_floats_exactly(value: float) -> None:
    """allow_nan=False still reads back every finite float bit for bit (sign of zero included)."""
    repo = co.Repository(Note, serializer=STRICT)
    repo.save(Note(id=1, score=value))
    score = repo.get(1).score
    assert score == value
    assert math.copysign(1.0, score) == math.copysign(1.0, value)


def test_default_json_reads_python_nan_tokens() -> None:
    """The default JSON reads the NaN / Infinity tokens it writes."""
    serializer = co.JSONSerializer()
    assert serializer.dumps([math.inf, -math.inf]) == b"[Infinity,-Infinity]"
    assert math.isnan(serializer.loads(b"NaN"))
    assert serializer.loads(b"[Infinity,-Infinity]") == [math.inf, -math.inf]


@pytest.mark.parametrize("serializer", ["json", "pickle"])
@pytest.mark.parametrize(
    "count",
    [2**53 + 1, 2**63, 2**64, -(2**63) - 1, 2**200, -(2**1000)],
    ids=["2**53+1", "2**63", "2**64", "-2**63-1", "2**200", "-2**1000"],
)
def test_big_ints_round_trip_exactly(serializer: str, count: int) -> None:
    """json and pickle carry ints beyond 64 bits exactly, never rounded through a float."""
    repo = co.Repository(Note, serializer=serializer)
    repo.save(Note(id=1, count=count))
    stored = repo.get(1).count
    assert type(stored) is int
    assert stored == count


def test_json_int_at_the_digit_limit_round_trips_and_beyond_it_is_refused() -> None:
    """An int of as many digits as Python converts round-trips; one more is a SerializationError."""
    limit = _int_str_limit()
    backend = co.MemoryBackend()
    repo = co.Repository(Note, backend=backend)
    widest = -(10 ** (limit or 5000) - 1)
    repo.save(Note(id=1, count=widest))
    assert repo.get(1).count == widest
    too_wide = 10 ** (limit or 5000)
    if not limit:  # no limit in this interpreter: any int round-trips
        repo.save(Note(id=2, count=too_wide))
        assert repo.get(2).count == too_wide
        return
    with pytest.raises(co.SerializationError) as info:
        repo.save(Note(id=2, count=too_wide))
    assert info.value.key == "note:2"
    assert "set_int_max_str_digits" in str(info.value)
    assert backend.get("note:2") is None


def test_json_integer_literal_beyond_the_digit_limit_is_a_deserialization_error() -> None:
    """A planted JSON integer literal longer than Python converts raises, naming the key."""
    limit = _int_str_limit()
    backend = co.MemoryBackend()
    digits = b"7" * ((limit or 5000) + 1)
    backend.set("note:1", b'{"id":1,"count":' + digits + b"}")
    repo = co.Repository(Note, backend=backend)
    if not limit:
        assert repo.get(1).count == int(digits)
        return
    with pytest.raises(co.DeserializationError) as info:
        repo.get(1)
    assert info.value.key == "note:1"
    assert "'note:1'" in str(info.value)


def test_json_too_deep_is_a_value_error_not_recursion_error() -> None:
    """Nesting beyond the recursion limit raises ValueError both ways, never RecursionError."""
    serializer = co.JSONSerializer()
    with pytest.raises(ValueError, match="nested too deeply") as read:
        serializer.loads(b"[" * 100_000 + b"]" * 100_000)
    assert not isinstance(read.value, RecursionError)
    with pytest.raises(ValueError, match="nested too deeply") as write:
        serializer.dumps(_nested_list(100_000))
    assert not isinstance(write.value, RecursionError)


@pytest.mark.parametrize("serializer", ["json", "msgpack", "pickle"])
def test_too_deep_any_value_is_a_validation_error(serializer: str) -> None:
    """A value nested too deeply for an Any field raises ValidationError; nothing written."""
    pytest.importorskip("msgpack")
    backend = co.MemoryBackend()
    repo = co.Repository(Blob, backend=backend, serializer=serializer)
    with pytest.raises(co.ValidationError, match="nested deeper than 100") as info:
        repo.save(Blob(id=1, value=_nested_list(100_000)))
    assert info.value.key == "blob:1"
    assert not isinstance(info.value.__cause__, RecursionError)
    assert len(backend) == 0


def test_json_value_error_other_than_nan_is_reraised_in_strict_mode() -> None:
    """Strict JSON passes other ValueErrors (an int too long to print) through unchanged."""
    limit = _int_str_limit()
    if not limit:
        assert STRICT.dumps(10**5000)
        return
    with pytest.raises(ValueError, match="set_int_max_str_digits"):
        STRICT.dumps(10**limit)


# -- hostile data: msgpack ---------------------------------------------------------------


def test_msgpack_errors_are_described() -> None:
    """msgpack's message-less errors (out-of-range int, too deep, reserved byte) get messages."""
    pytest.importorskip("msgpack")
    serializer = co.MsgpackSerializer()
    assert repr(serializer) == "MsgpackSerializer()"
    with pytest.raises(ValueError, match=r"-2\*\*63 to 2\*\*64 - 1"):
        serializer.dumps({"n": 2**64})
    with pytest.raises(ValueError, match="nested deeper than msgpack allows"):
        serializer.loads(b"\x91" * 100_000 + b"\xc0")
    with pytest.raises(ValueError, match="reserved type byte"):
        serializer.loads(b"\xc1")
    with pytest.raises(ValueError, match="incomplete input"):
        serializer.loads(b"\x81\xa1a")  # truncated map


def test_msgpack_int_out_of_range_message_names_the_range() -> None:
    """Through a repository, an int beyond 64 bits says which range msgpack carries."""
    pytest.importorskip("msgpack")
    repo = co.Repository(Note, serializer="msgpack")
    with pytest.raises(co.SerializationError, match=r"'note:1'.*-2\*\*63 to 2\*\*64 - 1"):
        repo.save(Note(id=1, count=-(2**63) - 1))


# -- hostile data: pickle ------------------------------------------------------------------

KEY = b"0123456789abcdef0123456789abcdef"
SIGNED = co.PickleSerializer(signing_key=KEY)
PRIMITIVES: dict[str, Any] = {
    "none": None,
    "bools": [True, False],
    "ints": [0, -1, 2**64, -(2**200)],
    "floats": [0.5, math.inf, -0.0],
    "text": "héllo \x00 😀",
    "bytes": b"\x00\xff",
    "nested": {"a": [{"b": [1, "2"]}], "": {}},
}


@pytest.mark.parametrize("signing_key", ["text key of enough length", bytearray(32), 12345, b""])
def test_signing_key_must_be_bytes(signing_key: Any) -> None:
    """A signing_key that is not bytes, or empty, raises ConfigurationError."""
    with pytest.raises(co.ConfigurationError, match="signing_key must be"):
        co.PickleSerializer(signing_key=signing_key)


def test_signing_key_must_be_at_least_16_bytes() -> None:
    """15 bytes are refused, 16 accepted; the key is keyword-only."""
    with pytest.raises(co.ConfigurationError, match="at least 16 bytes long, not 15"):
        co.PickleSerializer(signing_key=b"k" * 15)
    assert co.PickleSerializer(signing_key=b"k" * 16).signed
    with pytest.raises(TypeError):
        co.PickleSerializer(KEY)  # type: ignore[misc]


def test_pickle_serializer_names_and_repr_never_show_the_key() -> None:
    """Unsigned is "pickle", signed is "pickle-signed"; neither repr shows the key."""
    plain = co.PickleSerializer()
    assert (plain.name, plain.signed, repr(plain)) == ("pickle", False, "PickleSerializer()")
    assert (SIGNED.name, SIGNED.signed) == ("pickle-signed", True)
    assert repr(SIGNED) == "PickleSerializer(signing_key=...)"
    assert KEY.decode() not in repr(SIGNED)
    assert isinstance(SIGNED, co.Serializer)
    assert co.PickleSerializer.name == "pickle"


def test_default_registry_pickle_is_unsigned_and_opt_in() -> None:
    """ "pickle" in the default registry is the unsigned, restricted serializer; json is default."""
    plain = co.registry.get("pickle")
    assert isinstance(plain, co.PickleSerializer)
    assert not plain.signed
    assert co.Repository(Note).serializer.name == "json"


def test_signed_pickle_by_name_in_a_registry() -> None:
    """registry.register("pickle-signed", PickleSerializer(signing_key=...)) works by name."""
    reg = co.SerializerRegistry()
    reg.register("pickle-signed", co.PickleSerializer(signing_key=KEY))
    backend = co.MemoryBackend()
    repo = co.Repository(Note, backend=backend, serializer="pickle-signed", registry=reg)
    record = Note(id=1, text="t", data=b"\x00", score=-0.0, count=2**70)
    repo.save(record)
    payload = backend.get("note:1")
    assert payload is not None
    assert payload[:1] == b"\x00"
    assert repo.get(1) == record


@pytest.mark.parametrize("serializer", [co.PickleSerializer(), SIGNED], ids=["plain", "signed"])
def test_pickle_round_trips_every_primitive(serializer: co.PickleSerializer) -> None:
    """Every primitive a codec produces (and tuples) pickles and reads back; sets, frozensets
    and bytearrays, which no codec produces and the reader refuses, are refused on write."""
    data = {**PRIMITIVES, "tuple": (1, 2), "text": "\u038f\u0391\u0396 \x8f"}
    assert serializer.loads(serializer.dumps(data)) == data
    for value in ({1, 2}, frozenset({3}), bytearray(b"ab")):
        with pytest.raises(ValueError, match=r"set|bytearray"):
            serializer.dumps({**PRIMITIVES, "value": [value]})
        plain = pickle.dumps({"value": value}, protocol=5)
        with pytest.raises(pickle.UnpicklingError, match=r"set|bytearray"):
            co.PickleSerializer().loads(plain)


class Shade(enum.IntEnum):
    DARK = 1


class Label(str):
    pass


@pytest.mark.parametrize(
    "value",
    [dt.datetime(2024, 1, 1), decimal.Decimal("1.5"), Shade.DARK, Label("x"), object(), 1j],
    ids=["datetime", "Decimal", "IntEnum", "str-subclass", "object", "complex"],
)
@pytest.mark.parametrize("signed", [False, True], ids=["plain", "signed"])
def test_pickle_refuses_to_write_non_primitives(value: Any, signed: bool) -> None:
    """A value needing a class reference is refused naming its type: by the pickler, and
    (in an Any field) by the codec first, as a ValidationError; nothing is written."""
    backend = co.MemoryBackend()
    serializer = SIGNED if signed else co.PickleSerializer()
    with pytest.raises(pickle.PicklingError, match=type(value).__qualname__):
        serializer.dumps({"value": value})
    repo = co.Repository(Blob, backend=backend, serializer=serializer)
    with pytest.raises(co.ValidationError) as info:
        repo.save(Blob(id=1, value=value))
    assert info.value.key == "blob:1"
    assert type(value).__qualname__ in str(info.value)
    assert len(backend) == 0


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_reads_primitive_pickles_of_any_protocol(protocol: int) -> None:
    """Payloads written by plain pickle.dumps (earlier cacheorm versions) still read back."""
    data = {k: v for k, v in PRIMITIVES.items() if protocol >= 3 or k != "bytes"}
    assert co.PickleSerializer().loads(pickle.dumps(data, protocol=protocol)) == data


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize(
    "value",
    [dt.datetime(2024, 1, 1), decimal.Decimal("1.5"), Shade.DARK, {"id": 1, "v": Label("x")}],
    ids=["datetime", "Decimal", "IntEnum", "nested-str-subclass"],
)
def test_pickle_refuses_globals_on_read(value: Any, protocol: int) -> None:
    """A pickle holding any class reference is refused before the class is looked up."""
    payload = pickle.dumps(value, protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match=r"refers to .*nothing was run"):
        co.PickleSerializer().loads(payload)


def _record_call(*args: Any) -> None:
    CALLS.append(args)


CALLS: list[Any] = []


def test_pickle_refuses_copyreg_extension_codes() -> None:
    """EXT opcodes are refused: pickle serves a cached extension without calling find_class."""
    CALLS.clear()
    copyreg.add_extension(__name__, "_record_call", 0x7FFFFFF0)
    try:
        payload = b"\x80\x02\x84\xf0\xff\xff\x7f)R."  # EXT4 code; empty tuple; REDUCE
        pickle.loads(payload)  # control: plain pickle calls the function
        assert CALLS == [()]
        with pytest.raises(pickle.UnpicklingError, match="extension opcode EXT4"):
            co.PickleSerializer().loads(payload)
        assert co.PickleSerializer().loads(pickle.dumps(PRIMITIVES)) == PRIMITIVES
    finally:
        copyreg.remove_extension(__name__, "_record_call", 0x7FFFFFF0)
    assert CALLS == [()]


@pytest.mark.parametrize(
    "payload", [b"Pid\n.", b"\x80\x05\x8c\x02idQ."], ids=["PERSID", "BINPERSID"]
)
def test_pickle_refuses_persistent_ids(payload: bytes) -> None:
    """Persistent-id opcodes are refused."""
    with pytest.raises(pickle.UnpicklingError):
        co.PickleSerializer().loads(payload)


def test_pickle_refuses_trailing_bytes() -> None:
    """Bytes after the pickle's STOP are refused, not ignored."""
    payload = co.PickleSerializer().dumps({"a": 1})
    with pytest.raises(pickle.UnpicklingError, match="2 bytes follow the end"):
        co.PickleSerializer().loads(payload + b"xx")


def test_signed_and_unsigned_pickles_do_not_mix() -> None:
    """Unsigned reads of a signed payload and signed reads of an unsigned one both raise."""
    data = {"a": [1, b"2"]}
    with pytest.raises(ValueError, match=r"signed pickle; read it with .*signing_key"):
        co.PickleSerializer().loads(SIGNED.dumps(data))
    with pytest.raises(ValueError, match="not a signed pickle"):
        SIGNED.loads(co.PickleSerializer().dumps(data))
    other = co.PickleSerializer(signing_key=b"x" * 32)
    with pytest.raises(ValueError, match="signature does not match"):
        other.loads(SIGNED.dumps(data))
    assert SIGNED.loads(SIGNED.dumps(data)) == data


def test_signed_pickle_layout_is_header_mac_pickle() -> None:
    """A signed payload is the header, HMAC-SHA256(key, header + pickle), then the pickle."""
    body = co.PickleSerializer().dumps(PRIMITIVES)
    payload = SIGNED.dumps(PRIMITIVES)
    header = payload[:6]
    assert header == b"\x00COPS1"
    assert payload[6:38] == hmac.new(KEY, header + body, hashlib.sha256).digest()
    assert payload[38:] == body


def test_every_bit_flip_of_a_signed_pickle_is_refused() -> None:
    """Flipping any single bit of a signed payload makes it unreadable."""
    payload = SIGNED.dumps({"id": 1, "text": "abc", "data": b"\x00"})
    for index in range(len(payload)):
        for bit in range(8):
            forged = bytearray(payload)
            forged[index] ^= 1 << bit
            with pytest.raises((ValueError, pickle.UnpicklingError)):
                SIGNED.loads(bytes(forged))


def test_every_truncation_of_a_signed_pickle_is_refused() -> None:
    """Every prefix of a signed payload (and the empty payload) is refused."""
    payload = SIGNED.dumps({"id": 1, "text": "abc"})
    for end in range(len(payload)):
        with pytest.raises(ValueError, match=r"signed pickle|signature does not match"):
            SIGNED.loads(payload[:end])


def test_registry_repr_lists_names() -> None:
    """A registry's repr lists its names, sorted."""
    assert repr(co.SerializerRegistry({"b": HeaderJSON(), "a": HeaderJSON()})) == (
        "SerializerRegistry(['a', 'b'])"
    )


def test_msgpack_serializer_without_msgpack_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MsgpackSerializer() raises MissingDependency naming the extra when msgpack is missing."""
    monkeypatch.setitem(sys.modules, "msgpack", None)
    with pytest.raises(co.MissingDependency, match=r"cacheorm\[msgpack\]"):
        co.MsgpackSerializer()


# -- optional extras ----------------------------------------------------------------

NO_EXTRAS_SCRIPT = textwrap.dedent(
    """
    import sys

    BLOCKED = ("msgpack", "redis", "pymemcache", "google.protobuf")
    for name in BLOCKED:
        sys.modules[name] = None  # any import of it now raises ImportError

    import dataclasses
    from typing import Annotated

    import cacheorm

    print("IMPORTED", cacheorm.__version__)
    for name in BLOCKED:
        assert sys.modules[name] is None, name

    @dataclasses.dataclass
    class M:
        id: Annotated[int, cacheorm.Field(primary_key=True)]

    try:
        cacheorm.Repository(M, serializer="msgpack")
    except cacheorm.MissingDependency as exc:
        assert isinstance(exc, ImportError)
        print("MSGPACK", exc)
    else:
        print("MSGPACK did not raise")

    try:
        cacheorm.ProtobufSerializer(object)
    except cacheorm.MissingDependency as exc:
        print("PROTOBUF", exc)
    else:
        print("PROTOBUF did not raise")

    repo = cacheorm.Repository(M)
    repo.save(M(id=1))
    print("JSON", repo.get(1))
    """
)


def test_import_works_without_optional_extras() -> None:
    """With msgpack, redis, pymemcache and protobuf blocked, cacheorm imports and names extras."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", NO_EXTRAS_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"IMPORTED {co.__version__}"
    assert lines[1].startswith("MSGPACK ")
    assert "cacheorm[msgpack]" in lines[1]
    assert lines[2].startswith("PROTOBUF ")
    assert "cacheorm[protobuf]" in lines[2]
    assert lines[3] == "JSON M(id=1)"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x80\x05" + b"(" * 1001, "deeper than 1000"),
        (b"\x80\x05" + b"]" * 2001, "deeper than 1000"),
        (b"]e.", "closes a MARK it never opened"),
        (b"l.", "closes a MARK it never opened"),
        (b"N(Ne.", "not a container"),
        (b"NNa.", "not a container"),
        (b"}NNs.", "map key in the pickle is not a str"),
        (b"}(NNu.", "map key in the pickle is not a str"),
        (b"(NNd.", "map key in the pickle is not a str"),
        (b"h\x05.", "never filled"),
        (b"g7\n.", "never filled"),
        (b"]\x94h\x00a.", "from two places"),
        (b"]r\x05\x00\x00\x00.", "out of order"),
        (b"Np9\n.", "out of order"),
        (b"\x86.", "too short for a tuple"),
        (b"I12", "ends inside a text argument"),
        (b"NN.", "exactly one value"),
        (b"N", "without a STOP"),
        (b"\xff.", "holds the opcode"),
        (b"cos\nsystem\n.", "refers to os.system"),
        (b"\x8f.", "holds a set"),
    ],
)
def test_pickle_scan_refusals(payload: bytes, message: str) -> None:
    """Each shape the pre-scan refuses is refused, with a message saying which."""
    with pytest.raises(pickle.UnpicklingError, match=message):
        co.PickleSerializer().loads(payload)


@pytest.mark.parametrize(
    ("payload", "value"),
    [
        (b"]\x94Nq\x00a.", [None]),  # a memo slot reused for a leaf
        (b"]\x8c\x01a\x94aj\x00\x00\x00\x00a.", ["a", "a"]),  # LONG_BINGET of a str
        (b"(lp0\nVa\np1\nag1\na.", ["a", "a"]),  # protocol 0: PUT / GET lines
    ],
)
def test_pickle_scan_accepts_shared_text(payload: bytes, value: Any) -> None:
    """Memo references to text and numbers (what pickle.dumps writes for a repeated str)."""
    assert co.PickleSerializer().loads(payload) == value


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_reads_repeated_strings_written_by_plain_pickle(protocol: int) -> None:
    """pickle.dumps refers back to a str it has written; such payloads still read."""
    word = "repeated"
    data = {"a": [word, word, {"k": word}], "b": word}
    assert co.PickleSerializer().loads(pickle.dumps(data, protocol=protocol)) == data


def test_serializers_refuse_cycles_and_depth_without_hanging() -> None:
    """A cyclic value is a ValueError from every serializer (JSON's locator does not loop)."""
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="Circular reference"):
        co.JSONSerializer().dumps({"v": cyclic})
    with pytest.raises(ValueError, match="nested too deeply to pickle"):
        co.PickleSerializer().dumps({"v": _nested_list(100_000)})
