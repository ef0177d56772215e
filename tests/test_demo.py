"""The demo (`python -m cacheorm demo`) runs and shows each step."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

import cacheorm as co
from cacheorm._cli import main
from cacheorm._cli import without_password as _without_password
from cacheorm._cli_demo import run_demo
from tests.servers import MemcachedServer, RedisClusterServer, RedisServer, closed_port


def test_run_demo_walks_through_every_operation() -> None:
    """The demo prints create, get, get_many, update, validation and delete, and cleans up."""
    backend = co.MemoryBackend()
    out = io.StringIO()
    run_demo(backend, out)
    text = out.getvalue()
    for heading in ("== create", "== get and get_many", "== update", "== validation", "== delete"):
        assert heading in text
    assert "AlreadyExists" in text
    assert "NotFound" in text
    assert "expected str, got int 42" in text
    assert '"joined":1767225600' in text
    assert len(backend) == 1  # only the id counter is left


def test_main_requires_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a subcommand the CLI exits with usage help."""
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "demo" in capsys.readouterr().err


def test_module_entry_point_runs_the_demo() -> None:
    """`python -m cacheorm demo` exits 0 and prints the walk-through."""
    done = subprocess.run(
        [sys.executable, "-m", "cacheorm", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "in-memory backend" in done.stdout
    assert done.stdout.rstrip().endswith("done.")


def _run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``python -m cacheorm demo ARGS`` in this process: exit code, stdout, stderr."""
    code = main(["demo", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_runs_on_redis(redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    """`demo --redis URL` runs the same walk-through on a real Redis server."""
    code, out, err = _run_cli(capsys, "--redis", redis_server.url)
    assert code == 0, err
    assert f"Redis at {redis_server.url}" in out
    assert "AlreadyExists" in out
    assert out.rstrip().endswith("done.")


def test_demo_runs_on_memcached(
    memcached_server: MemcachedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`demo --memcached HOST:PORT` runs the same walk-through on a real memcached."""
    code, out, err = _run_cli(capsys, "--memcached", memcached_server.servers[0])
    assert code == 0, err
    assert f"memcached at {memcached_server.servers[0]}" in out
    assert out.rstrip().endswith("done.")


def test_demo_runs_on_a_redis_cluster(
    redis_cluster: RedisClusterServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`demo --redis URL --cluster` runs the walk-through on a Redis Cluster."""
    url = f"redis://{redis_cluster.startup_nodes[0]}"
    code, out, err = _run_cli(capsys, "--redis", url, "--cluster")
    assert code == 0, err
    assert f"the Redis Cluster of {url}" in out
    assert "loader calls     1" in out
    assert out.rstrip().endswith("done.")


def test_demo_runs_on_a_memcached_pool(
    memcached_pool: MemcachedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`demo --memcached A,B,C` runs the walk-through on a pool of servers."""
    code, out, err = _run_cli(capsys, "--memcached", ",".join(memcached_pool.servers))
    assert code == 0, err
    assert "a memcached pool of " + ", ".join(memcached_pool.servers) in out
    assert out.rstrip().endswith("done.")


def test_cluster_needs_redis(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--cluster"])
    assert info.value.code == 2
    assert "--cluster needs --redis URL" in capsys.readouterr().err


def test_demo_runs_on_the_filesystem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`demo --filesystem DIR` keeps the records in files under DIR."""
    code, out, err = _run_cli(capsys, "--filesystem", str(tmp_path / "records"))
    assert code == 0, err
    assert out.rstrip().endswith("done.")
    assert any(p.is_file() for p in (tmp_path / "records").rglob("*"))


def test_demo_reports_an_unreachable_server_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A server that is down ends the demo with exit 1 and a one-line error, no password."""
    url = f"redis://app:s3cret-pw@127.0.0.1:{closed_port()}/0"
    code, out, err = _run_cli(capsys, "--redis", url)
    assert code == 1
    assert err.startswith("error: BackendUnavailable: ")
    assert len(err.strip().splitlines()) == 1
    assert "s3cret-pw" not in out + err
    assert "redis://app:***@127.0.0.1" in out


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("rediss://user:p@ss@h:1", "rediss://user:***@h:1"),
        ("redis://user@h:1", "redis://user@h:1"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_printed_urls_never_show_a_password(url: str, shown: str) -> None:
    """The demo masks the password of the URL it prints."""
    assert _without_password(url) == shown
