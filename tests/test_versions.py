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
    old = co.Repository(change.old_model, backend=backend, namespace="rec", **change.old_kwargs)
    new = co.Repository(
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
