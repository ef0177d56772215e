"""The command line: --version, --help, inspect and bench, against real servers."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import io
import os
import re
import runpy
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal, NewType

import pytest

import cacheorm as co
from cacheorm._cli import main
from cacheorm._cli_bench import (
    PHASES,
    Result,
    _check,
    _hand_memcached,
    _hand_redis,
    _orm_side,
    _Progress,
    format_table,
    make_records,
    run_bench,
    write_chart,
)
from cacheorm._cli_inspect import load_model, parse_pk
from tests.memcached_tools import stat
from tests.servers import MemcachedServer, RedisServer

ROOT = Path(__file__).resolve().parent.parent


class Tier(enum.Enum):
    FREE = "free"
    PRO = "pro"


@dataclasses.dataclass(frozen=True)
class Account:
    """An int-keyed model for ``inspect --model tests.test_cli:Account``."""

    id: Annotated[int, co.Field(primary_key=True)]
    name: str
    tier: Tier = Tier.FREE


@dataclasses.dataclass(frozen=True)
class Membership:
    """A composite key: a str part and an int part."""

    team: Annotated[str, co.Field(primary_key=True)]
    user: Annotated[int, co.Field(primary_key=True)]
    role: str = "member"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``cacheorm ARGV`` in this process: exit status, stdout, stderr."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# -- --version and --help -----------------------------------------------------------------


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`cacheorm --version` prints `cacheorm <version>` and exits 0."""
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out == f"cacheorm {co.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", co.__version__)


