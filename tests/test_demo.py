"""The demo (`python -m cacheorm demo`) runs and shows each step."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

import cacheorm as co
from cacheorm.__main__ import main, run_demo
from tests.servers import MemcachedServer, RedisServer, closed_port


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


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cacheorm", "demo", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_demo_runs_on_redis(redis_server: RedisServer) -> None:
    """`demo --redis URL` runs the same walk-through on a real Redis server."""
    done = _run_cli("--redis", redis_server.url)
    assert done.returncode == 0, done.stderr
    assert f"Redis at {redis_server.url}" in done.stdout
    assert "AlreadyExists" in done.stdout
    assert done.stdout.rstrip().endswith("done.")


def test_demo_runs_on_memcached(memcached_server: MemcachedServer) -> None:
    """`demo --memcached HOST:PORT` runs the same walk-through on a real memcached."""
    done = _run_cli("--memcached", memcached_server.servers[0])
    assert done.returncode == 0, done.stderr
    assert f"memcached at {memcached_server.servers[0]}" in done.stdout
    assert done.stdout.rstrip().endswith("done.")


def test_demo_runs_on_the_filesystem(tmp_path: Path) -> None:
    """`demo --filesystem DIR` keeps the records in files under DIR."""
    done = _run_cli("--filesystem", str(tmp_path / "records"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("done.")
    assert any(p.is_file() for p in (tmp_path / "records").rglob("*"))


def test_demo_reports_an_unreachable_server_without_the_password() -> None:
    """A server that is down ends the demo with exit 1 and a one-line error, no password."""
    url = f"redis://app:s3cret-pw@127.0.0.1:{closed_port()}/0"
    done = _run_cli("--redis", url)
    assert done.returncode == 1
    assert "BackendUnavailable" in done.stderr
    assert "Traceback" not in done.stderr
    assert "s3cret-pw" not in done.stdout + done.stderr
    assert "redis://app:***@127.0.0.1" in done.stdout
