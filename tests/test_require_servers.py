"""CACHEORM_REQUIRE_SERVERS=1 turns every skip into a failure."""

from __future__ import annotations

import pytest

SKIPPING = """
import pytest

def test_needs_a_server():
    pytest.skip("no redis-server on PATH")

def test_fine():
    assert True
"""

SKIPPING_MODULE = """
import pytest
pytest.importorskip("a_module_that_does_not_exist_anywhere")

def test_never_runs():
    assert True
"""


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str, require: str | None
) -> pytest.RunResult:
    pytester.makeconftest(
        "from tests.conftest import pytest_runtest_makereport, pytest_make_collect_report\n"
    )
    pytester.makepyfile(test_sample=source)
    if require is None:
        monkeypatch.delenv("CACHEORM_REQUIRE_SERVERS", raising=False)
    else:
        monkeypatch.setenv("CACHEORM_REQUIRE_SERVERS", require)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider")


def test_a_skip_passes_without_the_variable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Locally (variable unset) a test that skips is reported as skipped."""
    result = _run(pytester, monkeypatch, SKIPPING, None)
    result.assert_outcomes(passed=1, skipped=1)


def test_a_skip_fails_when_servers_are_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CACHEORM_REQUIRE_SERVERS=1 the skipping test fails and says why."""
    result = _run(pytester, monkeypatch, SKIPPING, "1")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*no redis-server on PATH*CACHEORM_REQUIRE_SERVERS=1 forbids*"])


def test_a_skipped_module_fails_when_servers_are_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An importorskip at module level is a collection error under CACHEORM_REQUIRE_SERVERS=1."""
    assert (
        _run(pytester, monkeypatch, SKIPPING_MODULE, None).ret == pytest.ExitCode.NO_TESTS_COLLECTED
    )
    result = _run(pytester, monkeypatch, SKIPPING_MODULE, "1")
    result.assert_outcomes(errors=1)
    assert result.ret != pytest.ExitCode.OK
