"""Schema evolution: renames, versions and upgrades, earlier serializers, rewrite on read.

The matrix (:func:`test_change_matrix`) runs each kind of change against
every backend of the ``backend`` fixture and on both codec paths (fast:
msgspec/orjson; stdlib): records written by the old code are read by the
new code (and rewritten when asked), and the old code's reading of the new
records is what the policy says.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cacheorm as co
from cacheorm import _fast

PK = Annotated[int, co.Field(primary_key=True)]


@pytest.fixture(params=["fast", "stdlib"])
def codec_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Build repositories on the fast codec path or on the stdlib one."""
    saved = _fast.ENABLED
    _fast.ENABLED = request.param == "fast"
    try:
        yield str(request.param)
    finally:
        _fast.ENABLED = saved


# --- the models of each change --------------------------------------------------------


@dataclasses.dataclass
class NameV1:
    id: PK
    name: str


@dataclasses.dataclass
class NameWithEmail:
    id: PK
    name: str
    email: str = "unknown"


@dataclasses.dataclass
class NameLegacy:
    id: PK
    name: str
    legacy: int


@dataclasses.dataclass
class Renamed:
    id: PK
    full_name: Annotated[str, co.Field(aliases=("name",))]


@dataclasses.dataclass
class AgeInt:
    id: PK
    age: int


@dataclasses.dataclass
class AgeStr:
    id: PK
    age: str


class ColorOld(enum.Enum):
    RED = "red"
    GREEN = "green"


