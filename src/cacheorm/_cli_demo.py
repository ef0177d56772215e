"""``cacheorm demo``: a walk-through of a repository, printed step by step."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import enum
import sys
from collections.abc import Callable
from typing import Annotated, TextIO

import cacheorm as co


class Plan(enum.Enum):
    """A subscription plan, stored by value."""

    FREE = "free"
    PRO = "pro"


@dataclasses.dataclass(frozen=True)
class Address:
    """A nested dataclass."""

    city: str
    country: str = "NL"


@dataclasses.dataclass(frozen=True)
class Customer:
    """The demo's model: an auto-numbered key, an enum, a nested record and a timestamp."""

    id: Annotated[int | None, co.Field(primary_key=True, auto=True)]
    name: str
    plan: Plan = Plan.FREE
    email: str | None = None
    tags: tuple[str, ...] = ()
    address: Address | None = None
    joined: Annotated[datetime.datetime, co.Field(codec=co.Timestamp("s"))] = dataclasses.field(
        default_factory=lambda: datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    )


def run_demo(backend: co.Backend, out: TextIO | None = None) -> None:
    """Create, read, update and delete a few customers on ``backend``, printing each step.

    Prints to ``out``, or to ``sys.stdout`` as it is at the time of the call.
    """
    if out is None:
        out = sys.stdout

    def step(title: str) -> None:
        print(f"\n== {title}", file=out)

    def show(label: str, value: object) -> None:
        print(f"   {label:<16} {value}", file=out)

    customers = co.Repository(Customer, backend=backend, serializer="json", prefix="demo:")
    show("repository", customers)

    step("create: ids come from an atomic counter")
    alice = customers.create(
        Customer(id=None, name="Alice", plan=Plan.PRO, tags=("vip",), address=Address("Utrecht"))
    )
    bob = customers.create(Customer(id=None, name="Bob", email="bob@example.com"))
    show("created", alice)
    show("created", bob)
    show("key of Alice", customers.key_of(alice))
    raw = backend.get(customers.key_of(alice))
    show("stored bytes", raw.decode() if raw is not None else None)

    step("create again: the key is taken")
    try:
        customers.create(alice)
    except co.AlreadyExists as exc:
        show("AlreadyExists", exc)

    step("get and get_many (one backend call)")
    assert alice.id is not None
    assert bob.id is not None
    show(f"get({alice.id})", customers.get(alice.id))
    wanted = [alice.id, bob.id, 99]
    for pk, record in zip(wanted, customers.get_many(wanted), strict=True):
        show(f"get_many -> {pk}", record)

    step("update: replace only if present")
    bob = customers.update(dataclasses.replace(bob, plan=Plan.PRO, tags=("new",)))
    show("updated", customers.get(bob.id))
    try:
        customers.update(Customer(id=99, name="Nobody"))
    except co.NotFound as exc:
        show("NotFound", exc)

    step("update_with and patch: read-modify-write under compare-and-set")
    bob = customers.update_with(bob.id, lambda c: dataclasses.replace(c, tags=(*c.tags, "loyal")))
    show("update_with", bob)
    show("patch", customers.patch(bob.id, email="bob@example.org"))

    step("get_or_load: read-through, one load however many callers miss")
    loads: list[int] = []

    def load_carol() -> Customer:
        loads.append(1)  # your database query goes here
        return Customer(id=50, name="Carol")

    show("get_or_load(50)", customers.get_or_load(50, load_carol, ttl=60))
    show("get_or_load(50)", customers.get_or_load(50, load_carol, ttl=60))
    show("loader calls", len(loads))

    step("validation: nothing is written")
    try:
        customers.save(Customer(id=3, name=42))  # type: ignore[arg-type]
    except co.ValidationError as exc:
        show("ValidationError", exc)
    show("exists(3)", customers.exists(3))

    step("delete")
    show(f"delete({alice.id})", customers.delete(alice.id))
    show(f"delete({alice.id}) again", customers.delete(alice.id))
    show("get_or_none", customers.get_or_none(alice.id))
    show("delete_many", customers.delete_many([alice.id, bob.id, 50]))
    print("\ndone.", file=out)


def add_parser(new_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``demo`` with the CLI's subcommands."""
    from cacheorm._cli import add_backend_options

    demo = new_parser(
        "demo",
        help="walk through create/get/update/delete (in memory unless told otherwise)",
        description="Create, read, update and delete a few records, printing each step and "
        "the bytes stored. Runs in memory unless a backend is given; it writes keys under "
        "demo: and deletes the records again (the id counter demo:customer:__seq__ stays).",
    )
    add_backend_options(demo, required=False)
    demo.set_defaults(run=_run)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from cacheorm._cli import open_backend

    backend, label = open_backend(args)
    print(f"cacheorm demo on {label}")
    try:
        run_demo(backend)
    finally:
        backend.close()
    return 0
