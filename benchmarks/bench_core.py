"""Core benchmark: cacheorm against hand-written code, measured in the same run.

For one 8-field record (int pk, str, optional str, float, bool, enum,
list[str], aware datetime) it times:

* encode+decode alone: cacheorm's compiled codec + JSON serializer, against a
  hand-written ``dataclass -> dict -> json.dumps -> json.loads -> dataclass``
  function pair;
* a save+get round trip through the memory backend: ``Repository.save`` +
  ``Repository.get`` against the hand-written functions calling the same
  ``MemoryBackend`` directly with an f-string key.

Prints microseconds per operation and the ratio cacheorm / hand-written
(lower is better; 1.00 means as fast as the hand-written code). Run it with
``nox -s bench`` or ``python benchmarks/bench_core.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import enum
import json
import platform
import statistics
import sys
import timeit
from collections.abc import Callable
from typing import Annotated

import cacheorm as co
from cacheorm._schema import compile_model


class Gender(enum.IntEnum):
    UNKNOWN = 0
    FEMALE = 1
    MALE = 2


@dataclasses.dataclass
class User:
    id: Annotated[int, co.Field(primary_key=True)]
    name: str
    email: str | None
    height: float
    married: bool
    gender: Gender
    tags: list[str]
    created_at: datetime.datetime


def make_user() -> User:
    return User(
        id=12345,
        name="Samantha Example",
        email="sam@example.com",
        height=178.8,
        married=True,
        gender=Gender.FEMALE,
        tags=["admin", "beta", "newsletter"],
        created_at=datetime.datetime(2026, 11, 26, 21, 30, 5, 123456, tzinfo=datetime.timezone.utc),
    )


# --- the hand-written baseline ------------------------------------------------------


def hand_encode(user: User) -> str:
    return json.dumps(
        {
            "id": user.id,
            "name": user.name,
            "email": user.email,
            "height": user.height,
            "married": user.married,
            "gender": user.gender.value,
            "tags": user.tags,
            "created_at": user.created_at.isoformat(),
        }
    )


def hand_decode(text: str | bytes) -> User:
    d = json.loads(text)
    return User(
        id=d["id"],
        name=d["name"],
        email=d["email"],
        height=d["height"],
        married=d["married"],
        gender=Gender(d["gender"]),
        tags=d["tags"],
        created_at=datetime.datetime.fromisoformat(d["created_at"]),
    )


# --- timing ---------------------------------------------------------------------------


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Median of the per-call times over ``repeat`` runs of ``number`` calls, in microseconds."""
    timer = timeit.Timer(fn)
    runs = timer.repeat(repeat=repeat, number=number)
    return statistics.median(runs) / number * 1e6


def interleaved(
    pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]], number: int, repeat: int
) -> dict[str, tuple[float, float, list[float]]]:
    """Time each (cacheorm, baseline) pair back to back, ``repeat`` times.

    Each round yields one ratio from two timings taken a fraction of a second
    apart, so drift on a shared machine hits both sides alike; the median of
    the per-round ratios is reported, with their quartiles.
    """
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in pairs}
    for round_ in range(repeat):
        for name, (ours, theirs) in pairs.items():
            # Alternate which side goes first so neither always runs warm.
            if round_ % 2:
                theirs_us, ours_us = best_us(theirs, number, 1), best_us(ours, number, 1)
            else:
                ours_us, theirs_us = best_us(ours, number, 1), best_us(theirs, number, 1)
            times[name][0].append(ours_us)
            times[name][1].append(theirs_us)
    return {
        k: (statistics.median(a), statistics.median(b), [x / y for x, y in zip(a, b, strict=True)])
        for k, (a, b) in times.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2_000, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=101, help="rounds (medians are used)")
    args = parser.parse_args()

    user = make_user()
    # Both sides must produce the same record, or the comparison means nothing.
    assert hand_decode(hand_encode(user)) == user

    compiled = compile_model(User, binary=False)
    serializer = co.JSONSerializer()
    encode, decode, dumps, loads = (
        compiled.encode,
        compiled.decode,
        serializer.dumps,
        serializer.loads,
    )
    assert decode(loads(dumps(encode(user)))) == user

    backend = co.MemoryBackend()
    repo = co.Repository(User, backend=backend, serializer="json")
    repo.save(user)
    assert repo.get(user.id) == user

    def hand_roundtrip() -> None:
        backend.set(f"user:{user.id}", hand_encode(user).encode())
        payload = backend.get(f"user:{user.id}")
        assert payload is not None
        hand_decode(payload)

    def orm_roundtrip() -> None:
        repo.save(user)
        repo.get(user.id)

    pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "encode+decode (json)": (
            lambda: decode(loads(dumps(encode(user)))),
            lambda: hand_decode(hand_encode(user)),
        ),
        "save+get, memory backend": (orm_roundtrip, hand_roundtrip),
    }
    results = interleaved(pairs, args.number, args.repeat)

    print(f"cacheorm {co.__version__} core benchmark")
    print(f"Python {platform.python_version()} on {platform.machine()}, {sys.platform}")
    print(f"{args.repeat} rounds x {args.number:,} calls per side; one 8-field record\n")
    print(f"{'operation':<28}{'cacheorm us':>13}{'hand us':>11}{'ratio':>8}{'quartiles':>15}")
    for name, (ours, theirs, ratios) in results.items():
        low, _, high = statistics.quantiles(ratios, n=4)
        ratio = statistics.median(ratios)
        print(f"{name:<28}{ours:>13.2f}{theirs:>11.2f}{ratio:>8.2f}{low:>8.2f}-{high:.2f}")
    print("\nratio = cacheorm / hand-written, median of per-round ratios (lower is better)")
    print("target for encode+decode: <= 1.20")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
