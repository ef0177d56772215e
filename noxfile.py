"""Development sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``typing_installed``,
``demo``, ``docs``, ``bench``.

Sessions run on the Python that runs nox, so one installed Python is enough.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

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
    """mypy --strict, then basedpyright strict, over src/ and the typing tests.

    Both read their settings from pyproject.toml (``[tool.mypy]``,
    ``[tool.basedpyright]``); either one's error fails the session.
    """
    session.install("-e", ".[all]", *_group("typecheck"))
    session.run("mypy", "--strict")
    # pyright finds the installed packages through the session's interpreter.
    # --project: this checkout's pyproject.toml, never a pyrightconfig.json found higher up.
    session.run(
        "basedpyright",
        "--project",
        "pyproject.toml",
        "--pythonpath",
        str(Path(session.bin, "python")),
    )


@nox.session
def typing_installed(session: nox.Session) -> None:
    """Type-check user code against the built wheel: mypy --strict and basedpyright strict.

    Builds the wheel, installs it (not editable) and checks
    ``tests/typing/installed/user_code.py`` from a temporary directory outside
    the checkout, so neither checker can see ``src/``: the types checked are
    the ones a ``pip install cacheorm`` user gets (they need ``py.typed``).
    """
    session.install(*_group("typing-installed"))
    user_code = Path("tests/typing/installed/user_code.py").resolve()
    with tempfile.TemporaryDirectory(prefix="cacheorm-typing-") as tmp:
        dist, work = Path(tmp, "dist"), Path(tmp, "work")
        work.mkdir()
        session.run(
            "python", "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist), ".", silent=True
        )
        (wheel,) = dist.glob("cacheorm-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            if "cacheorm/py.typed" not in archive.namelist():
                session.error(f"{wheel.name} has no cacheorm/py.typed: checkers would see no types")
        session.install("--force-reinstall", str(wheel))
        shutil.copy(user_code, work / user_code.name)
        (work / "mypy.ini").write_text("[mypy]\nstrict = True\npython_version = 3.10\n")
        pyright_config = {
            "typeCheckingMode": "strict",
            "pythonVersion": "3.10",
            "reportUnnecessaryTypeIgnoreComment": "error",
            "include": [user_code.name],
        }
        (work / "pyrightconfig.json").write_text(json.dumps(pyright_config))
        # No PYTHONPATH: pyright asks the interpreter for sys.path, and src/ must not be on it.
        env = {"PYTHONPATH": "", "MYPYPATH": ""}
        session.chdir(work)
        session.run(
            "python",
            "-c",
            "import cacheorm, pathlib; p = pathlib.Path(cacheorm.__file__); "
            "assert 'site-packages' in p.parts, f'cacheorm imported from {p}, not the wheel'; "
            "print('checking the installed', p.parent)",
            env=env,
        )
        session.run("cacheorm", "--version", env=env)  # the wheel's console script
        session.run("mypy", "--config-file", "mypy.ini", user_code.name, env=env)
        # pyright reads the installed packages through the session's interpreter.
        session.run("basedpyright", "--pythonpath", str(Path(session.bin, "python")), env=env)


@nox.session
def demo(session: nox.Session) -> None:
    """Walk through the API on the in-memory backend."""
    session.install(".")
    session.run("python", "-m", "cacheorm", "demo", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site (``mkdocs build --strict``) and count its code examples.

    The build needs no network: no plugin fetches anything. The examples
    themselves run in the test suite (``tests/test_docs_examples.py``); this
    prints how many run per page and fails if a user-facing page has one
    that does not. ``nox -s docs -- serve`` serves the site locally instead.
    """
    session.install(*_group("docs"))
    env = {"NO_MKDOCS_2_WARNING": "1"}
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:], env=env)
        return
    session.run("mkdocs", "build", "--strict", *session.posargs, env=env)
    session.run("python", "-m", "tests.docs_examples.collect")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: ratios against hand-written code, measured in the same run.

    The backend benchmarks start their own redis-server, Redis Cluster and
    memcached processes; arguments go to both (``nox -s bench -- --quick``,
    ``-- --only redis``). ``bench_codecs`` compares the stdlib and fast
    (msgspec, the ``fast`` extra that ``all`` includes) codec paths.
    ``bench_charts`` draws docs/img/bench-*.svg with ``cacheorm bench``
    (skipped with ``--quick``). ``bench_async`` sets ``AsyncRepository``
    against redis.asyncio + hiredis and aiomcache at 1-256 concurrent tasks,
    on uvloop and on plain asyncio (the ``bench`` dependency group).
    """
    session.install(".[all,cli]", *_group("bench"))
    session.run("python", "benchmarks/bench_core.py")
    session.run("python", "benchmarks/bench_codecs.py", *session.posargs)
    session.run("python", "benchmarks/bench_backends.py", *session.posargs)
    session.run("python", "benchmarks/bench_scaleout.py", *session.posargs)
    if "--quick" not in session.posargs:
        session.run("python", "benchmarks/bench_charts.py")
    session.run("python", "benchmarks/bench_async.py", *session.posargs)


@nox.session(python=["3.10", "3.11", "3.12", "3.13"])
def compat(session: nox.Session) -> None:
    """The test suite (no coverage gate) on each supported Python that is installed.

    Not part of CI, which has one Python; run it with ``nox -s compat``.
    """
    session.install("-e", ".[all]", *_group("test"))
    session.run("pytest", "-q", "-p", "no:cacheprovider", *session.posargs)
