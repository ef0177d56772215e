"""tests/test_codecs.py again, on the stdlib path (the fast codec path switched off).

The test group installs msgspec, so repositories normally take the fast path
and tests/test_codecs.py runs on it (tests/test_fast_roundtrip.py checks that it
does); this module collects the same tests with the fast path off, so each of
them runs on both paths and a difference between the two fails one of them.
"""

from collections.abc import Iterator

import pytest

from cacheorm import _fast
from tests import test_codecs
from tests.test_codecs import *  # noqa: F403


@pytest.fixture(autouse=True)
def _stdlib_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every repository built by these tests is on the stdlib path."""
    monkeypatch.setattr(_fast, "ENABLED", False)
    test_codecs._cached_repo.cache_clear()  # repositories cached on the fast path
    yield
    test_codecs._cached_repo.cache_clear()