@pytest.mark.parametrize("command", [[], ["demo"], ["inspect"], ["bench"]])
def test_help_is_plain_text(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    """Every --help is plain text: no reST roles or double backquotes, and exit 0."""
    code, out, err = run(capsys, *command, "--help")
    assert code == 0, err
    assert out.startswith("usage: ")
    for markup in ("``", ":class:", ":func:", ":meth:", ":mod:", ".. "):
        assert markup not in out
    if command:
        assert f" {command[0]} " in out.splitlines()[0]
    else:
        for name in ("demo", "inspect", "bench", "--version"):
            assert name in out


def test_main_module_runs_the_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """cacheorm/__main__.py calls main() under the name `python -m cacheorm`."""
    monkeypatch.setattr(sys, "argv", ["cacheorm", "demo"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("cacheorm", run_name="__main__")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("cacheorm demo on the in-memory backend (MemoryBackend)\n")
    monkeypatch.setattr(sys, "argv", ["cacheorm", "nonsense"])
    with pytest.raises(SystemExit):
        runpy.run_module("cacheorm", run_name="__main__")
    assert capsys.readouterr().err.startswith("usage: python -m cacheorm ")


def test_module_and_console_script_entry_points() -> None:
    """`python -m cacheorm` runs the CLI under that name; pyproject declares the script."""
    done = subprocess.run(
        [sys.executable, "-m", "cacheorm"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr.startswith("usage: python -m cacheorm ")
    version = subprocess.run(
        [sys.executable, "-m", "cacheorm", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert version.stdout == f"cacheorm {co.__version__}\n"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '[project.scripts]\ncacheorm = "cacheorm._cli:main"' in pyproject


# -- what `import cacheorm` costs -------------------------------------------------------------

_ONLY_STDLIB = textwrap.dedent(
    """
    import sys

    class Block:
        # Refuse every import outside the standard library, cacheorm and typing_extensions.
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in sys.stdlib_module_names or top in ("cacheorm", "typing_extensions"):
                return None
            raise ImportError(f"blocked: {name}")

    sys.meta_path.insert(0, Block())
    import cacheorm
    loaded = sorted(m for m in sys.modules if m.startswith("cacheorm._cli"))
    assert not loaded, loaded
    print("imported", cacheorm.__version__)
    from cacheorm._cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_import_cacheorm_needs_only_typing_extensions() -> None:
    """`import cacheorm` (and the CLI's --version/--help) work with every other package blocked."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for argv in (["--version"], ["bench", "--help"], ["inspect", "--help"]):
        done = subprocess.run(
            [sys.executable, "-c", _ONLY_STDLIB, *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"imported {co.__version__}\n")


def test_import_cacheorm_loads_no_optional_library() -> None:
    """After `import cacheorm`, no client library, serializer library or CLI module is loaded."""
    code = (
        "import sys, cacheorm; "
        "print(sorted(m for m in sys.modules if m.partition('.')[0] in "
        "('redis', 'pymemcache', 'msgpack', 'google', 'matplotlib', 'argparse') "
        "or m.startswith('cacheorm._cli')))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    assert done.stdout.strip() == "[]"
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "cacheorm" in imported
    assert not imported & {"redis", "pymemcache", "msgpack", "matplotlib"}


# -- inspect: primary keys on the command line ------------------------------------------------


def test_parse_pk_converts_each_part_to_its_annotation() -> None:
    """int, str, enum, bool, UUID; composite as A,B or a JSON list."""
    assert parse_pk("42", [("id", int)], Account) == 42
    assert parse_pk("a,b", [("name", str)], Account) == "a,b"  # one part: never split
    assert parse_pk("core,7", [("team", str), ("user", int)], Membership) == ("core", 7)
    assert parse_pk('["a,b", 7]', [("team", str), ("user", int)], Membership) == ("a,b", 7)
    assert parse_pk("x,7,8", [("team", str), ("user", str)], Membership) == ("x", "7,8")
    assert parse_pk("pro", [("tier", Tier)], Account) is Tier.PRO
    assert parse_pk("FREE", [("tier", Tier)], Account) is Tier.FREE
    assert parse_pk("TRUE", [("flag", bool)], Account) is True
    assert parse_pk("2.5", [("x", Annotated[float, "meta"])], Account) == 2.5
    value = uuid.UUID(int=5)
    assert parse_pk(str(value), [("id", uuid.UUID)], Account) == value
    assert parse_pk("2026-01-02", [("day", datetime.date)], Account) == datetime.date(2026, 1, 2)
    assert parse_pk("7", [("id", NewType("UserId", int))], Account) == 7
    assert parse_pk("b", [("id", Literal["a", "b"])], Account) == "b"
    assert parse_pk("[3, 4]", [("team", str), ("user", int)], Membership) == (3, 4)


@pytest.mark.parametrize(
    ("text", "parts", "message"),
    [
        ("abc", [("id", int)], "Account.id: 'abc' does not fit"),
        ("core", [("team", str), ("user", int)], "has a 2-part key: write TEAM,USER"),
        ("[1", [("team", str), ("user", int)], "is not a JSON list"),
        ('["a", 1, 2]', [("team", str), ("user", int)], "TEAM,USER"),
        ("x", [("id", Literal["a", "b"])], "expected one of a, b"),
        ("x", [("id", int | str)], "a primary key cannot be a union"),
        ("gold", [("tier", Tier)], "expected one of free, pro"),
        ("maybe", [("flag", bool)], "expected true or false"),
        ("x", [("when", list[int])], "cannot read a"),
    ],
)
def test_parse_pk_names_the_field_it_cannot_read(
    text: str, parts: list[tuple[str, Any]], message: str
) -> None:
    """A PK that does not fit its field fails with ValueError naming model and field."""
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_pk(text, parts, Account)


def test_load_model_finds_modules_in_the_current_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As for `python -m`, --model imports from the current directory even for the script."""
    (tmp_path / "cli_user_models.py").write_text(
        "import dataclasses\n\n@dataclasses.dataclass\nclass Thing:\n    id: int\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    monkeypatch.delitem(sys.modules, "cli_user_models", raising=False)
    model = load_model("cli_user_models:Thing")
    assert model.__name__ == "Thing"
    assert sys.path[0] == str(tmp_path)


def test_load_model_errors_are_clear() -> None:
    """--model must be MODULE:CLASS naming an importable class."""
    assert load_model("tests.test_cli:Account") is Account
    for spec, message in [
        ("tests.test_cli.Account", "must be MODULE:CLASS"),
        ("no_such_module_xyz:User", "cannot import module 'no_such_module_xyz'"),
        ("tests.test_cli:Nope", "has no 'Nope'"),
        ("tests.test_cli:ROOT", "is a PosixPath, not a class"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            load_model(spec)


# -- inspect against real servers ----------------------------------------------------------------


def test_inspect_prints_records_from_redis(
    redis_backend: co.RedisBackend, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """PKs are decoded into records; a missing one says so and makes the exit status 1."""
    accounts = co.Repository(Account, backend=redis_backend)
    accounts.save(Account(1, "Ann", Tier.PRO))
    accounts.save(Account(2, "Bob"))
    model = ["--model", "tests.test_cli:Account", "--redis", redis_server.url]
    code, out, err = run(capsys, "inspect", *model, "1", "2")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "account:1  Account(id=1, name='Ann', tier=<Tier.PRO: 'pro'>)",
        "account:2  Account(id=2, name='Bob', tier=<Tier.FREE: 'free'>)",
    ]
    code, out, err = run(capsys, "inspect", *model, "2", "3")
    assert code == 1
    assert out.splitlines()[1] == "account:3  (not found)"
    code, out, _ = run(capsys, "inspect", *model, "--raw", "account:1")
    assert code == 0
    assert out.startswith("account:1  Account(id=1, name='Ann'")


def test_inspect_prints_the_deserialization_error_of_a_bad_payload(
    redis_backend: co.RedisBackend, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A planted payload that does not fit the model prints the exact DeserializationError."""
    accounts = co.Repository(Account, backend=redis_backend)
    accounts.save(Account(1, "Ann"))
    redis_backend.set("account:2", b'{"id": 2, "name": 42, "tier": "free"}')
    redis_backend.set("account:3", b"\xff not json")
    with pytest.raises(co.DeserializationError) as expected:
        accounts.get(2)
    code, out, err = run(
        capsys, "inspect", "--model", "tests.test_cli:Account", "--redis", redis_server.url,
        "1", "2", "3",
    )  # fmt: skip
    assert code == 1
    assert out.splitlines()[1:] == ["account:2  (does not decode)", "account:3  (does not decode)"]
    lines = err.splitlines()
    assert lines[0] == f"error: DeserializationError: {expected.value}"
    assert "$.name" in lines[0]
    assert lines[1].startswith("error: DeserializationError: Account (key 'account:3'): stored ")
    assert "not valid json" in lines[1]


def test_inspect_refuses_a_record_copied_under_another_key(
    redis_backend: co.RedisBackend, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record copied from key 1 to key 2 prints the same DeserializationError as get(2)."""
    accounts = co.Repository(Account, backend=redis_backend)
    accounts.save(Account(1, "Ann"))
    copied = redis_backend.get("account:1")
    assert copied is not None
    redis_backend.set("account:2", copied)
    with pytest.raises(co.DeserializationError) as expected:
        accounts.get(2)
    for args in (["2"], ["--raw", "account:2"]):
        code, out, err = run(
            capsys, "inspect", "--model", "tests.test_cli:Account", "--redis", redis_server.url,
            *args,
        )  # fmt: skip
        assert code == 1
        assert out.splitlines() == ["account:2  (does not decode)"]
        assert err.splitlines() == [f"error: DeserializationError: {expected.value}"]
        assert "wrong key" in err


def test_inspect_composite_keys_on_memcached(
    memcached_backend: co.MemcachedBackend,
    memcached_server: MemcachedServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Composite keys as A,B or a JSON list, with the Repository's prefix and template."""
    members = co.Repository(
        Membership, backend=memcached_backend, prefix="app:", key="team.{team}.{user}"
    )
    members.save(Membership("core", 7, "owner"))
    members.save(Membership("a,b", 8))
    code, out, err = run(
        capsys, "inspect", "--model", "tests.test_cli:Membership",
        "--memcached", memcached_server.servers[0],
        "--prefix", "app:", "--key-template", "team.{team}.{user}",
        "core,7", '["a,b", 8]',
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "app:team.core.7  Membership(team='core', user=7, role='owner')",
        "app:team.a,b.8  Membership(team='a,b', user=8, role='member')",
    ]


def test_inspect_on_the_filesystem_with_a_namespace_and_msgpack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--filesystem DIR, --namespace and --serializer reach the Repository."""
    backend = co.FileSystemBackend(tmp_path)
    try:
        accounts = co.Repository(Account, backend=backend, namespace="acct", serializer="msgpack")
        accounts.save(Account(5, "Eve"))
    finally:
        backend.close()
    code, out, err = run(
        capsys, "inspect", "--model", "tests.test_cli:Account", "--filesystem", str(tmp_path),
        "--namespace", "acct", "--serializer", "msgpack", "5",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out == "acct:5  Account(id=5, name='Eve', tier=<Tier.FREE: 'free'>)\n"


class NotADataclass:
    """A plain class, which inspect cannot use as a model."""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "--redis", "redis://127.0.0.1:1/0", "1"], "--model"),
        (["inspect", "--model", "tests.test_cli:Account", "1"], "one of the arguments --redis"),
        (["inspect", "--model", "Account", "--filesystem", ".", "1"], "must be MODULE:CLASS"),
        (["inspect", "--model", "tests.test_cli:Account", "--filesystem", "."], "PK"),
        (
            ["inspect", "--model", "tests.test_cli:Account", "--filesystem", "{tmp}", "x1"],
            "Account.id: 'x1' does not fit (invalid literal for int()",
        ),
        (
            ["inspect", "--model", "tests.test_cli:Membership", "--filesystem", "{tmp}", "t"],
            "Membership has a 2-part key: write TEAM,USER",
        ),
        (["demo", "--filesystem", "{tmp}", "--cluster"], "--cluster needs --redis URL"),
        (["bench"], "one of the arguments --redis --memcached is required"),
        (["bench", "--redis", "redis://127.0.0.1:1/0", "--filesystem", "x"], "unrecognized"),
        (["bench", "--redis", "redis://127.0.0.1:1/0", "--seconds", "0"], "--seconds must be"),
        (["bench", "--redis", "redis://127.0.0.1:1/0", "--seconds", "x"], "invalid float value"),
        (["bench", "--redis", "redis://127.0.0.1:1/0", "--batch", "0"], "--batch must be"),
        (["bench", "--memcached", "a:1,b:2"], "bench takes one memcached server"),
        (["bench", "--redis", "redis://127.0.0.1:1/0", "--chart", "c.pdf"], ".png or .svg"),
        (["nonsense"], "invalid choice: 'nonsense'"),
    ],
)
def test_bad_arguments_give_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    """A bad command line exits 2 with the usage and one clear error line, no traceback."""
    code, out, err = run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2
    assert out == ""
    assert err.startswith("usage: ")
    assert message in err
    assert "Traceback" not in err


def test_a_model_that_is_not_a_dataclass_is_a_cacheorm_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--model naming a plain class ends with the ModelDefinitionError, exit 1."""
    model = "tests.test_cli:NotADataclass"
    code, out, err = run(capsys, "inspect", "--model", model, "--filesystem", str(tmp_path), "1")
    assert (code, out) == (1, "")
    assert err.startswith("error: ModelDefinitionError: ")
    assert "is not a dataclass" in err


# -- bench against real servers -------------------------------------------------------------------


def _check_table(out: str) -> None:
    lines = out.splitlines()
    assert lines[0].startswith(f"cacheorm {co.__version__} on ")
    rows = {line.split()[0]: line.split() for line in lines[3:8]}
    assert set(rows) == set(PHASES)
    for row in rows.values():
        ratio = float(row[-2])
        assert 0.05 < ratio < 20
    assert lines[8].startswith("ratio = cacheorm (json) time / hand-written ")


def test_bench_on_redis_prints_the_ratio_table_and_leaves_no_key(
    redis_backend: co.RedisBackend,
    redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """bench --redis runs rounds, prints progress to stderr and a table, deletes its keys."""
    redis_backend.set("mine", b"keep")
    code, out, err = run(
        capsys, "bench", "--redis", redis_server.url, "--seconds", "0.3", "--batch", "20"
    )
    assert code == 0, err
    _check_table(out)
    assert len(out.splitlines()) == 9  # no chart line
    assert "hand-written redis-py + json" in out
    assert "bench: 100%" in err
    assert redis_backend.client.keys("*") == [b"mine"]


def test_bench_on_memcached_writes_a_png_chart(
    memcached_backend: co.MemcachedBackend,
    memcached_server: MemcachedServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """bench --memcached against pymemcache code; a PNG chart; no key left behind."""
    chart = tmp_path / "ratios.png"
    code, out, err = run(
        capsys, "bench", "--memcached", memcached_server.servers[0], "--seconds", "0.3",
        "--batch", "20", "--chart", str(chart),
    )  # fmt: skip
    assert code == 0, err
    _check_table(out)
    assert "hand-written pymemcache + json" in out
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert out.rstrip().endswith(f"chart written to {chart}")
    assert stat(memcached_backend.client, b"curr_items") == 0


def test_bench_chart_without_matplotlib_fails_before_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--chart without matplotlib: MissingDependency naming cacheorm[cli], before any I/O."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    # The port is closed: had the bench started, the error would be BackendUnavailable.
    code, out, err = run(
        capsys, "bench", "--redis", "redis://127.0.0.1:1/0", "--chart", str(tmp_path / "c.png")
    )
    assert code == 1
    assert out == ""
    assert err == (
        "error: MissingDependency: cacheorm bench --chart needs the optional dependency "
        "'cli': pip install 'cacheorm[cli]'\n"
    )


def test_bench_reports_an_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    """A server that is down ends bench with exit 1 and a one-line error, no password."""
    code, _, err = run(capsys, "bench", "--redis", "redis://u:s3cret@127.0.0.1:1/0")
    assert code == 1
    assert "error: BackendUnavailable: " in err
    assert "s3cret" not in err


def test_progress_bar_redraws_in_place_on_a_terminal() -> None:
    """On a terminal the bar is redrawn with a carriage return; elsewhere one line per 10%."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = _Progress(screen)
    bar.update(0.5, "round 3")
    bar.update(1.5, "round 6")
    bar.close()
    assert screen.getvalue() == (
        f"\r[{'#' * 15}{'-' * 15}]  50%  round 3\r[{'#' * 30}] 100%  round 6\n"
    )
    log = io.StringIO()
    lines = _Progress(log)
    for step in range(1, 21):
        lines.update(step / 20, f"round {step}")
    lines.close()
    assert log.getvalue().splitlines()[0] == "bench:   5%  round 1"
    assert len(log.getvalue().splitlines()) == 11  # 5%, then each new tenth
    assert log.getvalue().splitlines()[-1] == "bench: 100%  round 20"


def test_format_table_lines_up() -> None:
    """The table has a header, one row per operation and a footnote saying what a ratio is."""
    rows = [Result(phase, 10.0, 8.0, 1.25, 1.2, 1.3) for phase in PHASES]
    lines = format_table(rows, baseline="hand-written redis-py + json", batch=50)
    assert lines[4].split() == ["get_many", "(50/call)", "10.0", "8.0", "1.25", "1.20-1.30"]
    assert len({len(line) for line in lines[2:7]}) == 1


def test_run_bench_checks_what_it_times(
    memcached_backend: co.MemcachedBackend, redis_backend: co.RedisBackend
) -> None:
    """One short round gives figures; wrong results and a wrong backend raise."""
    results, rounds = run_bench(memcached_backend, seconds=1e-9, batch=5, progress=io.StringIO())
    assert rounds == 1
    assert [r.phase for r in results] == list(PHASES)
    assert all(r.ratio_low == r.ratio == r.ratio_high for r in results)
    side = _orm_side(memcached_backend, "t:")
    with pytest.raises(co.BackendError, match="cacheorm returned wrong results for get"):
        _check(False, side, "get")
    with pytest.raises(co.ConfigurationError, match="bench needs Redis or memcached"):
        run_bench(co.MemoryBackend(), seconds=1)


@pytest.mark.parametrize("server", ["redis", "memcached"])
def test_hand_written_sides_raise_like_cacheorm(
    request: pytest.FixtureRequest, server: str
) -> None:
    """The baseline refuses what cacheorm refuses: a taken key, a miss, an update of nothing."""
    backend = request.getfixturevalue(f"{server}_backend")
    hand = (_hand_redis if server == "redis" else _hand_memcached)(backend.client, "t:")
    (user,) = make_records(1, 1)
    hand.create(user)
    with pytest.raises(KeyError, match="exists"):
        hand.create(user)
    assert hand.get(1) == user
    assert hand.delete(1)
    with pytest.raises(KeyError):
        hand.get(1)
    with pytest.raises(KeyError):
        hand.update(user)
    assert hand.get_many([1]) == [None]


def test_write_chart_svg(tmp_path: Path) -> None:
    """The chart is an SVG when the file name says so."""
    rows = [Result(phase, 10.0, 8.0, 1.25, 1.2, 1.3) for phase in PHASES]
    write_chart(rows, tmp_path / "c.svg", title="test")
    assert "<svg" in (tmp_path / "c.svg").read_text()


def test_ctrl_c_ends_with_status_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An interrupt prints one word, not a traceback, and exits 130 like a shell."""

    def interrupted(backend: co.Backend) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("cacheorm._cli_demo.run_demo", interrupted)
    code, _, err = run(capsys, "demo")
    assert (code, err) == (130, "interrupted\n")
