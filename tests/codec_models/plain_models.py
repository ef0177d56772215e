"""The twins of ``future_models``, declared without ``from __future__ import annotations``.

Keep in step with ``future_models``: same class names, fields, options and order.
"""

# typing.Optional is spelled out on purpose: both spellings must work.
# ruff: noqa: UP045

import dataclasses
import datetime as dt
import enum
from typing import Annotated, ClassVar, Optional

import cacheorm


class Level(enum.Enum):
    LOW = "low"
    HIGH = "high"


@dataclasses.dataclass
class Address:
    city: str
    zip_code: Optional[str] = None


@dataclasses.dataclass
class Contact:
    id: Annotated[int, cacheorm.Field(primary_key=True)]
    name: Annotated[str, cacheorm.Field(name="full_name")]
    address: Address
    previous: Optional[Address] = None
    homes: list[Address] = dataclasses.field(default_factory=list)
    level: Level = Level.LOW
    tags: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    seen: Annotated[dt.datetime | None, cacheorm.Field(codec=cacheorm.Timestamp("ms"))] = None
    manager: Optional["Contact"] = None
    kind: ClassVar[str] = "contact"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Badge:
    code: Annotated[str, cacheorm.Field(primary_key=True)]
    issued: dt.date
    holder: Optional[Contact] = None
