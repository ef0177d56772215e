"""The demo (`python -m cacheorm demo`) runs and shows each step."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

import cacheorm as co
from cacheorm.__main__ import main, run_demo


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
