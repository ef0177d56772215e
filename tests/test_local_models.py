"""Models defined inside a function under ``from __future__ import annotations``.

Their annotations are strings that name the function's local classes; the
repository resolves them through the namespace of the code that builds it
(as pydantic does), or says which name is missing and how to fix it.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Annotated, Any

import pytest

import cacheorm as co


def build(model: type[Any], backend: co.Backend) -> co.Repository[Any]:
    """A repository built away from where ``model`` was defined (a factory or fixture)."""
    return co.Repository(model, backend=backend)


def test_local_models_resolve_in_the_function_that_builds_the_repository(
    backend: co.Backend,
) -> None:
    """A local model naming a local enum and a local nested dataclass round-trips."""

    class Colour(enum.Enum):
        RED = "red"
        BLUE = "blue"

    @dataclasses.dataclass(frozen=True)
    class Part:
        name: str
        colour: Colour = Colour.RED

    @dataclasses.dataclass(frozen=True)
    class Widget:
        id: Annotated[int, co.Field(primary_key=True)]
        parts: list[Part]
        spare: Part | None = None
        tags: dict[str, Colour] = dataclasses.field(default_factory=dict)

    widgets = co.Repository(Widget, backend=backend, serializer="json")
    widget = Widget(1, [Part("bolt", Colour.BLUE)], Part("nut"), {"main": Colour.RED})
    widgets.create(widget)
    assert widgets.get(1) == widget
    assert widgets.get(1).parts[0].colour is Colour.BLUE


def test_a_local_name_does_not_shadow_a_module_or_builtin_name(backend: co.Backend) -> None:
    """Caller locals only fill names the model's module lacks; `list`, `str` keep their meaning."""
    list = "not the builtin"  # shadowing builtins is the point of the test
    str = 0

    @dataclasses.dataclass(frozen=True)
    class Local:
        id: Annotated[int, co.Field(primary_key=True)]

    @dataclasses.dataclass(frozen=True)
    class Holder:
        id: Annotated[int, co.Field(primary_key=True)]
        names: list[str]
        local: Local

    holders = co.Repository(Holder, backend=backend)
    holders.save(Holder(1, ["a"], Local(2)))
    assert holders.get(1) == Holder(1, ["a"], Local(2))
    assert (list, str) == ("not the builtin", 0)


def test_a_local_model_built_elsewhere_names_the_field_and_the_fix() -> None:
    """Built by a helper that cannot see the local class: a ModelDefinitionError says what to do."""

    @dataclasses.dataclass
    class Address:
        city: str

    @dataclasses.dataclass
    class Customer:
        id: Annotated[int, co.Field(primary_key=True)]
        address: Address

    with pytest.raises(co.ModelDefinitionError) as info:
        build(Customer, co.MemoryBackend())
    error = info.value
    assert error.model is Customer
    assert error.field == "address"
    message = str(error)
    assert "Customer.address" in message
    assert "'Address'" in message
    assert "at module level" in message
    assert "where Address is defined" in message


def test_a_misspelt_name_in_a_module_level_model_is_reported() -> None:
    """A name defined nowhere fails with the model, the field and the missing name."""
    with pytest.raises(co.ModelDefinitionError) as info:
        co.Repository(Broken)
    assert info.value.model is Broken
    assert info.value.field == "owner"
    assert "Broken.owner" in str(info.value)
    assert "'Ownr'" in str(info.value)


def test_a_nested_local_model_reports_its_own_field() -> None:
    """The missing name is reported on the nested model whose field names it."""

    @dataclasses.dataclass
    class Line:
        sku: Sku  # type: ignore[name-defined]  # noqa: F821 - never defined

    @dataclasses.dataclass
    class Order:
        id: Annotated[int, co.Field(primary_key=True)]
        lines: list[Line]

    with pytest.raises(co.ModelDefinitionError) as info:
        co.Repository(Order)
    assert info.value.model is Line
    assert info.value.field == "sku"
    assert "Line.sku" in str(info.value)
    assert "'Sku'" in str(info.value)


@dataclasses.dataclass
class Broken:
    id: Annotated[int, co.Field(primary_key=True)]
    owner: Ownr  # type: ignore[name-defined]  # noqa: F821 - the misspelling under test


def test_an_annotation_that_fails_otherwise_after_the_fallback_is_reported() -> None:
    """A local name resolves, but another annotation is broken: the usual definition error."""

    @dataclasses.dataclass
    class Local:
        x: int

    Odd = dataclasses.make_dataclass(
        "Odd",
        [
            ("id", Annotated[int, co.Field(primary_key=True)]),
            ("local", "Local"),
            ("odd", "3 + 'x'"),  # raises TypeError when evaluated
        ],
    )
    with pytest.raises(co.ModelDefinitionError, match=r"cannot resolve the annotations of Odd"):
        co.Repository(Odd)


def test_the_missing_name_is_found_on_a_base_class() -> None:
    """The report skips evaluated and otherwise broken annotations to name the right field."""

    @dataclasses.dataclass
    class Base:
        id: Annotated[int, co.Field(primary_key=True)]
        owner: Missing  # type: ignore[name-defined]  # noqa: F821 - the name under test

    Child = dataclasses.make_dataclass("Child", [("size", int), ("odd", "3 + 'x'")], bases=(Base,))
    with pytest.raises(co.ModelDefinitionError) as info:
        co.Repository(Child)
    assert info.value.model is Base
    assert info.value.field == "owner"
    assert "'Missing'" in str(info.value)


def test_a_missing_name_inside_a_typing_generic_names_the_model() -> None:
    """A ForwardRef inside a non-string annotation: no single field to blame, the model named."""
    Bag = dataclasses.make_dataclass(
        "Bag",
        [("id", Annotated[int, co.Field(primary_key=True)]), ("items", typing.List["Nowhere"])],  # noqa: UP006, F821
    )
    with pytest.raises(co.ModelDefinitionError) as info:
        co.Repository(Bag)
    assert info.value.model is Bag
    assert info.value.field is None
    assert str(info.value).startswith("Bag: the annotation names 'Nowhere'")