class ColorNew(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class ColorFewer(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class PaintOld:
    id: PK
    color: ColorOld


@dataclasses.dataclass
class PaintNew:
    id: PK
    color: ColorNew


@dataclasses.dataclass
class PaintFewer:
    id: PK
    color: ColorFewer


def _age_to_str(data: dict[str, Any]) -> dict[str, Any]:
    data["age"] = str(data["age"])
    return data


def _green_to_red(data: dict[str, Any]) -> dict[str, Any]:
    if data["color"] == "green":
        data["color"] = "red"
    return data


@dataclasses.dataclass(frozen=True)
class Change:
    """One kind of change: the old and new code, and what each reads of the other's records."""

    old_model: type
    new_model: type
    old_record: Any
    new_reads_old: Any  # the record, or the exception type
    new_record: Any
    old_reads_new: Any  # the record, or the exception type
    old_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    new_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    message: str = ""  # a part of the old code's error


CHANGES: dict[str, Change] = {
    "add field with default": Change(
        NameV1,
        NameWithEmail,
        NameV1(1, "Ann"),
        NameWithEmail(1, "Ann", "unknown"),
        NameWithEmail(2, "Bob", "bob@example.invalid"),
        NameV1(2, "Bob"),
    ),
    "remove field": Change(
        NameLegacy,
        NameV1,
        NameLegacy(1, "Ann", 7),
        NameV1(1, "Ann"),
        NameV1(2, "Bob"),
        co.DeserializationError,
        message="$.legacy",
    ),
    "rename with aliases": Change(
        NameV1,
        Renamed,
        NameV1(1, "Ann"),
        Renamed(1, "Ann"),
        Renamed(2, "Bob"),
        co.DeserializationError,
        message="$.name",
    ),
    "int to str with an upgrade": Change(
        AgeInt,
        AgeStr,
        AgeInt(1, 30),
        AgeStr(1, "30"),
        AgeStr(2, "x"),
        co.DeserializationError,
        old_kwargs={"version": 1},
        new_kwargs={"version": 2, "upgrades": {1: _age_to_str}},
        message="schema version 2, newer than version 1",
    ),
    "int to str, old code ignores newer": Change(
        AgeInt,
        AgeStr,
        AgeInt(1, 30),
        AgeStr(1, "30"),
        AgeStr(2, "x"),
        co.DeserializationError,
        old_kwargs={"version": 1, "newer": "ignore"},
        new_kwargs={"version": 2, "upgrades": {1: _age_to_str}},
        message="a record of schema version 2, read by version 1",
    ),
    "enum member added": Change(
        PaintOld,
        PaintNew,
        PaintOld(1, ColorOld.GREEN),
        PaintNew(1, ColorNew.GREEN),
        PaintNew(2, ColorNew.BLUE),
        co.DeserializationError,
        message="$.color",
    ),
    "enum member removed, no upgrade": Change(
        PaintOld,
        PaintFewer,
        PaintOld(1, ColorOld.GREEN),
        co.DeserializationError,
        PaintFewer(2, ColorFewer.RED),
        PaintOld(2, ColorOld.RED),
    ),
    "enum member removed, upgraded": Change(
        PaintOld,
        PaintFewer,
        PaintOld(1, ColorOld.GREEN),
        PaintFewer(1, ColorFewer.RED),
        PaintFewer(2, ColorFewer.RED),
        PaintOld(2, ColorOld.RED),
        new_kwargs={"version": 2, "upgrades": {1: _green_to_red}},
        old_kwargs={"version": 1, "newer": "ignore"},
    ),
    "serializer json to msgpack": Change(
        NameV1,
        NameV1,
        NameV1(1, "Ann"),
        NameV1(1, "Ann"),
        NameV1(2, "Bob"),
        co.DeserializationError,
        old_kwargs={"serializer": "json"},
        new_kwargs={"serializer": "msgpack", "read_also": ["json"]},
        message="not valid json",
    ),
    "serializer msgpack back to json": Change(
        NameV1,
        NameV1,
        NameV1(1, "Ann"),
        NameV1(1, "Ann"),
        NameV1(2, "Bob"),
        co.DeserializationError,
        old_kwargs={"serializer": "msgpack"},
        new_kwargs={"serializer": "json", "read_also": ["msgpack"]},
        message="not valid msgpack",
    ),
    "serializer and version at once": Change(
        AgeInt,
        AgeStr,
        AgeInt(1, 30),
        AgeStr(1, "30"),
        AgeStr(2, "x"),
        co.DeserializationError,
        old_kwargs={"serializer": "json"},
        new_kwargs={
            "serializer": "msgpack",
            "read_also": ["json"],
            "version": 2,
            "upgrades": {1: _age_to_str},
        },
    ),
}


def _repos(
    backend: co.Backend, change: Change, **new_extra: Any
) -> tuple[co.Repository[Any], co.Repository[Any]]:
    old: co.Repository[Any] = co.Repository(
        change.old_model, backend=backend, namespace="rec", **change.old_kwargs
    )
    new: co.Repository[Any] = co.Repository(
        change.new_model, backend=backend, namespace="rec", **{**change.new_kwargs, **new_extra}
    )
    return old, new


def _check(read: Callable[[], Any], expected: Any, message: str = "") -> None:
    if isinstance(expected, type) and issubclass(expected, Exception):
        with pytest.raises(expected) as caught:
            read()
        assert message in str(caught.value)
    else:
        assert read() == expected


@pytest.mark.parametrize("kind", list(CHANGES))
def test_change_matrix(backend: co.Backend, codec_path: str, kind: str) -> None:
    """Old code writes, new code reads (and rewrites), old code reads the new records."""
    change = CHANGES[kind]
    old, new = _repos(backend, change, rewrite_on_read=True)
    old.save(change.old_record)
    written_by_old = backend.get("rec:1")
    _check(lambda: new.get(1), change.new_reads_old)
    _check(lambda: new.get_many([1])[0], change.new_reads_old)
    if not isinstance(change.new_reads_old, type):
        # Rewritten in the new format: the new code's own bytes.
        rewritten = backend.get("rec:1")
        if _stale(change):  # an older version or another serializer: rewritten
            new.save(change.new_reads_old)
            assert rewritten == backend.get("rec:1") != written_by_old
        else:  # no version: nothing says the record is old, so it is left as it is
            assert rewritten == written_by_old
    else:
        assert backend.get("rec:1") == written_by_old  # a record that does not read stays
    new.save(change.new_record)
    _check(lambda: old.get(2), change.old_reads_new, change.message)


def _stale(change: Change) -> bool:
    """Whether the new code stores the old record otherwise (so rewriting changes it)."""
    return "version" in change.new_kwargs or "read_also" in change.new_kwargs


# --- renames ----------------------------------------------------------------------------


@dataclasses.dataclass
class Inner:
    label: Annotated[str, co.Field(aliases=("title", "caption"))]


@dataclasses.dataclass
class Outer:
    id: PK
    inner: Inner
    score: Annotated[int, co.Field(name="s", aliases=("points",))] = 0


def test_aliases_read_nested_and_renamed_fields_in_order(
    codec_path: str, serializer_name: str
) -> None:
    """The stored name wins over an alias, the first alias over the next; writes use the name."""
    repo = co.Repository(Outer, serializer=serializer_name)
    dumps = repo.serializer.dumps
    repo.backend.set("outer:1", dumps({"id": 1, "inner": {"caption": "c"}, "points": 3}))
    assert repo.get(1) == Outer(1, Inner("c"), 3)
    both = {"id": 1, "inner": {"caption": "c", "title": "t"}, "points": 3, "s": 4}
    repo.backend.set("outer:1", dumps(both))
    assert repo.get(1) == Outer(1, Inner("t"), 4)
    repo.save(repo.get(1))
    assert repo.serializer.loads(repo.backend.get("outer:1") or b"") == {
        "id": 1,
        "inner": {"label": "t"},
        "s": 4,
    }
    repo.backend.set("outer:1", dumps({"id": 1, "inner": {}}))
    with pytest.raises(co.DeserializationError, match=r"\$\.inner\.label"):
        repo.get(1)


def test_an_alias_that_is_another_fields_name_is_refused() -> None:
    @dataclasses.dataclass
    class Clash:
        id: PK
        a: Annotated[str, co.Field(aliases=("b",))]
        b: str

    with pytest.raises(co.ModelDefinitionError, match="alias 'b' is the stored name of b"):
        co.Repository(Clash)


def test_an_alias_equal_to_the_own_name_or_shared_is_refused() -> None:
    @dataclasses.dataclass
    class Own:
        id: PK
        a: Annotated[str, co.Field(aliases=("a",))]

    with pytest.raises(co.ModelDefinitionError, match="its own stored name"):
        co.Repository(Own)

    @dataclasses.dataclass
    class Shared:
        id: PK
        a: Annotated[str, co.Field(aliases=("old",))]
        b: Annotated[str, co.Field(aliases=("old",))]

    with pytest.raises(co.ModelDefinitionError, match="also an alias of a"):
        co.Repository(Shared)


@pytest.mark.parametrize("aliases", ["old", ["old"], ("",), (3,)])
def test_aliases_must_be_a_tuple_of_names(aliases: Any) -> None:
    with pytest.raises(ValueError, match="aliases"):
        co.Field(aliases=aliases)


def test_aliases_inside_another_type_are_refused() -> None:
    @dataclasses.dataclass
    class Nested:
        id: PK
        tags: list[Annotated[str, co.Field(aliases=("x",))]]

    with pytest.raises(co.ModelDefinitionError, match="aliases"):
        co.Repository(Nested)


# --- versions -----------------------------------------------------------------------------


def test_a_version_one_repository_writes_no_version_and_reads_newer_as_told(
    codec_path: str, serializer_name: str
) -> None:
    backend = co.MemoryBackend()
    v1 = co.Repository(AgeInt, backend=backend, serializer=serializer_name, version=1)
    plain = co.Repository(AgeInt, backend=backend, serializer=serializer_name)
    v1.save(AgeInt(1, 5))
    plain.save(AgeInt(2, 6))
    assert backend.get("ageint:1") == backend.get("ageint:1")
    assert "~v" not in plain.serializer.loads(backend.get("ageint:1") or b"")
    assert v1.get_many([1, 2]) == [AgeInt(1, 5), AgeInt(2, 6)]
    v3 = co.Repository(AgeInt, backend=backend, serializer=serializer_name, version=3)
    v3.save(AgeInt(3, 7))
    assert v3.serializer.loads(backend.get("ageint:3") or b"")["~v"] == 3
    with pytest.raises(co.DeserializationError, match="schema version 3, newer than version 1"):
        v1.get(3)
    lenient = co.Repository(
        AgeInt, backend=backend, serializer=serializer_name, version=2, newer="ignore"
    )
    assert lenient.get(3) == AgeInt(3, 7)
    # Code without versions ignores the version key, as it ignores unknown keys.
    assert plain.get(3) == AgeInt(3, 7)


def test_upgrades_run_in_order_from_the_stored_version(codec_path: str) -> None:
    calls: list[int] = []

    def step(n: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def up(data: dict[str, Any]) -> dict[str, Any]:
            calls.append(n)
            data["age"] = data["age"] + 10**n
            return data

        return up

    backend = co.MemoryBackend()
    writers = {v: co.Repository(AgeInt, backend=backend, version=v) for v in (1, 2, 3)}
    reader = co.Repository(
        AgeInt, backend=backend, version=4, upgrades={n: step(n) for n in (1, 2, 3)}
    )
    for v, repo in writers.items():
        repo.save(AgeInt(v, 0))
    assert reader.get_many([1, 2, 3]) == [AgeInt(1, 1110), AgeInt(2, 1100), AgeInt(3, 1000)]
    assert calls == [1, 2, 3, 2, 3, 3]
    reader.save(AgeInt(4, 0))
    assert reader.get(4) == AgeInt(4, 0)
    assert calls == [1, 2, 3, 2, 3, 3]


def test_upgrade_failures_are_deserialization_errors_naming_the_step() -> None:
    backend = co.MemoryBackend()
    co.Repository(AgeInt, backend=backend).save(AgeInt(1, 0))
    co.Repository(AgeInt, backend=backend, version=2).save(AgeInt(2, 0))

    def boom(data: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("agee")

    failing = co.Repository(AgeInt, backend=backend, version=3, upgrades={1: boom, 2: dict})
    with pytest.raises(co.DeserializationError, match=r"upgrades\[1\] \(version 1 to 2\) raised"):
        failing.get(1)
    assert failing.get(2) == AgeInt(2, 0)
    bad = co.Repository(AgeInt, backend=backend, version=2, upgrades={1: lambda d: None})  # type: ignore[dict-item,return-value]
    with pytest.raises(co.DeserializationError, match="returned NoneType"):
        bad.get(1)
    partial = co.Repository(AgeInt, backend=backend, version=3, upgrades={2: dict})
    with pytest.raises(co.DeserializationError, match="no upgrade from version 1 to 2"):
        partial.get(1)
    none = co.Repository(AgeInt, backend=backend, version=3)
    with pytest.raises(co.DeserializationError, match="no upgrade from version 2 to 3"):
        none.get(2)


@pytest.mark.parametrize("stored", [0, -1, "2", 1.5, True])
def test_a_bad_stored_version_is_refused(stored: Any, serializer_name: str) -> None:
    repo = co.Repository(AgeInt, serializer=serializer_name, version=2, upgrades={1: dict})
    repo.backend.set("ageint:1", repo.serializer.dumps({"id": 1, "age": 1, "~v": stored}))
    with pytest.raises(co.DeserializationError, match=r"schema version .* is not an int >= 1"):
        repo.get(1)


def test_a_version_repository_reports_bytes_that_do_not_parse(serializer_name: str) -> None:
    repo = co.Repository(AgeInt, serializer=serializer_name, version=2)
    repo.backend.set("ageint:1", b'\x93"~v":\xa2~v[1, 2]')
    with pytest.raises(co.DeserializationError, match=r"ageint:1"):
        repo.get(1)
    repo.backend.set("ageint:2", repo.serializer.dumps([1, "~v"]))
    with pytest.raises(co.DeserializationError, match=r"ageint:2"):
        repo.get(2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": 0}, "version must be an int >= 1"),
        ({"version": True}, "version must be an int >= 1"),
        ({"version": 2, "newer": "warn"}, "newer must be 'error' or 'ignore'"),
        ({"newer": "ignore"}, "newer= needs version="),
        ({"upgrades": {1: dict}}, "upgrades= and newer= need version="),
        ({"version": 2, "upgrades": [dict]}, "upgrades must be a mapping"),
        ({"version": 2, "upgrades": {2: dict}}, "1 to 1 for version=2; got 2"),
        ({"version": 2, "upgrades": {1: 3}}, r"upgrades\[1\] is not callable"),
        ({"version": 4, "upgrades": {1: dict, 3: dict}}, "no function from version 2 to 3"),
        ({"read_also": "json"}, "read_also must be a list"),
        ({"read_also": ["nope"]}, "nope"),
        ({"rewrite_on_read": 1}, "rewrite_on_read must be a bool"),
    ],
)
def test_bad_evolution_arguments_are_configuration_errors(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(co.ConfigurationError, match=message):
        co.Repository(AgeInt, **kwargs)


def test_the_version_key_is_reserved() -> None:
    @dataclasses.dataclass
    class Tilde:
        id: PK
        v: Annotated[int, co.Field(name="~v")]

    co.Repository(Tilde)  # without versions the name is free
    with pytest.raises(co.ModelDefinitionError, match="'~v' is reserved"):
        co.Repository(Tilde, version=2)


def test_protobuf_refuses_versions() -> None:
    """A protobuf message has no room for the version key: version= is refused up front."""
    from tests.test_codec_hardening import Account, _account_class

    serializer = co.ProtobufSerializer(_account_class())
    co.Repository(Account, serializer=serializer)  # without versions it is fine
    with pytest.raises(co.ConfigurationError, match="protobuf serializer"):
        co.Repository(Account, serializer=serializer, version=2)
    with pytest.raises(co.ConfigurationError, match="protobuf serializer"):
        co.Repository(Account, serializer="json", read_also=[serializer], version=2)


# --- earlier serializers ------------------------------------------------------------------


def test_read_also_tries_each_serializer_strictly_and_keeps_the_first_error(
    codec_path: str,
) -> None:
    backend = co.MemoryBackend()
    pickled = co.Repository(AgeInt, backend=backend, serializer="pickle")
    pickled.save(AgeInt(1, 1))
    reader = co.Repository(
        AgeInt, backend=backend, serializer="json", read_also=["msgpack", "pickle", "json"]
    )
    assert reader.get(1) == AgeInt(1, 1)
    backend.set("ageint:2", b"\xff\xfe")  # no format reads it: the serializer's own error
    with pytest.raises(co.DeserializationError, match="not valid json"):
        reader.get(2)
    backend.set("ageint:3", co.registry.get("msgpack").dumps([1, 2]))  # msgpack, not a map
    with pytest.raises(co.DeserializationError, match="not valid json"):
        reader.get(3)
    backend.set("ageint:4", co.registry.get("msgpack").dumps({"id": 4, "age": "x"}))
    with pytest.raises(co.DeserializationError, match=r"serializer 'msgpack'.*\$\.age"):
        reader.get(4)  # parsed as msgpack: its error says what is wrong
    assert reader.get_or_none(1) == AgeInt(1, 1)


def test_a_versioned_record_under_the_wrong_key_is_refused(codec_path: str) -> None:
    """The key check of every read holds on the evolving reader too."""
    repo = co.Repository(AgeInt, version=2, upgrades={1: dict}, read_also=["msgpack"])
    repo.save(AgeInt(1, 1))
    repo.backend.set("ageint:2", repo.backend.get("ageint:1") or b"")
    with pytest.raises(co.DeserializationError, match="wrong key"):
        repo.get(2)
    # The payload reader alone (as `cacheorm inspect` uses it) decodes without the key check.
    assert repo._decode_payload("ageint:2", repo.backend.get("ageint:2") or b"") == AgeInt(1, 1)


@dataclasses.dataclass
class Blob:
    id: PK
    blob: bytes


Wide = dataclasses.make_dataclass(
    "Wide", [("id", PK)] + [(f"f{i}", int, dataclasses.field(default=i)) for i in range(20)]
)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_current_records_read_without_their_version_on_the_fast_path(
    codec_path: str, serializer: str
) -> None:
    """Small and wide (msgpack map16) records, and a tail that only looks like a version."""
    backend = co.MemoryBackend()
    wide: co.Repository[Any] = co.Repository(
        Wide, backend=backend, serializer=serializer, version=2
    )
    wide.save(Wide(1))
    assert wide.get(1) == Wide(1)
    calls: list[dict[str, Any]] = []

    def up(data: dict[str, Any]) -> dict[str, Any]:
        calls.append(dict(data))
        return data

    v1 = co.Repository(Blob, backend=backend, serializer=serializer)
    v2 = co.Repository(Blob, backend=backend, serializer=serializer, version=2, upgrades={1: up})
    # A version-1 record whose bytes end like a version-2 record's (msgpack): still version 1.
    v1.save(Blob(1, b"\xa2~v\x02"))
    assert v2.get(1) == Blob(1, b"\xa2~v\x02")
    assert len(calls) == 1
    v2.save(Blob(2, b"x"))
    assert v2.get(2) == Blob(2, b"x")
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("serializer", "payload", "message"),
    [
        ("json", b'{"id":"x","~v":2}', r"\$\.id"),
        ("msgpack", b"\x81\xa2~v\x02", r"\$\.id"),
        ("msgpack", b"\x92\xa2~v\x02", "ageint:1"),
        ("msgpack", b"\xde\x00\x01\xa2~v\x02", r"\$\.id"),
    ],
)
def test_a_payload_ending_like_a_version_that_does_not_fit_is_read_whole(
    codec_path: str, serializer: str, payload: bytes, message: str
) -> None:
    repo = co.Repository(AgeInt, serializer=serializer, version=2)
    repo.backend.set("ageint:1", payload)
    with pytest.raises(co.DeserializationError, match=message):
        repo.get(1)


def test_a_newer_record_is_never_rewritten_by_older_code(codec_path: str) -> None:
    """Even in an earlier serializer: rewriting it would drop the fields old code lacks."""
    backend = co.MemoryBackend()
    newer = co.Repository(NameWithEmail, backend=backend, namespace="n", version=3)
    newer.save(NameWithEmail(1, "Ann", "ann@example.invalid"))
    written = backend.get("n:1")
    older = co.Repository(
        NameV1,
        backend=backend,
        namespace="n",
        serializer="msgpack",
        read_also=["json"],
        version=2,
        upgrades={1: dict},
        newer="ignore",
        rewrite_on_read=True,
    )
    assert older.get(1) == NameV1(1, "Ann")
    assert backend.get("n:1") == written
    assert older.migrate().current == 1
    assert backend.get("n:1") == written


def test_a_version_one_repository_reads_earlier_serializers(codec_path: str) -> None:
    backend = co.MemoryBackend()
    co.Repository(AgeInt, backend=backend, serializer="json").save(AgeInt(1, 1))
    reader = co.Repository(
        AgeInt, backend=backend, serializer="msgpack", version=1, read_also=["json"]
    )
    assert reader.get(1) == AgeInt(1, 1)
    backend.set("ageint:2", b"\xc1")  # a byte msgpack never uses, and not JSON
    with pytest.raises(co.DeserializationError, match="not valid msgpack"):
        reader.get(2)


def test_empty_upgrades_mean_older_records_do_not_read() -> None:
    backend = co.MemoryBackend()
    co.Repository(AgeInt, backend=backend).save(AgeInt(1, 1))
    with pytest.raises(co.DeserializationError, match="no upgrade from version 1 to 2"):
        co.Repository(AgeInt, backend=backend, version=2, upgrades={}).get(1)


def test_rewrite_on_read_checks_the_key_first(codec_path: str) -> None:
    """A record under the wrong key is refused, and not rewritten."""
    backend = co.MemoryBackend()
    co.Repository(AgeInt, backend=backend, serializer="json").save(AgeInt(1, 1))
    backend.set("ageint:2", backend.get("ageint:1") or b"")
    reader = co.Repository(
        AgeInt, backend=backend, serializer="msgpack", read_also=["json"], rewrite_on_read=True
    )
    with pytest.raises(co.DeserializationError, match="wrong key"):
        reader.get(2)
    assert backend.get("ageint:2") == backend.get("ageint:1")


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_a_version_is_never_misread_from_the_payloads_bytes(
    codec_path: str, serializer: str
) -> None:
    """Version-1 records whose bytes end like a version are upgraded; current ones are not."""
    backend = co.MemoryBackend()
    upgraded: list[int] = []

    def up(data: dict[str, Any]) -> dict[str, Any]:
        upgraded.append(data["id"])
        return data

    v1 = co.Repository(Blob, backend=backend, serializer=serializer)
    v2 = co.Repository(Blob, backend=backend, serializer=serializer, version=2, upgrades={1: up})
    tails = st.sampled_from([b"", b"\xa2~v\x02", b',"~v":2}', b"\x81\xa2~v\x02", b"~v"])

    @settings(max_examples=150, deadline=None, database=None)
    @given(st.binary(max_size=20), tails, st.integers(0, 2**40))
    def check(body: bytes, tail: bytes, pk: int) -> None:
        upgraded.clear()
        v1.save(Blob(pk, body + tail))
        assert v2.get(pk) == Blob(pk, body + tail)
        assert upgraded == [pk]
        v2.save(Blob(pk, body + tail))
        assert v2.get(pk) == Blob(pk, body + tail)
        assert upgraded == [pk]

    check()
