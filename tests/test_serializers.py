"""Tests for serializers and the serializer registry."""

import dataclasses
import json
import math
import os
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
