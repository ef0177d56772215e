"""``cacheorm.testing``: a third-party backend can run the contract suite, and it catches bugs."""

from __future__ import annotations

import pytest

CONFTEST = """
import pytest
import cacheorm as co
from cacheorm.testing import BackendContract


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class ContractOnMemory(BackendContract):
    @pytest.fixture
    def backend(self):
        self.clock = Clock()
        store = self.make(self.clock)
        yield store
        store.close()

    def make(self, clock):
        return co.MemoryBackend(clock=clock)

    def wait(self, seconds):
        self.clock.now += seconds
"""


def test_a_correct_third_party_backend_passes(pytester: pytest.Pytester) -> None:
    """A subclass with a correct backend passes every contract test."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        from conftest import ContractOnMemory

        class TestMine(ContractOnMemory):
            pass
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0
    assert outcomes["passed"] >= 50


def test_a_backend_whose_add_overwrites_fails_the_contract(pytester: pytest.Pytester) -> None:
    """A backend whose add ignores an existing key fails the add tests."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import cacheorm as co
        from conftest import ContractOnMemory

        class Overwriting(co.MemoryBackend):
            def add(self, key, value, /, ttl=None):
                self.set(key, value, ttl)
                return True

        class TestBroken(ContractOnMemory):
            def make(self, clock):
                return Overwriting(clock=clock)
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=result.parseoutcomes()["passed"], failed=3)
    result.stdout.fnmatch_lines(["*test_add_stores_only_when_absent*"])


def test_a_backend_that_ignores_ttls_fails_the_contract(pytester: pytest.Pytester) -> None:
    """A backend that never expires keys fails the TTL tests."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        from conftest import ContractOnMemory

        class TestNoExpiry(ContractOnMemory):
            def wait(self, seconds):
                pass
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider", "-k", "ttl or expire")
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 7  # 4 core TTL tests, 3 of the optional capabilities
    result.stdout.fnmatch_lines(["*test_keep_ttl_keeps_a_finite_ttl*"])
    result.stdout.fnmatch_lines(["*test_a_counter_expires_after_the_ttl_of_its_creation*"])


def test_a_backend_whose_keep_ttl_clears_the_ttl_fails_the_contract(
    pytester: pytest.Pytester,
) -> None:
    """A backend whose replace treats KEEP_TTL as "no expiry" fails the finite-TTL test."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import cacheorm as co
        from conftest import ContractOnMemory

        class Clearing(co.MemoryBackend):
            def replace(self, key, value, /, ttl=None):
                return super().replace(key, value, None if ttl is co.KEEP_TTL else ttl)

        class TestClearing(ContractOnMemory):
            def make(self, clock):
                return Clearing(clock=clock)
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider", "-k", "keep_ttl_keeps")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_keep_ttl_keeps_a_finite_ttl*"])


def test_a_backend_that_is_not_a_context_manager_fails_the_contract(
    pytester: pytest.Pytester,
) -> None:
    """A backend without __enter__/__exit__ fails the context-manager test."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import cacheorm as co
        from conftest import ContractOnMemory

        class Plain:
            def __init__(self, clock):
                self._inner = co.MemoryBackend(clock=clock)

            def __getattr__(self, name):
                return getattr(self._inner, name)

        class TestPlain(ContractOnMemory):
            def make(self, clock):
                return Plain(clock)
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider", "-k", "is_a_context_manager")
    result.assert_outcomes(failed=1)


def test_a_subclass_without_a_backend_fixture_says_what_is_missing(
    pytester: pytest.Pytester,
) -> None:
    """Forgetting the backend fixture fails with a message naming the class and the fixture."""
    pytester.makepyfile(
        """
        from cacheorm.testing import BackendContract

        class TestForgotten(BackendContract):
            pass
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider", "-k", "test_is_a_backend")
    result.stdout.fnmatch_lines(["*TestForgotten must define a `backend` fixture*"])
