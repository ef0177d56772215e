"""Shared fixtures: backends, a fake clock, serializer names."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import cacheorm as co


class FakeClock:
    """A clock the test moves by hand, so TTL tests never sleep."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock."""
    return FakeClock()


@pytest.fixture(params=["memory"])
def backend(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[co.Backend]:
    """Every backend the repository suite runs against (memory, for now)."""
    store = co.MemoryBackend(clock=clock)
    yield store
    store.close()


@pytest.fixture(params=["json", "msgpack", "pickle"])
def serializer_name(request: pytest.FixtureRequest) -> str:
    """Each built-in serializer."""
    return str(request.param)
