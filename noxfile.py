"""Development sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``demo``, ``bench``.

Sessions run on the Python that runs nox, so one installed Python is enough.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")


def _group(name: str) -> list[str]:
    return list(nox.project.dependency_groups(PYPROJECT, name))


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite with coverage (fails under 95%)."""
    session.install("-e", ".[all]", *_group("test"))
    session.run(
        "pytest",
        "--cov=cacheorm",
        "--cov-report=term-missing:skip-covered",
        "--cov-fail-under=95",
        *session.posargs,
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install(*_group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over src/ and the typing tests."""
    session.install("-e", ".[all]", *_group("typecheck"))
    session.run("mypy", "--strict")


@nox.session
def demo(session: nox.Session) -> None:
    """Walk through the API on the in-memory backend."""
    session.install(".")
    session.run("python", "-m", "cacheorm", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: ratios against hand-written code, measured in the same run.

    The backend benchmarks start their own redis-server, Redis Cluster and
    memcached processes; arguments go to both (``nox -s bench -- --quick``,
    ``-- --only redis``). ``bench_codecs`` compares the stdlib and fast
    (msgspec, the ``fast`` extra that ``all`` includes) codec paths.
    """
    session.install(".[all]")
    session.run("python", "benchmarks/bench_core.py")
    session.run("python", "benchmarks/bench_codecs.py", *session.posargs)
    session.run("python", "benchmarks/bench_backends.py", *session.posargs)
    session.run("python", "benchmarks/bench_scaleout.py", *session.posargs)


@nox.session(python=["3.10", "3.11", "3.12", "3.13"])
def compat(session: nox.Session) -> None:
    """The test suite (no coverage gate) on each supported Python that is installed.

    Not part of CI, which has one Python; run it with ``nox -s compat``.
    """
    session.install("-e", ".[all]", *_group("test"))
    session.run("pytest", "-q", "-p", "no:cacheprovider", *session.posargs)
